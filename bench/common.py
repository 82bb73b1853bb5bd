"""Shared pieces of the Python benchmarks: a ferry node in the foreground, deploys, status, wrk."""
import os
import re
import socket
import subprocess
import tempfile
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FERRY = os.environ.get("FERRY_BIN", os.path.join(ROOT, "build/ferry"))
OUT = os.path.join(ROOT, "bench/out")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    """`ferry start --foreground` on free ports, stopped on exit."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="ferry-bench-")
        self.http_port, admin_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{admin_port}"
        self.log = open(os.path.join(self.work, "node.log"), "w")
        self.proc = subprocess.Popen([FERRY, "start", "--foreground", "--state-dir", os.path.join(self.work, "state"),
                                      "--http-port", str(self.http_port), "--admin-port", str(admin_port),
                                      "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(200):
            try:
                requests.get(f"{self.address}/api/serve/applications/", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("the node did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    def deploy(self, text):
        path = os.path.join(self.work, "c.yaml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([FERRY, "deploy", path, "--address", self.address], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)

    def status(self):
        return requests.get(f"{self.address}/api/serve/applications/", timeout=10).json()

    def wait_running(self, app, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            a = self.status()["applications"].get(app)
            if a and a["status"] == "RUNNING" and all(
                    all(r["state"] == "RUNNING" for r in d["replicas"]) for d in a["deployments"].values()):
                return
            time.sleep(0.01)
        raise RuntimeError(f"{app} not RUNNING")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def wrk(url, connections, seconds, script=None, env=None, timeout_s=None):
    """wrk's requests/s, p50/p99 (µs) and non-2xx count. `script` is a Lua file (with `env` for it);
    `timeout_s` raises wrk's 2 s request timeout for slow models."""
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    if timeout_s:
        cmd += ["--timeout", f"{timeout_s}s"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout

    def us(v):
        n = float(re.sub(r"[a-z]+$", "", v))
        return n * (1 if v.endswith("us") else 1000 if v.endswith("ms") else 1e6)

    return {"rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
            "p50_us": us(re.search(r"\s50%\s+(\S+)", out).group(1)),
            "p99_us": us(re.search(r"\s99%\s+(\S+)", out).group(1)),
            "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0}
