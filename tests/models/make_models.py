#!/usr/bin/python3
"""Makes the tiny models the tests serve, with Debian's python3-torch and python3-xgboost; nothing is
downloaded. Deterministic (fixed seeds). Usage: make_models.py OUT_DIR

  mlp.pt       TorchScript MLP 16 -> 32 -> 4, metadata embedded as the ferry.json extra file
  cnn.pt       TorchScript conv net on [N, 1, 8, 8] -> [N, 3], two outputs (logits, probabilities), no
               embedded metadata (the config's args describe it)
  reg.json     XGBoost regression booster on 5 features
  cls.json     XGBoost 3-class booster (multi:softprob) on 4 features
  cls.ubj      the same booster in Universal Binary JSON
"""
import json
import os
import sys

import numpy as np
import torch
import xgboost


class Mlp(torch.nn.Module):
    def __init__(self, sizes):
        super().__init__()
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, image):
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv(image)), 2)
        logits = self.fc(h.flatten(1))
        return logits, torch.softmax(logits, dim=1)


def save_mlp(path, sizes, seed=0):
    torch.manual_seed(seed)
    module = torch.jit.script(Mlp(sizes).eval())
    meta = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, sizes[0]]}],
            "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, sizes[-1]]}]}
    torch.jit.save(module, path, _extra_files={"ferry.json": json.dumps(meta)})


def main(out):
    os.makedirs(out, exist_ok=True)
    save_mlp(os.path.join(out, "mlp.pt"), [16, 32, 4])
    torch.manual_seed(1)
    torch.jit.save(torch.jit.script(Cnn().eval()), os.path.join(out, "cnn.pt"))

    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype=np.float32) + rng.normal(scale=0.1, size=200)
    reg = xgboost.train({"objective": "reg:squarederror", "max_depth": 3, "nthread": 1},
                        xgboost.DMatrix(x, label=y), num_boost_round=20)
    reg.save_model(os.path.join(out, "reg.json"))

    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    cls = xgboost.train({"objective": "multi:softprob", "num_class": 3, "max_depth": 3, "nthread": 1},
                        xgboost.DMatrix(x, label=y), num_boost_round=10)
    cls.save_model(os.path.join(out, "cls.json"))
    cls.save_model(os.path.join(out, "cls.ubj"))


if __name__ == "__main__":
    main(sys.argv[1])
