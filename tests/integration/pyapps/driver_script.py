"""A driver script as Ray Serve users write one: deployments defined in __main__, serve.run, handles from
the driver, serve.status, serve.delete, serve.shutdown. Prints what it saw as one JSON line."""

import asyncio
import json

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


@serve.deployment
class Pipeline:
    def __init__(self, model: DeploymentHandle):
        self.model = model

    async def __call__(self, text: str) -> str:
        return (await self.model.remote(text)).upper()


async def use_async(handle):
    return await handle.remote("async")


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
    serve.delete("drv")
    seen["after_delete"] = sorted(serve.status().applications)
    serve.shutdown()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
