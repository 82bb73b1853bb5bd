"""The Python peer: the same echo as ferry's builtin:echo, as a FastAPI `async def` endpoint."""
from fastapi import FastAPI, Request

app = FastAPI()


@app.api_route("/echo/{rest:path}", methods=["GET", "POST"])
@app.api_route("/echo", methods=["GET", "POST"])
async def echo(request: Request, rest: str = ""):
    body = await request.body()
    return {
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "route_prefix": "/echo",
        "headers": dict(request.headers),
        "body": body.decode("utf-8", "replace"),
        "request_id": request.headers.get("x-request-id", ""),
    }
