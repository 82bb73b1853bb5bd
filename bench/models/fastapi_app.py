"""The peer of bench/models: what a Python user writes today to serve a model, FastAPI + PyTorch (or
xgboost) under uvicorn with uvloop. It speaks the same Open Inference Protocol request as ferry (JSON
tensors, or the binary tensor extension when the Inference-Header-Content-Length header is present), so
the same client load drives both. MODEL_FILE picks the model; WORKERS (the uvicorn worker count) sets
torch's threads per worker so that workers x threads = the machine's cores.

Run: MODEL_FILE=mlp.pt WORKERS=2 /usr/bin/python3 -m uvicorn fastapi_app:app --workers 2 --loop uvloop --http httptools
"""
import json
import os

import numpy as np
from fastapi import FastAPI, Request, Response

MODEL_FILE = os.environ["MODEL_FILE"]
WORKERS = int(os.environ.get("WORKERS", "1"))

if MODEL_FILE.endswith(".pt"):
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))
    model = torch.jit.load(MODEL_FILE).eval()

    def predict(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
else:
    import xgboost
    booster = xgboost.Booster(model_file=MODEL_FILE)
    booster.set_param({"nthread": max(1, (os.cpu_count() or 1) // WORKERS)})

    def predict(x):
        return booster.inplace_predict(x)

app = FastAPI()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None:
        req = json.loads(body)
        t = req["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
    else:
        n = int(header_length)
        req = json.loads(body[:n])
        t = req["inputs"][0]
        x = np.frombuffer(body[n:], dtype=np.float32).reshape(t["shape"])
    y = predict(x)
    out = {"model_name": name, "outputs": [{"name": "output__0", "datatype": "FP32", "shape": list(y.shape),
                                            "data": y.flatten().tolist()}]}
    return Response(json.dumps(out), media_type="application/json")
