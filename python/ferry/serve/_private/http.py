"""HTTP for Python deployments: the Starlette Request a handler receives, and how what it returns becomes
the answer (Ray Serve's rules)."""

import asyncio
import json
from typing import Any, List, Tuple

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

Headers = List[Tuple[str, str]]
_JSON = [("content-type", "application/json")]


def scope_for(method: str, path: str, query: str, route_prefix: str, headers: Headers) -> dict:
    """An ASGI HTTP scope: `path` below the route prefix, which is the root path (so a FastAPI app's routes
    are written without the prefix, as in Ray)."""
    root = "" if route_prefix in ("", "/") else route_prefix
    sub = path[len(root):] if root and path.startswith(root) else path
    if not sub:
        sub = "/"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": sub,
        "raw_path": path.encode("latin-1", "replace"),
        "root_path": root,
        "query_string": query.encode("latin-1", "replace"),
        "headers": [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers],
        "client": None,
        "server": None,
        "extensions": {},
    }


def receiver(body: bytes, then_wait: bool = False):
    """An ASGI receive() that gives the whole body, then a disconnect (or, `then_wait`, waits forever)."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if then_wait:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


def make_request(scope: dict, body: bytes) -> Request:
    return Request(scope, receiver(body))


def encode_chunk(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return json.dumps(item).encode()


def whole_answer(value: Any) -> Tuple[int, Headers, bytes]:
    """(status, headers, body) for a value a handler returned (not a stream)."""
    if isinstance(value, Response):
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in value.raw_headers]
        return value.status_code, headers, bytes(value.body)
    if value is None:
        return 200, _JSON, b"null"
    if isinstance(value, bytes):
        return 200, [("content-type", "application/octet-stream")], value
    if isinstance(value, str):
        return 200, [("content-type", "text/plain; charset=utf-8")], value.encode()
    try:
        body = json.dumps(value)
    except (TypeError, ValueError):
        try:
            from fastapi.encoders import jsonable_encoder  # pydantic models, dataclasses, datetimes...
        except ImportError:
            raise
        body = json.dumps(jsonable_encoder(value))
    return 200, _JSON, body.encode()


def streaming_head(value: StreamingResponse) -> Tuple[int, Headers]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in value.raw_headers]
    return value.status_code, headers
