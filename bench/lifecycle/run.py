#!/usr/bin/python3
"""bench/lifecycle: what operating a ferry node costs.

1. Time from `ferry deploy` to every replica RUNNING, for 1, 10 and 100 builtin:echo replicas.
2. Extra p99 latency during a rolling update: wrk at 16 connections for DURATION s against a 4-replica echo
   deployment, once steady and once with a new version rolled out in the middle of the run.

Usage: bench/lifecycle/run.py [DURATION_S]   (needs a built ferry and wrk: scripts/install-deps --bench)
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FERRY = os.environ.get("FERRY_BIN", os.path.join(ROOT, "build/ferry"))
DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def config(replicas, version=1, name="app"):
    return f"""applications:
  - name: {name}
    route_prefix: /{name}
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: {replicas}
        max_ongoing_requests: 100
        graceful_shutdown_timeout_s: 5
        args: {{version: {version}}}
"""


def deploy(address, work, text):
    path = os.path.join(work, "c.yaml")
    with open(path, "w") as f:
        f.write(text)
    started = time.monotonic()
    r = subprocess.run([FERRY, "deploy", path, "--address", address], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return started


def wait_running(address, app, replicas, version=None, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = requests.get(f"{address}/api/serve/applications/", timeout=10).json()
        a = s["applications"].get(app)
        if a and a["status"] == "RUNNING":
            d = a["deployments"]["Echo"]
            running = [r for r in d["replicas"] if r["state"] == "RUNNING"]
            if len(running) == replicas and len(d["replicas"]) == replicas:
                return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"{app} not RUNNING with {replicas} replicas after {timeout}s")


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url], capture_output=True, text=True).stdout
    def us(v):
        n = float(re.sub(r"[a-z]+$", "", v))
        return n * (1 if v.endswith("us") else 1000 if v.endswith("ms") else 1e6)
    p50 = us(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = us(re.search(r"\s99%\s+(\S+)", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_us": p50, "p99_us": p99, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else "none"}


def main():
    work = tempfile.mkdtemp(prefix="ferry-lifecycle-")
    http_port, admin_port = free_port(), free_port()
    address = f"http://127.0.0.1:{admin_port}"
    node = subprocess.Popen([FERRY, "start", "--foreground", "--state-dir", os.path.join(work, "state"),
                             "--http-port", str(http_port), "--admin-port", str(admin_port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "node.log"), "w"))
    try:
        for _ in range(200):
            try:
                requests.get(f"{address}/api/serve/applications/", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.05)
        print("time from `ferry deploy` to all replicas RUNNING (builtin:echo):")
        results = {}
        for n in (1, 10, 100):
            app = f"scale{n}"
            started = deploy(address, work, config(n, name=app))
            took = wait_running(address, app, n) - started
            results[n] = took
            print(f"  {n:>3} replicas: {took * 1000:8.0f} ms")
            requests.delete(f"{address}/api/serve/applications/", timeout=30)
            deadline = time.monotonic() + 60
            while requests.get(f"{address}/api/serve/applications/", timeout=10).json()["applications"] and time.monotonic() < deadline:
                time.sleep(0.05)

        deploy(address, work, config(4, 1))
        wait_running(address, "app", 4)
        url = f"http://127.0.0.1:{http_port}/app"
        steady = wrk(url, DURATION)
        rolled = {}

        def roll():
            time.sleep(DURATION / 3)
            started = deploy(address, work, config(4, 2))
            rolled["took"] = wait_running(address, "app", 4) - started

        t = threading.Thread(target=roll)
        t.start()
        during = wrk(url, DURATION)
        t.join()
        print(f"\nwrk -c16 -t2 for {DURATION} s against 4 echo replicas:")
        print(f"  steady:                 {steady['rps']:9.0f} req/s  p50 {steady['p50_us']:7.0f} us  p99 {steady['p99_us']:7.0f} us  non-2xx {steady['non_2xx']}  socket errors {steady['socket_errors']}")
        print(f"  with a rolling update:  {during['rps']:9.0f} req/s  p50 {during['p50_us']:7.0f} us  p99 {during['p99_us']:7.0f} us  non-2xx {during['non_2xx']}  socket errors {during['socket_errors']}")
        print(f"  rolling update of 4 replicas took {rolled['took'] * 1000:.0f} ms; extra p99 {during['p99_us'] - steady['p99_us']:+.0f} us")
        json.dump({"deploy_to_running_s": results, "steady": steady, "rolling": during, "rollout_s": rolled["took"]},
                  open(os.path.join(ROOT, "bench/out/lifecycle.json"), "w") if os.path.isdir(os.path.join(ROOT, "bench/out")) else open(os.devnull, "w"), indent=1)
    finally:
        node.terminate()
        node.wait(timeout=60)


if __name__ == "__main__":
    main()
