#!/usr/bin/python3
"""The models of bench/models, made here with Debian's python3-torch, python3-torchvision and
python3-xgboost (random weights; nothing is downloaded). Usage: make_models.py OUT_DIR

  mlp.pt        MLP 256 -> 512 -> 512 -> 10 (TorchScript, metadata embedded)
  resnet18.pt   torchvision's ResNet-18, random weights, traced at [1, 3, 224, 224] (metadata embedded)
  xgb.json      XGBoost regression booster: 32 features, 100 trees of depth 6
"""
import json
import os
import sys

import numpy as np
import torch
import torchvision
import xgboost

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/models"))
from make_models import save_mlp  # noqa: E402


def main(out):
    os.makedirs(out, exist_ok=True)
    save_mlp(os.path.join(out, "mlp.pt"), [256, 512, 512, 10])
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        traced = torch.jit.trace(resnet, torch.zeros(1, 3, 224, 224))
    meta = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
            "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 1000]}]}
    torch.jit.save(traced, os.path.join(out, "resnet18.pt"), _extra_files={"ferry.json": json.dumps(meta)})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 32)).astype(np.float32)
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + rng.normal(scale=0.1, size=5000)
    booster = xgboost.train({"objective": "reg:squarederror", "max_depth": 6, "nthread": 2},
                            xgboost.DMatrix(x, label=y), num_boost_round=100)
    booster.save_model(os.path.join(out, "xgb.json"))


if __name__ == "__main__":
    main(sys.argv[1])
