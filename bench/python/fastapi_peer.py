"""The FastAPI peer of bench/python: the same handlers as apps.py's Query and Cpu, as FastAPI endpoints.

Run: /usr/bin/python3 -m uvicorn fastapi_peer:app --loop uvloop --http httptools [--workers 2]
"""
from fastapi import FastAPI, Request

from apps import burn

app = FastAPI()


@app.get("/json")
async def query(request: Request):
    return dict(request.query_params)


@app.get("/cpu")
async def cpu():
    return {"acc": burn()}
