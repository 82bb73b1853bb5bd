"""The out-of-tree plugin: install ferry with cmake --install, build examples/plugin against it with
find_package(Ferry), and serve the result."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import requests

from harness import BUILD_DIR, SOURCE_DIR, Ferry, metric_samples, run_ferry, wait_until


class PluginTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ferry-plugin-")
        prefix = os.path.join(cls.tmp, "prefix")
        build = os.path.join(cls.tmp, "build")
        subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", prefix], check=True, capture_output=True)
        subprocess.run(["cmake", "-S", os.path.join(SOURCE_DIR, "examples/plugin"), "-B", build, "-G", "Ninja",
                        f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True)
        subprocess.run(["cmake", "--build", build], check=True, capture_output=True)
        cls.prefix = prefix
        cls.library = os.path.join(build, "libsentiment.so")
        cls.installed_ferry = os.path.join(prefix, "bin/ferry")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_install_holds_the_python_package(self):
        site = os.path.join(self.prefix, "lib/python3.11/dist-packages")
        self.assertTrue(os.path.exists(os.path.join(site, "ferry/serve/__init__.py")))
        done = subprocess.run(["/usr/bin/python3", "-c", "from ferry import serve; print(serve.deployment.__name__)"],
                              env=dict(os.environ, PYTHONPATH=site), capture_output=True, text=True)
        self.assertEqual(done.stdout.strip(), "deployment", done.stderr)

    def test_install_holds_the_sdk(self):
        self.assertTrue(os.path.exists(os.path.join(self.prefix, "include/ferry/deployment.h")))
        self.assertTrue(os.path.exists(os.path.join(self.prefix, "include/ferry/abi.h")))
        self.assertTrue(os.access(self.installed_ferry, os.X_OK))
        # Only the entry point is exported from the plugin.
        out = subprocess.run(["nm", "-D", "--defined-only", self.library], capture_output=True, text=True).stdout
        self.assertIn("ferry_deployment_Sentiment", out)

    def test_serves_the_plugin(self):
        config = f"""
applications:
  - name: sentiment
    route_prefix: /sentiment
    deployments:
      - name: Sentiment
        import_path: {self.library}:Sentiment
        num_replicas: 2
        args: {{positive: [good, fast], negative: [slow]}}
        user_config: {{threshold: 1}}
