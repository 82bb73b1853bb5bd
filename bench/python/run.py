#!/usr/bin/python3
"""bench/python: Python deployments (Ray Serve's API on ferry) against the same Python behind FastAPI under
uvicorn (uvloop + httptools), with wrk, all in one run on this machine. Prints each figure and the issue's
targets:

  json   a handler answering its query parameters as JSON, 1 replica (ferry) / 1 worker (FastAPI):
         requests/s at 64 connections (target: ferry >= 1.5x FastAPI), p50 at 1 (target: no worse)
  cpu    ~200 us of pure Python per request: ferry 1 and 2 replicas, FastAPI 1 and 2 workers, 64 connections
         (targets: ferry 2 replicas >= 1.6x ferry 1, and >= 1.5x FastAPI 2 workers)
  hop    a Python -> Python handle call, timed inside the caller (the p50 of 2000 calls in a row, one at a
         time; target <= 150 us), and as HTTP p50 through an ingress that makes one call
  mlp    bench/models' MLP in a Python deployment with torch and @serve.batch against FastAPI + PyTorch
         (bench/models/fastapi_app.py) with 1 and 2 workers, 64 connections (target: >= 2x the better)

Usage: bench/python/run.py [DURATION_S] [PART,...]   (needs `scripts/install-deps --bench` and a built ferry)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from common import OUT, ROOT, Node, free_port, wrk  # noqa: E402

DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10
PARTS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["json", "cpu", "hop", "mlp"]
PYTHONPATH = os.path.join(ROOT, "python")


def deploy(node, name, import_path, overrides="", args=""):
    node.deploy(f"""applications:
  - name: {name}
    route_prefix: /{name}
    import_path: {import_path}
    runtime_env: {{working_dir: "{HERE}"}}
{args}{overrides}""")
    node.wait_running(name, timeout=300)


def wait_up(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Uvicorn:
    def __init__(self, app, workers, cwd, env=None):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             str(workers), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"],
            cwd=cwd, env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(url, connections, **kw):
    wrk(url, connections, 2, **kw)  # warm-up
    return wrk(url, connections, DURATION, **kw)


def show(name, r):
    print(f"  {name:34s} {r['rps']:9.0f} req/s   p50 {r['p50_us']:8.0f} us   p99 {r['p99_us']:8.0f} us"
          f"{'   non-2xx ' + str(r['non_2xx']) if r['non_2xx'] else ''}", flush=True)
    return r


def verdict(ok):
    return "ok" if ok else "MISSED"


def main():
    results = {}
    node = Node()
    try:
        if "json" in PARTS:
            print("json: query parameters answered as JSON, 1 replica / 1 worker", flush=True)
            deploy(node, "json", "apps:Query")
            peer = Uvicorn("fastapi_peer:app", 1, HERE)
            try:
                wait_up(peer.url("/json"))
                r = {}
                for c in (1, 64):
                    r[f"ferry_{c}"] = show(f"ferry, {c} connection(s)", measure(node.url("/json?a=1&b=two"), c))
                    r[f"fastapi_{c}"] = show(f"FastAPI, {c} connection(s)", measure(peer.url("/json?a=1&b=two"), c))
            finally:
                peer.close()
            ratio = r["ferry_64"]["rps"] / r["fastapi_64"]["rps"]
            print(f"  -> requests/s at 64: {ratio:.2f}x FastAPI (target >= 1.5x) {verdict(ratio >= 1.5)}; p50 at 1: "
                  f"{r['ferry_1']['p50_us']:.0f} vs {r['fastapi_1']['p50_us']:.0f} us (target: no worse) "
                  f"{verdict(r['ferry_1']['p50_us'] <= r['fastapi_1']['p50_us'])}", flush=True)
            results["json"] = r
        if "cpu" in PARTS:
            print("cpu: ~200 us of pure Python per request, 64 connections", flush=True)
            r = {}
            for replicas in (1, 2):
                deploy(node, f"cpu{replicas}", "apps:Cpu", f"    deployments: [{{name: Cpu, num_replicas: {replicas}}}]\n")
                r[f"ferry_{replicas}"] = show(f"ferry, {replicas} replica(s)", measure(node.url(f"/cpu{replicas}"), 64))
            for workers in (1, 2):
                peer = Uvicorn("fastapi_peer:app", workers, HERE)
                try:
                    wait_up(peer.url("/cpu"))
                    r[f"fastapi_{workers}"] = show(f"FastAPI, {workers} worker(s)", measure(peer.url("/cpu"), 64))
                finally:
                    peer.close()
            scale = r["ferry_2"]["rps"] / r["ferry_1"]["rps"]
            vs = r["ferry_2"]["rps"] / r["fastapi_2"]["rps"]
            print(f"  -> 2 replicas: {scale:.2f}x 1 replica (target >= 1.6x) {verdict(scale >= 1.6)}; "
                  f"{vs:.2f}x FastAPI with 2 workers (target >= 1.5x) {verdict(vs >= 1.5)}", flush=True)
            results["cpu"] = r
        if "hop" in PARTS:
            print("hop: a Python -> Python handle call", flush=True)
            r = {}
            for name, target, how in (("hop", "apps:hop", "await (async def)"),
                                      ("synchop", "apps:sync_hop", ".result() (def)")):
                deploy(node, name, target)
                inside = requests.get(node.url(f"/{name}?n=2000"), timeout=120).json()
                inside = requests.get(node.url(f"/{name}?n=2000"), timeout=120).json()  # the second: warm
                print(f"  {how}: timed in the caller, 2000 calls one at a time: p50 {inside['p50_us']:.0f} us, "
                      f"p90 {inside['p90_us']:.0f} us, p99 {inside['p99_us']:.0f} us (target p50 <= 150 us) "
                      f"{verdict(inside['p50_us'] <= 150)}", flush=True)
                r[f"{name}_inside"] = inside
                r[f"{name}_http"] = show("HTTP -> ingress -> one call, 1 conn", measure(node.url(f"/{name}"), 1))
            results["hop"] = r
        if "mlp" in PARTS:
            print("mlp: MLP 256-512-512-10 with torch and @serve.batch, 64 connections", flush=True)
            work = tempfile.mkdtemp(prefix="ferry-bench-python-")
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench/models/make_models.py"), work], check=True,
                           stdout=subprocess.DEVNULL)
            model = os.path.join(work, "mlp.pt")
            body = os.path.join(work, "mlp.json")
            import numpy as np
            x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
            with open(body, "w") as f:
                json.dump({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 256],
                                       "data": x.flatten().tolist()}]}, f)
            lua = os.path.join(ROOT, "bench/models/post.lua")
            r = {}
            for replicas, threads in ((1, 2), (2, 1)):
                deploy(node, f"mlp{replicas}", "apps:mlp_app",
                       f"    deployments: [{{name: Mlp, num_replicas: {replicas}}}]\n",
                       args=f"    args: {{model_file: \"{model}\", threads: {threads}}}\n")
                r[f"ferry_{replicas}"] = show(f"ferry, {replicas} replica(s) x {threads} thread(s)",
                                              measure(node.url(f"/mlp{replicas}/v2/models/mlp/infer"), 64,
                                                      script=lua, env={"BODY_FILE": body}))
            r["ferry"] = max(r["ferry_1"], r["ferry_2"], key=lambda x: x["rps"])
            for workers in (1, 2):
                peer = Uvicorn("fastapi_app:app", workers, os.path.join(ROOT, "bench/models"),
                               env={"MODEL_FILE": model, "WORKERS": str(workers)})
                try:
                    url = peer.url("/v2/models/mlp/infer")
                    for _ in range(600):
                        try:
                            if requests.post(url, data=open(body, "rb").read(), timeout=10).status_code == 200:
                                break
                        except requests.RequestException:
                            time.sleep(0.1)
                    r[f"fastapi_{workers}"] = show(f"FastAPI + PyTorch, {workers} worker(s)",
                                                   measure(url, 64, script=lua, env={"BODY_FILE": body}))
                finally:
                    peer.close()
            best = max(r["fastapi_1"]["rps"], r["fastapi_2"]["rps"])
            ratio = r["ferry"]["rps"] / best
            print(f"  -> {ratio:.2f}x the better FastAPI (target >= 2x) {verdict(ratio >= 2)}", flush=True)
            results["mlp"] = r
    finally:
        node.close()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "python.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
