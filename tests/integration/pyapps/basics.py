"""Python deployments the integration tests serve (tests/integration/test_python.py): one application per
feature, written as Ray Serve users write them, with `from ferry import serve`."""

import asyncio
import logging
import os

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from ferry import serve
from ferry.serve.handle import DeploymentHandle, DeploymentResponse

logger = logging.getLogger("ray.serve")


# --- HTTP: what a handler returns becomes the answer -------------------------------------------------------
@serve.deployment
class Greeter:
    def __init__(self, greeting: str = "Hello"):
        self.greeting = greeting

    def __call__(self, request: Request):
        q = request.query_params
        kind = q.get("kind", "text")
        if kind == "json":
            return {"greeting": self.greeting, "name": q.get("name", "world"), "path": request.url.path}
        if kind == "response":
            return PlainTextResponse("teapot", status_code=418, headers={"x-kind": "response"})
        if kind == "stream":
            return StreamingResponse((f"part {i}\n" for i in range(int(q.get("n", "3")))), media_type="text/plain")
        if kind == "generator":
            return (f"gen {i}\n" for i in range(3))
        if kind == "raise":
            raise KeyError("no such thing")
        if kind == "log":
            logger.info("greeting %s", q.get("name", "world"))
        if kind == "context":
            c = serve.get_replica_context()
            return {"app": c.app_name, "deployment": c.deployment, "replica": str(c.replica_id), "pid": os.getpid()}
        return f"{self.greeting}, {q.get('name', 'world')}!"


greeter = Greeter.bind("Hello")


@serve.deployment
class Echo:
    async def __call__(self, request: Request):
        body = await request.body()
        data = await request.json() if body else None
        return JSONResponse({"method": request.method, "json": data, "headers": dict(request.headers)})


echo = Echo.bind()


# --- Composition through handles --------------------------------------------------------------------------
@serve.deployment
class Adder:
    def __init__(self, increment: int):
        self.increment = increment

    def __call__(self, x: int) -> int:
        return x + self.increment

    def add(self, x: int) -> int:
        return x + self.increment

    async def count(self, n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    def fail(self):
        raise ValueError("the adder cannot do that")

    def whoami(self) -> str:
        return serve.context._get_serve_request_context().request_id


@serve.deployment
class Multiplier:
    def __call__(self, x: int) -> int:
        return x * 2


@serve.deployment
class Calculator:
    def __init__(self, adder: DeploymentHandle, multiplier: DeploymentHandle):
        self.adder = adder
        self.multiplier = multiplier

    async def __call__(self, request: Request):
        x = int(request.query_params.get("x", "1"))
        op = request.query_params.get("op", "chain")
        if op == "chain":
            # A response passed as an argument: resolved before the multiplier runs.
            r: DeploymentResponse = self.multiplier.remote(self.adder.add.remote(x))
            return {"result": await r}
        if op == "stream":
            gen = self.adder.options(stream=True).count.remote(x)
            return {"items": [item["i"] async for item in gen]}
        if op == "fail":
            try:
                await self.adder.fail.remote()
            except ValueError as e:
                return {"caught": type(e).__name__, "message": str(e), "notes": getattr(e, "__notes__", [])}
        if op == "sync":
            return {"result": self.adder.remote(x).result(timeout_s=30)}
        if op == "ids":
            # Calls made by an async handler carry its request's id (and deadline and trace), before and
            # after an await.
            first = await self.adder.whoami.remote()
            await asyncio.sleep(0)
            return {"ids": [first, await self.adder.whoami.remote()]}
        return {"op": op}


calculator = Calculator.bind(Adder.bind(increment=10), Multiplier.bind())


# --- Batching ------------------------------------------------------------------------------------------------
@serve.deployment(max_ongoing_requests=16)
class Batcher:
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.5)
    async def handle_batch(self, requests):
        sizes = len(requests)
        return [{"batch_size": sizes, "x": int(r.query_params.get("x", "0"))} for r in requests]

    async def __call__(self, request: Request):
        return await self.handle_batch(request)


batcher = Batcher.bind()


# --- Multiplexing --------------------------------------------------------------------------------------------
@serve.deployment
class ModelServer:
    def __init__(self):
        self.loads = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str):
        self.loads.append(model_id)
        return {"model": model_id}

    async def __call__(self, request: Request):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"model": model["model"], "loads": list(self.loads)}


models = ModelServer.bind()


