"""The peer of bench/streaming: the same endpoints as ferry's builtin:echo in Starlette (FastAPI's core),
served by uvicorn with uvloop, httptools and websockets — what a Ray Serve user's FastAPI ingress runs on.
  GET /echo/s?stream=N&interval_ms=M   N chunks, one every M ms (SSE with Accept: text/event-stream)
  WebSocket /echo/ws                   every message sent back
"""
import asyncio

from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute


async def stream(request):
    n = int(request.query_params.get("stream", "1"))
    interval = int(request.query_params.get("interval_ms", "0")) / 1000
    sse = "text/event-stream" in request.headers.get("accept", "")

    async def chunks():
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            yield f"data: chunk {i}\n\n" if sse else f"chunk {i}\n"
    return StreamingResponse(chunks(), media_type="text/event-stream" if sse else "text/plain")


async def echo(websocket):
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await websocket.send_text(message["text"])
        else:
            await websocket.send_bytes(message["bytes"])


app = Starlette(routes=[Route("/echo/s", stream), WebSocketRoute("/echo/ws", echo)])
