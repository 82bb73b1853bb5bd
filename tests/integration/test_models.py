"""Real models over the Open Inference Protocol: TorchScript and XGBoost models made at test time with
Debian's python3-torch and python3-xgboost, served by the real ferry binary, and compared with what the
Python libraries compute for the same inputs.

Tolerances: TorchScript outputs within 1e-5 (absolute) of PyTorch's, XGBoost within 1e-6 of
xgboost's; batched and unbatched answers from ferry within 1e-5 relative and 1e-6 absolute: a batch is one
matrix product of another shape, and BLAS sums in another order for another shape and CPU (seen: a
difference of 1.1e-08 on float32 outputs), so bit-for-bit equality holds on some machines only.
"""
import concurrent.futures as cf
import json
import os
import re
import time
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import requests
import torch
import xgboost

from harness import FERRY_BIN, SOURCE_DIR, Ferry

sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "models"))
import make_models  # noqa: E402

MODELS = tempfile.TemporaryDirectory(prefix="ferry-models-")
make_models.main(MODELS.name)


def path(name):
    return os.path.join(MODELS.name, name)


CONFIG = f"""
applications:
  - name: mlp
    route_prefix: /mlp
    deployments:
      - name: mlp
        import_path: torchscript:{path("mlp.pt")}
  - name: mlp-batched
    route_prefix: /mlp-batched
    deployments:
      - name: mlp_batched
        import_path: torchscript:{path("mlp.pt")}
        max_ongoing_requests: 32
        batching: {{max_batch_size: 16, batch_wait_timeout_s: 0.02}}
  - name: cnn
    route_prefix: /cnn
    deployments:
      - name: Cnn
        import_path: torchscript:{path("cnn.pt")}
        args:
          model_name: cnn
          inputs: [{{name: image, datatype: FP32, shape: [-1, 1, 8, 8]}}]
          outputs: [{{name: logits, datatype: FP32, shape: [-1, 3]}}, {{name: probabilities, datatype: FP32, shape: [-1, 3]}}]
  - name: reg
    route_prefix: /reg
    deployments:
      - name: reg
        import_path: xgboost:{path("reg.json")}
        args: {{model_version: 2}}
  - name: cls
    route_prefix: /cls
    deployments:
      - name: cls
        import_path: xgboost:{path("cls.ubj")}
        max_ongoing_requests: 32
        batching: {{max_batch_size: 16, batch_wait_timeout_s: 0.02}}
  - name: lazy
    route_prefix: /lazy
    deployments:
      - name: mlp_lazy
        import_path: torchscript:{path("mlp.pt")}
        autoscaling_config: {{min_replicas: 0, max_replicas: 1, initial_replicas: 0}}
"""


def tensor(name, array, datatype="FP32"):
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.flatten().tolist()}


def output(response, name):
    for o in response["outputs"]:
        if o["name"] == name:
            return np.array(o["data"], dtype=np.float32).reshape(o["shape"])
    raise AssertionError(f"no output {name} in {response}")


class ModelsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG, timeout=120)
        cls.rng = np.random.default_rng(7)

    @classmethod
    def tearDownClass(cls):
        cls.ferry.close()

    batch_sizes = []

    def infer(self, model, inputs, expect=200, **extra):
        r = requests.post(self.ferry.url(f"/v2/models/{model}/infer"), json={"inputs": inputs, **extra}, timeout=30)
        self.assertEqual(r.status_code, expect, r.text)
        if "ferry-batch-size" in r.headers:
            self.batch_sizes.append(int(r.headers["ferry-batch-size"]))
        return r.json()

    def test_a_model_scaled_to_zero_is_ready_and_starts_on_demand(self):
        get = lambda p: requests.get(self.ferry.url(p), timeout=10)  # noqa: E731
        status = requests.get(self.ferry.admin + "/api/serve/applications/", timeout=10).json()
        self.assertEqual(status["applications"]["lazy"]["deployments"]["mlp_lazy"]["replicas"], [])
        # No replica, on purpose: a readiness probe must not take the node out of service for it.
        r = get("/v2/health/ready")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(get("/v2/models/mlp_lazy/ready").status_code, 200)
        x = self.rng.normal(size=(2, 16)).astype(np.float32)
        got = self.infer("mlp_lazy", [tensor("input__0", x)])  # starts a replica and answers
        want = torch.jit.load(path("mlp.pt"))(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(output(got, "output__0"), want, atol=1e-5)

    def test_torchscript_outputs_equal_pytorch(self):
        mlp = torch.jit.load(path("mlp.pt"))
        x = self.rng.normal(size=(3, 16)).astype(np.float32)
        got = self.infer("mlp", [tensor("input__0", x)], id="req-1")
        self.assertEqual(got["model_name"], "mlp")
        self.assertEqual(got["id"], "req-1")
        with torch.no_grad():
            want = mlp(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(output(got, "output__0"), want, atol=1e-5)

        cnn = torch.jit.load(path("cnn.pt"))
        image = self.rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
        got = self.infer("cnn", [tensor("image", image)])
        with torch.no_grad():
            logits, probabilities = cnn(torch.from_numpy(image))
        np.testing.assert_allclose(output(got, "logits"), logits.numpy(), atol=1e-5)
        np.testing.assert_allclose(output(got, "probabilities"), probabilities.numpy(), atol=1e-5)
        only = self.infer("cnn", [tensor("image", image)], outputs=[{"name": "probabilities"}])
        self.assertEqual([o["name"] for o in only["outputs"]], ["probabilities"])

    def test_xgboost_outputs_equal_python(self):
        reg = xgboost.Booster(model_file=path("reg.json"))
        x = self.rng.normal(size=(4, 5)).astype(np.float32)
        got = self.infer("reg", [tensor("input__0", x)])
        self.assertEqual(got["model_version"], "2")
        np.testing.assert_allclose(output(got, "output__0"), reg.predict(xgboost.DMatrix(x)), atol=1e-6)

        cls = xgboost.Booster(model_file=path("cls.json"))
        x = self.rng.normal(size=(5, 4)).astype(np.float32)
        got = self.infer("cls", [tensor("input__0", x)])
        want = cls.predict(xgboost.DMatrix(x))
        self.assertEqual(want.shape, (5, 3))
        np.testing.assert_allclose(output(got, "output__0"), want, atol=1e-6)

    def test_batched_and_unbatched_answers_agree(self):
        xs = [self.rng.normal(size=(1 + i % 3, 16)).astype(np.float32) for i in range(48)]

        def run(model):
            with cf.ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda x: self.infer(model, [tensor("input__0", x)]), xs))

        plain, batched = run("mlp"), run("mlp_batched")
        self.assertGreater(max(self.batch_sizes), 1)  # the batched deployment really ran batches
        # ... and its replica's batch-size histogram reaches /metrics (polled every second).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = requests.get(self.ferry.admin + "/metrics", timeout=10).text
            count = re.search(r'^ferry_replica_batch_size_count\{application="mlp-batched".*\} (\S+)$', text, re.M)
            total = re.search(r'^ferry_replica_batch_size_sum\{application="mlp-batched".*\} (\S+)$', text, re.M)
            if count and total and float(total.group(1)) >= len(xs):
                break
            time.sleep(0.2)
        batches = float(count.group(1))
        self.assertGreaterEqual(float(total.group(1)), len(xs))  # every request counted in some batch
        self.assertLess(batches, float(total.group(1)))  # fewer batches than requests: batched
        for x, a, b in zip(xs, plain, batched):
            self.assertEqual(output(a, "output__0").shape, (x.shape[0], 4))
            np.testing.assert_allclose(output(a, "output__0"), output(b, "output__0"), rtol=1e-5, atol=1e-6)
        cls = xgboost.Booster(model_file=path("cls.json"))
        rows = [self.rng.normal(size=(2, 4)).astype(np.float32) for _ in range(32)]
        with cf.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda x: self.infer("cls", [tensor("input__0", x)]), rows))
        for x, a in zip(rows, answers):
            np.testing.assert_allclose(output(a, "output__0"), cls.predict(xgboost.DMatrix(x)), atol=1e-6)

    def test_protocol_endpoints(self):
        get = lambda p: requests.get(self.ferry.url(p), timeout=10)  # noqa: E731
        server = get("/v2").json()
        self.assertEqual(server["name"], "ferry")
        self.assertIn("binary_tensor_data", server["extensions"])
        self.assertEqual(get("/v2/health/live").status_code, 200)
        self.assertEqual(get("/v2/health/ready").status_code, 200)
        self.assertEqual(get("/v2/models/mlp/ready").status_code, 200)
        self.assertEqual(get("/v2/models/reg/versions/2/ready").status_code, 200)
        meta = get("/v2/models/cnn").json()
        self.assertEqual(meta["name"], "cnn")
        self.assertEqual(meta["platform"], "pytorch_torchscript")
        self.assertEqual(meta["inputs"], [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}])
        self.assertEqual([o["name"] for o in meta["outputs"]], ["logits", "probabilities"])
        meta = get("/v2/models/mlp").json()  # from the ferry.json saved inside the module
        self.assertEqual(meta["inputs"], [{"name": "input__0", "datatype": "FP32", "shape": [-1, 16]}])
        self.assertEqual(get("/v2/models/reg/versions/2").json()["versions"], ["2"])
        self.assertEqual(get("/v2/models/cls").json()["outputs"][0]["shape"], [-1, 3])

        for p, code, words in [("/v2/models/nope", 404, "unknown model 'nope'"),
                               ("/v2/models/reg/versions/9", 404, "has no version '9'"),
                               ("/v2/models/mlp/versions/1/infer", 404, "unversioned"),
                               ("/v2/models/mlp/infer", 405, "accepts POST"),
                               ("/v2/nothing", 404, "no Open Inference Protocol endpoint")]:
            r = get(p)
            self.assertEqual(r.status_code, code, p)
            self.assertIn(words, r.json()["error"])

        # The application's route_prefix speaks the same protocol: POST infers, GET describes.
        x = self.rng.normal(size=(1, 5)).astype(np.float32)
        r = requests.post(self.ferry.url("/reg"), json={"inputs": [tensor("input__0", x)]}, timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(get("/reg").json()["platform"], "xgboost")

    def test_binary_tensor_extension(self):
        x = self.rng.normal(size=(2, 16)).astype(np.float32)
        header = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 16],
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "parameters": {"binary_data_output": True}}).encode()
        r = requests.post(self.ferry.url("/v2/models/mlp/infer"), data=header + x.tobytes(), timeout=10,
                          headers={"Inference-Header-Content-Length": str(len(header))})
        self.assertEqual(r.status_code, 200, r.text)
        n = int(r.headers["Inference-Header-Content-Length"])
        head = json.loads(r.content[:n])
        out = head["outputs"][0]
        self.assertEqual(out["parameters"]["binary_data_size"], 2 * 4 * 4)
        got = np.frombuffer(r.content[n:], dtype="<f4").reshape(out["shape"])
        with torch.no_grad():
            want = torch.jit.load(path("mlp.pt"))(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_malformed_requests_get_a_4xx_naming_the_problem(self):
        good = self.rng.normal(size=(1, 16)).astype(np.float32)
        cases = [
            ([tensor("input__0", good, "FP64")], "datatype FP64 does not match the model's FP32"),
            ([tensor("input__0", self.rng.normal(size=(1, 15)).astype(np.float32))],
             "shape [1, 15] does not match the model's [-1, 16]"),
            ([{**tensor("input__0", good), "data": good.flatten().tolist()[:-1]}], "needs 16 elements, \"data\" has 15"),
            ([tensor("pixels", good)], "unknown input 'pixels'"),
            ([{**tensor("input__0", good), "datatype": "FLOAT"}], "unknown datatype \"FLOAT\""),
            ([{**tensor("input__0", good), "data": ["a"] * 16}], "is not a number"),
        ]
        for inputs, words in cases:
            r = requests.post(self.ferry.url("/v2/models/mlp/infer"), json={"inputs": inputs}, timeout=10)
            self.assertEqual(r.status_code, 400, words)
            self.assertIn(words, r.json()["error"])
        r = requests.post(self.ferry.url("/v2/models/mlp/infer"), data=b"{not json", timeout=10)
        self.assertEqual(r.status_code, 400)
        self.assertIn("not valid JSON", r.json()["error"])
        r = requests.post(self.ferry.url("/v2/models/mlp/infer"), json={"inputs": [tensor("input__0", good)],
                                                                      "outputs": [{"name": "nope"}]}, timeout=10)
        self.assertEqual(r.status_code, 400)
        self.assertIn("unknown output 'nope'", r.json()["error"])
        r = requests.post(self.ferry.url("/v2/models/mlp/infer"), json={}, timeout=10)
        self.assertIn("\"inputs\" is required", r.json()["error"])
        # One input in a batch that is wrong fails alone; the same batch's good requests are answered.
        with cf.ThreadPoolExecutor(8) as pool:
            bad = {"inputs": [tensor("input__0", good, "FP64")]}
            ok = {"inputs": [tensor("input__0", good)]}
            codes = list(pool.map(lambda body: requests.post(self.ferry.url("/v2/models/mlp_batched/infer"),
                                                              json=body, timeout=10).status_code,
                                  [bad if i % 4 == 0 else ok for i in range(16)]))
        self.assertEqual(codes, [400 if i % 4 == 0 else 200 for i in range(16)])


class ModelFilesTest(unittest.TestCase):
    def run_config(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            return subprocess.run([FERRY_BIN, "run", f.name, "--http-port", "0", "--admin-port", "0"],
                                  capture_output=True, text=True, errors="replace", timeout=120)
        finally:
            os.unlink(f.name)

    def test_a_missing_model_file_is_a_config_error(self):
        r = self.run_config("applications:\n  - name: a\n    deployments:\n"
                            "      - name: m\n        import_path: xgboost:/nonexistent/model.json\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(":5:22: applications[0].deployments[0].import_path: model file not found: /nonexistent/model.json",
                      r.stderr)

    def test_a_corrupt_model_file_fails_the_deployment(self):
        for runtime, suffix in (("torchscript", ".pt"), ("xgboost", ".json")):
            with tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False) as f:
                f.write(os.urandom(4096))
            try:
                r = self.run_config(f"applications:\n  - name: a\n    deployments:\n      - name: m\n"
                                    f"        import_path: {runtime}:{f.name}\n        max_constructor_retry_count: 1\n")
            finally:
                os.unlink(f.name)
            self.assertNotEqual(r.returncode, 0, runtime)
            self.assertIn("deployment a/m failed to start", r.stderr)
            self.assertIn(f"cannot load {'TorchScript' if runtime == 'torchscript' else 'XGBoost'} model {f.name}",
                          r.stderr)

    def test_model_names_are_one_namespace_and_v2_is_reserved(self):
        r = self.run_config(f"applications:\n  - name: a\n    route_prefix: /a\n    deployments:\n"
                            f"      - name: m\n        import_path: torchscript:{path('mlp.pt')}\n"
                            f"  - name: b\n    route_prefix: /v2/b\n    deployments:\n"
                            f"      - name: m\n        import_path: xgboost:{path('reg.json')}\n")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("model name \"m\" is already served by a/m; set args.model_name", r.stderr)
        self.assertIn("not under /-/ or /v2", r.stderr)


if __name__ == "__main__":
    unittest.main()
