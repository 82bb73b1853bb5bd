"""bench/python's deployments, written with Ray Serve's API (`from ferry import serve`), and the same
handlers for the FastAPI peer (fastapi_peer.py) where there is one."""

import json
import time

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ferry import serve


def burn(n: int = 2800) -> int:
    """About 200 µs of pure Python on this machine (a loop of integer arithmetic)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1000003
    return acc


@serve.deployment(max_ongoing_requests=64)
class Query:
    async def __call__(self, request: Request) -> dict:
        return dict(request.query_params)


@serve.deployment(max_ongoing_requests=4)
class Cpu:
    def __call__(self, request: Request) -> dict:
        return {"acc": burn()}


@serve.deployment(max_ongoing_requests=64)
class Callee:
    def __call__(self, x):
        return x


@serve.deployment(max_ongoing_requests=64)
class Hop:
    """The ingress of a Python -> Python handle call; `?n=N` instead times N calls in a row here and answers
    their percentiles (the hop without the proxy in the way)."""

    def __init__(self, callee):
        self.callee = callee

    async def __call__(self, request: Request):
        n = int(request.query_params.get("n", "0"))
        if not n:
            return {"echo": await self.callee.remote(1)}
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            await self.callee.remote(i)
            times.append((time.perf_counter() - t0) * 1e6)
        return percentiles(times)


def percentiles(times: list) -> dict:
    times = sorted(times)
    n = len(times)
    return {"calls": n, "p50_us": times[n // 2], "p90_us": times[n * 9 // 10], "p99_us": times[n * 99 // 100]}


hop = Hop.bind(Callee.bind())


@serve.deployment(max_ongoing_requests=8)
class SyncHop:
    """Hop's sync twin: `def` methods and .result(), as much Ray Serve code is written."""

    def __init__(self, callee):
        self.callee = callee

    def __call__(self, request: Request):
        n = int(request.query_params.get("n", "0"))
        if not n:
            return {"echo": self.callee.remote(1).result()}
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            self.callee.remote(i).result()
            times.append((time.perf_counter() - t0) * 1e6)
        return percentiles(times)


sync_hop = SyncHop.bind(Callee.bind())


@serve.deployment(max_ongoing_requests=64)
class Mlp:
    """bench/models' MLP (mlp.pt, TorchScript) served with torch and @serve.batch, answering the same Open
    Inference Protocol JSON request as the FastAPI peer (bench/models/fastapi_app.py)."""

    def __init__(self, model_file: str, threads: int = 2):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = torch.jit.load(model_file).eval()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict(self, rows: list) -> list:
        x = self.torch.from_numpy(np.concatenate(rows))
        with self.torch.inference_mode():
            y = self.model(x).numpy()
        return list(y)

    async def __call__(self, request: Request) -> Response:
        req = json.loads(await request.body())
        t = req["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = await self.predict(x)
        name = request.url.path.rsplit("/", 2)[-2] if request.url.path.endswith("/infer") else "mlp"
        out = {"model_name": name, "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [1, len(y)],
                                                "data": y.tolist()}]}
        return Response(json.dumps(out), media_type="application/json")


def mlp_app(args: dict):
    return Mlp.bind(args["model_file"], int(args.get("threads", 2)))


@serve.deployment(max_ongoing_requests=4)
class CpuAsync:
    async def __call__(self, request: Request) -> dict:
        return {"acc": burn()}
