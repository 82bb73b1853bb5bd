"""A driver script as Ray Serve users write one: deployments defined in __main__, serve.run, handles from
the driver, serve.status, serve.delete, serve.shutdown. Prints what it saw as one JSON line."""

import asyncio
import json
import os
import tempfile
import time

from ferry import serve
from ferry.serve.handle import DeploymentHandle

SECRET = "defined in __main__"


@serve.deployment
class Model:
    def __call__(self, text: str) -> str:
        return f"{text} ({SECRET})"

    def tokens(self, n: int):
        for i in range(n):
            yield f"t{i}"

    def until(self, flag: str):
        """Yields, then waits (60 s at most) for the caller to create `flag`: a caller that gets "first"
        only with the stream's end never creates it, and sees "no flag"."""
        yield "first"
        for _ in range(600):
            if os.path.exists(flag):
                yield "second"
                return
            time.sleep(0.1)
        yield "no flag"


@serve.deployment
class Pipeline:
    def __init__(self, model: DeploymentHandle):
        self.model = model

    async def __call__(self, text: str) -> str:
        return (await self.model.remote(text)).upper()


async def use_async(handle):
    return await handle.remote("async")


def live_stream(handle, flag):
    """The items of a stream as they come: the flag is created only once the first item is in."""
    gen = handle.options(stream=True).until.remote(flag)
    items = [next(gen)]
    open(flag, "w").close()
    return items + list(gen)


async def live_stream_async(handle, flag):
    items = []
    async for item in handle.options(stream=True).until.remote(flag):
        items.append(item)
        if len(items) == 1:
            open(flag, "w").close()
    return items


def main():
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    handle = serve.run(Pipeline.bind(Model.bind()), name="drv", route_prefix="/drv")
    seen = {
        "result": handle.remote("hello").result(timeout_s=60),
        "async": asyncio.run(use_async(handle)),
        "stream": list(serve.get_deployment_handle("Model", "drv").options(stream=True).tokens.remote(3)),
        "status": serve.status().applications["drv"].status,
        "app_handle": serve.get_app_handle("drv").remote("again").result(),
    }
    with tempfile.TemporaryDirectory() as d:
        model = serve.get_deployment_handle("Model", "drv")
        seen["live"] = live_stream(model, os.path.join(d, "sync"))
        seen["live_async"] = asyncio.run(live_stream_async(model, os.path.join(d, "async")))
    serve.delete("drv")
    seen["after_delete"] = sorted(serve.status().applications)
    serve.shutdown()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
