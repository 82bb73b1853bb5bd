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

# Per model: ferry's deployment settings (one replica using both cores), the request, wrk's timeout.
MODELS = {
    "mlp": {"file": "mlp.pt", "runtime": "torchscript", "shape": [1, 256], "binary": False,
            "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.001}, "timeout_s": 10},
    "resnet18": {"file": "resnet18.pt", "runtime": "torchscript", "shape": [1, 3, 224, 224], "binary": True,
                 "batching": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}, "timeout_s": 120},
    "xgb": {"file": "xgb.json", "runtime": "xgboost", "shape": [1, 32], "binary": False,
            "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.001}, "timeout_s": 10},
}


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
    """wrk at 64 connections; meanwhile (ferry only) a client samples the ferry-batch-size of 20 requests."""
    env = {"BODY_FILE": body, "HEADER_LENGTH": header_length}
    script = os.path.join(HERE, "post.lua")
    wrk(url, CONNECTIONS, 3, script, env, spec["timeout_s"])  # warm-up
    sizes = []

    def sample():
        data = open(body, "rb").read()
        headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
        time.sleep(DURATION / 4)
        for _ in range(20):
            r = requests.post(url, data=data, headers=headers, timeout=spec["timeout_s"])
            if "ferry-batch-size" in r.headers:
                sizes.append(int(r.headers["ferry-batch-size"]))
            time.sleep(DURATION / 60)

    sampler = threading.Thread(target=sample) if sample_batches else None
    if sampler:
        sampler.start()
    r = wrk(url, CONNECTIONS, DURATION, script, env, spec["timeout_s"])
    if sampler:
        sampler.join()
        r["batch_size_median"] = statistics.median(sizes) if sizes else 1
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
    results = {}
    node = Node()
    try:
        for name in ONLY:
            spec = MODELS[name]
            body, header_length = write_body(work, name, spec)
            batching = ", ".join(f"{k}: {v}" for k, v in spec["batching"].items())
            node.deploy(f"""applications:
  - name: {name}
    route_prefix: /{name}
    deployments:
      - name: {name}
        import_path: {spec['runtime']}:{os.path.join(models_dir, spec['file'])}
        resources: {{num_cpus: 2}}
        max_ongoing_requests: {CONNECTIONS}
        batching: {{{batching}}}
""")
            node.wait_running(name, timeout=300)
            row = {"ferry": load(node.url(f"/v2/models/{name}/infer"), body, header_length, spec, sample_batches=True)}
            print(f"{name}: ferry {row['ferry']['rps']:.0f} req/s (batch ~{row['ferry']['batch_size_median']})",
                  flush=True)
            results[name] = row
        node.close()
        node = None
        for name in ONLY:
            spec = MODELS[name]
            row = results[name]
            body, header_length = write_body(work, name, spec)
            for workers in (1, 2):
                row[f"fastapi_{workers}w"] = fastapi(models_dir, spec, workers, body, header_length, name)
                print(f"{name}: fastapi {workers} worker(s) {row[f'fastapi_{workers}w']['rps']:.0f} req/s", flush=True)
            if spec["runtime"] == "torchscript":
                batch = max(1, int(row["ferry"]["batch_size_median"]))
                out = subprocess.run([TORCH_LOOP, os.path.join(models_dir, spec["file"]), str(batch), str(DURATION), "2"],
                                     capture_output=True, text=True, check=True).stdout
                row["ceiling"] = json.loads(out)
                print(f"{name}: LibTorch loop at batch {batch}: {row['ceiling']['samples_per_s']:.0f} samples/s",
                      flush=True)
    finally:
        if node:
            node.close()

    print(f"\n{CONNECTIONS} connections, {DURATION} s each")
    print(f"{'model':<9} {'server':<22} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}  notes")
    for name, row in results.items():
        spec = MODELS[name]
        best = max(row["fastapi_1w"]["rps"], row["fastapi_2w"]["rps"])
        for server in ("ferry", "fastapi_1w", "fastapi_2w"):
            r = row[server]
            note = ""
            if server == "ferry":
                note = f"batch ~{r['batch_size_median']}; {r['rps'] / best:.2f}x the better FastAPI"
                if "ceiling" in row:
                    c = row["ceiling"]
                    bound = spec["batching"]["batch_wait_timeout_s"] * 1000 + 2 * c["ms_per_batch"]
                    note += (f"; {r['rps'] / c['samples_per_s']:.0%} of the LibTorch loop's {c['samples_per_s']:.0f}"
                             f"/s; p99 bound (wait + 2 batches) {bound:.1f} ms")
            if r["non_2xx"]:
                note += f"; non-2xx {r['non_2xx']}"
            print(f"{name:<9} {server:<22} {r['rps']:>9.0f} {r['p50_us'] / 1000:>9.2f} {r['p99_us'] / 1000:>9.2f}  {note}")
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "models.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