"""
        with Ferry(config) as ferry:
            r = requests.post(ferry.url("/sentiment"), data="good and fast", timeout=10)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.json(), {"label": "positive", "score": 2, "threshold": 1.0})
            # user_config reached reconfigure(): one good word is under the threshold of 1.
            r = requests.get(ferry.url("/sentiment?text=good"), timeout=10)
            self.assertEqual(r.json()["label"], "neutral")
            r = requests.get(ferry.url("/sentiment?text=slow+slow"), timeout=10)
            self.assertEqual(r.json()["label"], "negative")
            # The constructor's ferry::log line, once per replica, tagged with the replica's id.
            lines = [l for l in ferry.stderr_lines if "lexicon: 2 positive and 1 negative words" in l]
            self.assertEqual(len(lines), 2, ferry.stderr())
            self.assertTrue(all(" INFO user [sentiment#Sentiment#" in l for l in lines), lines)
            # Its own counter (ferry/metrics.h) on the node's /metrics, per replica, with the replica's
            # labels and its tag; the node polls replicas every second.
            def labelled(label):
                return sum(v for l, v in metric_samples(ferry, "sentiment_labels_total")
                           if l.get("label") == label and l.get("application") == "sentiment"
                           and l.get("deployment") == "Sentiment" and l.get("replica", "").startswith("sentiment#"))
            wait_until(lambda: labelled("positive") == 1 and labelled("neutral") == 1 and labelled("negative") == 1,
                       what="sentiment_labels_total for each label")

    def test_installed_binary_serves_the_example_config(self):
        # examples/plugin/sentiment.yaml names build/libsentiment.so relative to itself.
        work = os.path.join(self.tmp, "relative")
        os.makedirs(os.path.join(work, "build"), exist_ok=True)
        shutil.copy(self.library, os.path.join(work, "build/libsentiment.so"))
        config_path = os.path.join(work, "sentiment.yaml")
        shutil.copy(os.path.join(SOURCE_DIR, "examples/plugin/sentiment.yaml"), config_path)
        with Ferry(config_file=config_path, binary=self.installed_ferry) as ferry:
            r = requests.get(ferry.url("/sentiment?text=great+and+fast"), timeout=10)
            self.assertEqual(r.json()["label"], "positive")

    def test_the_composing_streaming_example(self):
        # examples/plugin/reviews.yaml: Reviews calls Sentiment through a handle and streams events.
        work = os.path.join(self.tmp, "reviews")
        os.makedirs(os.path.join(work, "build"), exist_ok=True)
        shutil.copy(self.library, os.path.join(work, "build/libsentiment.so"))
        config_path = os.path.join(work, "reviews.yaml")
        shutil.copy(os.path.join(SOURCE_DIR, "examples/plugin/reviews.yaml"), config_path)
        with Ferry(config_file=config_path, binary=self.installed_ferry) as ferry:
            r = requests.post(ferry.url("/reviews"), data=b"I love it\nawful and slow\nfine", timeout=30)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
            events = [e for e in r.text.split("\n\n") if e]
            self.assertEqual(len(events), 4, r.text)
            labels = [json.loads(e.split("data: ", 1)[1])["label"] for e in events[:3]]
            self.assertEqual(labels, ["positive", "negative", "neutral"])
            self.assertTrue(events[3].startswith("event: summary\ndata: "))
            self.assertEqual(json.loads(events[3].split("data: ", 1)[1]), {"lines": 3, "positive": 1})
            r = requests.post(ferry.url("/reviews"), data=b"", timeout=30)
            self.assertEqual(r.status_code, 400)

    def test_a_rebuilt_plugin_is_a_new_version(self):
        from test_lifecycle import ferry_cli, replica_ids, wait_until, app_status
        lib = os.path.join(self.tmp, "versioned", "libsentiment.so")
        os.makedirs(os.path.dirname(lib), exist_ok=True)
        shutil.copy(self.library, lib)
        config_path = os.path.join(os.path.dirname(lib), "c.yaml")
        with open(config_path, "w") as f:
            f.write("applications:\n  - name: s\n    route_prefix: /s\n    deployments:\n"
                    "      - {name: Sentiment, import_path: libsentiment.so:Sentiment, health_check_period_s: 0.2}\n")
        with Ferry(config_file=config_path) as ferry:
            before = replica_ids(ferry.admin, "s", "Sentiment")
            r = ferry_cli(ferry.admin, "deploy", config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            time.sleep(0.5)
            self.assertEqual(replica_ids(ferry.admin, "s", "Sentiment"), before)  # same file: nothing to do
            with open(lib, "ab") as f:
                f.write(b"\0" * 64)  # a different build of the library, as far as ferry can tell
            r = ferry_cli(ferry.admin, "deploy", config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            wait_until(lambda: app_status(ferry.admin, "s") == "RUNNING" and
                       not set(replica_ids(ferry.admin, "s", "Sentiment")) & set(before), what="a new version")
            self.assertEqual(requests.get(ferry.url("/s?text=good"), timeout=10).json()["label"], "positive")

    def test_missing_symbol_is_a_config_error(self):
        config_dir = tempfile.mkdtemp(dir=self.tmp)
        path = os.path.join(config_dir, "c.yaml")
        with open(path, "w") as f:
            f.write(f"applications:\n  - name: a\n    deployments:\n      - name: A\n        import_path: {self.library}:Nope\n")
        r = run_ferry(["run", path])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:5:22: applications[0].deployments[0].import_path:", r.stderr)
        self.assertIn("ferry_deployment_Nope not found", r.stderr)

    def test_constructor_exception_from_a_plugin(self):
        config = f"""
applications:
  - name: s
    deployments:
      - name: Sentiment
        import_path: {self.library}:Sentiment
        args: {{positive: []}}
"""
        ferry = Ferry(config, ready=False)
        try:
            self.assertNotEqual(ferry.wait_exit(30), 0)
            self.assertIn("args.positive: the lexicon needs at least one word", ferry.stderr())
        finally:
            ferry.close()


if __name__ == "__main__":
    unittest.main()