@serve.deployment(num_replicas=3)
class PlacedModels:
    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str):
        return model_id

    async def __call__(self, request: Request):
        model = await self.get_model(serve.get_multiplexed_model_id())
        return {"model": model, "pid": os.getpid()}


placed_models = PlacedModels.bind()


# --- user_config and health -----------------------------------------------------------------------------------
@serve.deployment(user_config={"threshold": 1})
class Configurable:
    def __init__(self):
        self.threshold = None

    def reconfigure(self, config: dict):
        self.threshold = config["threshold"]

    def check_health(self):
        if self.threshold == -1:
            raise RuntimeError("unhealthy on purpose")

    def __call__(self, request: Request):
        return {"threshold": self.threshold}


configurable = Configurable.bind()


# --- FastAPI ingress ----------------------------------------------------------------------------------------
api = FastAPI()


@serve.deployment
@serve.ingress(api)
class Api:
    def __init__(self, suffix: str):
        self.suffix = suffix

    @api.get("/hello")
    def hello(self, name: str = "world"):
        return {"hello": name + self.suffix}

    @api.post("/items/{item_id}")
    async def create(self, item_id: int, request: Request):
        return {"item_id": item_id, "body": (await request.json())}


    @api.websocket("/ws")
    async def chat(self, ws: WebSocket):
        await ws.accept()
        while True:
            try:
                text = await ws.receive_text()
            except WebSocketDisconnect:
                return
            if text == "bye":
                await ws.close(code=4000)
                return
            await ws.send_text(text.upper() + self.suffix)


fastapi_app = Api.bind("!")


# --- An application builder (Ray's): args from the config or the command line -------------------------------
def build_app(args: dict):
    return Greeter.options(name="Built").bind(args.get("greeting", "Hi"))


# --- Python and C++ in one application ----------------------------------------------------------------------
@serve.deployment
class ToEcho:
    def __init__(self):
        self.echo = serve.get_deployment_handle("CEcho")

    async def __call__(self, request: Request):
        answer = await self.echo.remote({"from": "python"})
        return {"echo_said": answer}


to_echo = ToEcho.bind()


# --- A constructor that fails ---------------------------------------------------------------------------------
@serve.deployment
class Broken:
    def __init__(self):
        raise RuntimeError("the constructor failed on purpose")


broken = Broken.bind()


# --- Code that hangs ------------------------------------------------------------------------------------------
HANG_FLAG = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ferry-test-hang-health")


@serve.deployment(max_ongoing_requests=1, health_check_period_s=0.2, health_check_timeout_s=0.5)
class Hangs:
    def __init__(self):
        self.served = 0

    def __call__(self, request: Request):
        if request.query_params.get("hang"):
            while True:  # never returns: only a cancel stops it
                pass
        self.served += 1
        return {"served": self.served, "pid": os.getpid()}

    def check_health(self):
        while os.path.exists(HANG_FLAG):
            pass

    def spin(self, tag):
        while True:
            pass


@serve.deployment
class Waits:
    def __init__(self, hangs: DeploymentHandle):
        self.hangs = hangs

    async def __call__(self, request: Request):
        tag = request.query_params.get("tag", "")
        try:
            if request.query_params.get("via"):
                await self.hangs.spin.remote(tag)
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            logger.info("Waits %s was cancelled", tag)
            raise


hangs = Hangs.bind()
waits = Waits.bind(Hangs.options(name="Spinner").bind())


# --- Metrics of its own (ferry.serve.metrics), on the node's /metrics --------------------------------------
from ferry.serve import metrics  # noqa: E402

LOADED = metrics.Gauge("basics_module_loaded", description="Set when the module is imported in a replica.")
LOADED.set(1)


@serve.deployment(num_replicas=2)
class Counted:
    def __init__(self):
        self.requests = metrics.Counter("basics_requests", description="Requests, by kind.",
                                        tag_keys=("kind", "route"))
        self.requests.set_default_tags({"kind": "plain"})
        self.size = metrics.Histogram("basics_size", description="Sizes asked for.", boundaries=[1, 10, 100])
        self.last = metrics.Gauge("basics_last_size")

    async def __call__(self, request: Request):
        q = request.query_params
        size = float(q.get("size", "0"))
        if q.get("kind"):
            self.requests.inc(2, tags={"kind": q["kind"]})
        else:
            self.requests.inc()
        self.size.observe(size)
        self.last.set(size)
        if q.get("bad") == "tag":
            self.requests.inc(tags={"nope": "x"})
        if q.get("bad") == "value":
            self.requests.inc(0)
        return "counted"


counted = Counted.bind()
