#!/usr/bin/python3
"""bench/models: real models served by ferry over the Open Inference Protocol with batching, against the
same models behind FastAPI + PyTorch/xgboost under uvicorn with uvloop (1 and 2 workers), and against
the compute ceiling (the TorchScript model in a plain LibTorch loop at the batch size ferry reached), all
in one run with the same client load: wrk at 64 connections posting the same OIP request.

  mlp       MLP 256 -> 512 -> 512 -> 10, JSON tensors (1 row per request)
  resnet18  ResNet-18 (random weights), binary tensors (1 x 3 x 224 x 224 per request)
  xgb       XGBoost regression, 32 features, 100 trees, JSON tensors (1 row per request)

Usage: bench/models/run.py [DURATION_S] [MODEL,...]   (needs `scripts/install-deps --bench`, a built ferry)
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from common import OUT, ROOT, Node, free_port, wrk  # noqa: E402

DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 15
ONLY = sys.argv[2].split(",") if len(sys.argv) > 2 else ["mlp", "resnet18", "xgb"]
TORCH_LOOP = os.environ.get("TORCH_LOOP", os.path.join(ROOT, "build/bench/torch_loop"))
CONNECTIONS = 64

# Per model: ferry's settings (replicas x intra-op threads = the 2 cores; batching), the request, wrk's
# timeout, and how much longer than DURATION a slow model is measured (so that a few batches of warm-up
# stragglers and the ramp do not weigh). ResNet-18 three ways: one replica with 2 threads; two replicas
# with 1 thread each (like FastAPI's 2 workers) at batch 8 (the best throughput) and at batch 32 (a batch
# holds every client, the shortest wait). The MLP three ways: batch 32 (throughput), and batch 64 with
# 1 and 2 threads (one batch holds every client: the loosest p99 bound, wait + 2 x compute).
MODELS = {
    "mlp": {"file": "mlp.pt", "runtime": "torchscript", "shape": [1, 256], "binary": False, "timeout_s": 10,
            "scale": 1, "ferry": [{"replicas": 1, "threads": 2, "max_batch_size": 32, "batch_wait_timeout_s": 0.001},
                                  {"replicas": 1, "threads": 1, "max_batch_size": 64, "batch_wait_timeout_s": 0.002},
                                  {"replicas": 1, "threads": 2, "max_batch_size": 64, "batch_wait_timeout_s": 0.002}]},
    "resnet18": {"file": "resnet18.pt", "runtime": "torchscript", "shape": [1, 3, 224, 224], "binary": True,
                 "timeout_s": 120, "scale": 2,
                 "ferry": [{"replicas": 1, "threads": 2, "max_batch_size": 32, "batch_wait_timeout_s": 0.2},
                           {"replicas": 2, "threads": 1, "max_batch_size": 8, "batch_wait_timeout_s": 0.2},
                           {"replicas": 2, "threads": 1, "max_batch_size": 32, "batch_wait_timeout_s": 0.2}]},
    "xgb": {"file": "xgb.json", "runtime": "xgboost", "shape": [1, 32], "binary": False, "timeout_s": 10,
            "scale": 1, "ferry": [{"replicas": 1, "threads": 2, "max_batch_size": 32, "batch_wait_timeout_s": 0.001}]},
}

# FERRY_SETUPS='{"mlp": [{"replicas": 1, "threads": 2, "max_batch_size": 64, ...}]}' replaces a model's
# ferry setups (for trying batch settings without editing this file); "adaptive": true is passed on.
for _name, _setups in json.loads(os.environ.get("FERRY_SETUPS", "{}")).items():
    MODELS[_name]["ferry"] = _setups


def ceiling(models_dir, spec, replicas, threads, batch, seconds):
    """`replicas` plain LibTorch loops at once, each with `threads` intra-op threads: samples/s summed."""
    procs = [subprocess.Popen([TORCH_LOOP, os.path.join(models_dir, spec["file"]), str(batch), str(seconds),
                               str(threads)], stdout=subprocess.PIPE, text=True) for _ in range(replicas)]
    runs = [json.loads(p.communicate()[0]) for p in procs]
    return {"batch": batch, "replicas": replicas, "threads": threads,
            "samples_per_s": sum(r["samples_per_s"] for r in runs),
            "ms_per_batch": statistics.mean(r["ms_per_batch"] for r in runs)}


def ms(v):
    """Milliseconds with three significant figures, without exponents."""
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def write_body(work, name, spec):
    x = np.random.default_rng(0).normal(size=spec["shape"]).astype(np.float32)
    path = os.path.join(work, f"{name}.body")
    if spec["binary"]:
        head = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": spec["shape"],
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        with open(path, "wb") as f:
            f.write(head + x.tobytes())
        return path, str(len(head))
    with open(path, "w") as f:
        json.dump({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": spec["shape"],
                               "data": x.flatten().tolist()}]}, f)
    return path, ""


def load(url, body, header_length, spec, sample_batches=False):
    seconds = DURATION * spec["scale"]
    """wrk at 64 connections; meanwhile (ferry only) a client reads the ferry-batch-size of requests that
    complete while wrk runs."""
    env = {"BODY_FILE": body, "HEADER_LENGTH": header_length}
    script = os.path.join(HERE, "post.lua")
    wrk(url, CONNECTIONS, 3 * spec["scale"], script, env, spec["timeout_s"])  # warm-up
    time.sleep(3 * (spec["scale"] - 1))  # a slow model finishes the warm-up's batches first
    sizes = []

    def sample():
        data = open(body, "rb").read()
        headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
        end = time.monotonic() + seconds * 0.9
        time.sleep(seconds / 10)
        while time.monotonic() < end:
            r = requests.post(url, data=data, headers=headers, timeout=spec["timeout_s"])
            if "ferry-batch-size" in r.headers and time.monotonic() < end:
                sizes.append(int(r.headers["ferry-batch-size"]))
            time.sleep(seconds / 50)

    sampler = threading.Thread(target=sample) if sample_batches else None
    if sampler:
        sampler.start()
    r = wrk(url, CONNECTIONS, seconds, script, env, spec["timeout_s"])
    if sampler:
        sampler.join()
        r["batch_sizes"] = sizes
        r["batch_size_median"] = statistics.median(sizes) if sizes else None
    return r


def fastapi(models_dir, spec, workers, body, header_length, name):
    port = free_port()
    env = {**os.environ, "MODEL_FILE": os.path.join(models_dir, spec["file"]), "WORKERS": str(workers)}
    proc = subprocess.Popen(["/usr/bin/python3", "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--http",
                             "httptools", "--log-level", "warning"], cwd=HERE, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
        for _ in range(600):
            try:
                data = open(body, "rb").read()
                headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
                if requests.post(url, data=data, headers=headers, timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        return load(url, body, header_length, spec)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    work = tempfile.mkdtemp(prefix="ferry-bench-models-")
    models_dir = os.path.join(work, "models")
    subprocess.run(["/usr/bin/python3", os.path.join(HERE, "make_models.py"), models_dir], check=True)
    results = {name: {"ferry": []} for name in ONLY}
    node = Node()
    try:
        for name in ONLY:
            spec = MODELS[name]
            body, header_length = write_body(work, name, spec)
            for setup in spec["ferry"]:
                batching = {k: setup[k] for k in ("max_batch_size", "batch_wait_timeout_s", "adaptive") if k in setup}
                batching = {k: str(v).lower() if isinstance(v, bool) else v for k, v in batching.items()}
                fields = ", ".join(f"{k}: {v}" for k, v in batching.items())
                node.deploy(f"""applications:
  - name: {name}
    route_prefix: /{name}
    deployments:
      - name: {name}
        import_path: {spec['runtime']}:{os.path.join(models_dir, spec['file'])}
        num_replicas: {setup['replicas']}
        resources: {{num_cpus: {setup['threads']}}}
        max_ongoing_requests: {max(CONNECTIONS // setup['replicas'], batching['max_batch_size'])}
        batching: {{{fields}}}
""")
                node.wait_running(name, timeout=300)
                r = load(node.url(f"/v2/models/{name}/infer"), body, header_length, spec, sample_batches=True)
                r["setup"] = setup
                results[name]["ferry"].append(r)
                print(f"{name}: ferry {setup}: {r['rps']:.0f} req/s, batch sizes seen {r['batch_sizes']}", flush=True)
                if spec["runtime"] == "torchscript":
                    # The compute ceiling right after the load it bounds (the idle replica stays up), so that
                    # both see the same machine: this VM's speed drifts by tens of percent over minutes.
                    batch = max(1, round(r["batch_size_median"] or 1))
                    r["ceiling"] = ceiling(models_dir, spec, setup["replicas"], setup["threads"], batch,
                                           min(DURATION, 10))
                    print(f"{name}: LibTorch loop(s) {r['ceiling']}", flush=True)
    finally:
        node.close()

    for name in ONLY:
        spec = MODELS[name]
        row = results[name]
        body, header_length = write_body(work, name, spec)
        for workers in (1, 2):  # each twice, keeping the better run: the peer gets the benefit of the doubt
            runs = [fastapi(models_dir, spec, workers, body, header_length, name) for _ in range(2)]
            row[f"fastapi_{workers}w"] = max(runs, key=lambda r: r["rps"])
            print(f"{name}: fastapi {workers} worker(s) {[round(r['rps']) for r in runs]} req/s", flush=True)

    print(f"\n{CONNECTIONS} connections, {DURATION} s each ({DURATION * 2} s for resnet18)")
    print(f"{'model':<9} {'server':<44} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}  notes")
    for name, row in results.items():
        best = max(row["fastapi_1w"]["rps"], row["fastapi_2w"]["rps"])
        for r in row["ferry"]:
            b = r["setup"]
            note = f"batch ~{r['batch_size_median']}; {r['rps'] / best:.2f}x the better FastAPI"
            if "ceiling" in r:
                c = r["ceiling"]
                bound = b["batch_wait_timeout_s"] * 1000 + 2 * c["ms_per_batch"]
                note += (f"; {r['rps'] / c['samples_per_s']:.0%} of {c['replicas']} LibTorch loop(s)' "
                         f"{c['samples_per_s']:.1f}/s at batch {c['batch']}; p99 bound (wait + 2 x "
                         f"{ms(c['ms_per_batch'])} ms) {ms(bound)} ms: "
                         f"{'met' if r['p99_us'] / 1000 <= bound else 'missed'}")
            if r["non_2xx"]:
                note += f"; non-2xx {r['non_2xx']}"
            label = (f"ferry ({b['replicas']}x{b['threads']} thr, batch {b['max_batch_size']}, "
                     f"wait {b['batch_wait_timeout_s'] * 1000:g} ms{', adaptive' if b.get('adaptive') else ''})")
            print(f"{name:<9} {label:<44} {r['rps']:>9.1f} {r['p50_us'] / 1000:>9.2f} {r['p99_us'] / 1000:>9.2f}  {note}")
        for server in ("fastapi_1w", "fastapi_2w"):
            r = row[server]
            label = f"FastAPI + uvicorn, {server[-2]} worker(s)"
            note = f"non-2xx {r['non_2xx']}" if r["non_2xx"] else ""
            print(f"{name:<9} {label:<44} {r['rps']:>9.1f} {r['p50_us'] / 1000:>9.2f} {r['p99_us'] / 1000:>9.2f}  {note}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "models.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
