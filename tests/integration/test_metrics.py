"""Metrics as operators read them: GET /metrics on the admin port, checked by promtool, scraped by a real
Prometheus server (Debian's prometheus package) on loopback and queried through its HTTP API."""
import json
import os
import re
import subprocess
import threading
import time
import unittest

import requests

from harness import FERRY_BIN, SOURCE_DIR, Ferry, Prometheus, wait_until

DASHBOARD = os.path.join(SOURCE_DIR, "deploy", "grafana", "ferry.json")

CONFIG = """
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: 2
"""


class MetricsTest(unittest.TestCase):
    def test_metrics_endpoint_counts_what_clients_saw(self):
        with Ferry(CONFIG) as ferry:
            for _ in range(20):
                self.assertEqual(requests.get(ferry.url("/echo/x"), timeout=10).status_code, 200)
            self.assertEqual(requests.get(ferry.url("/missing"), timeout=10).status_code, 404)
            r = requests.get(ferry.admin + "/metrics", timeout=10)
            self.assertEqual(r.status_code, 200)
            self.assertTrue(r.headers["Content-Type"].startswith("text/plain; version=0.0.4"))
            text = r.text
            self.assertIn('ferry_num_http_requests_total{application="echo",route="/echo",code="200"} 20\n', text)
            self.assertIn('ferry_num_http_requests_total{application="",route="",code="404"} 1\n', text)
            self.assertIn('ferry_http_request_duration_seconds_count{application="echo",route="/echo"} 20\n', text)
            self.assertIn('ferry_deployment_queue_wait_seconds_count{application="echo",deployment="Echo"} 20\n', text)
            self.assertIn('ferry_deployment_replicas{application="echo",deployment="Echo",state="RUNNING"} 2\n', text)
            self.assertIn('ferry_deployment_target_replicas{application="echo",deployment="Echo"} 2\n', text)
            self.assertIn('ferry_deployment_replica_starts_total{application="echo",deployment="Echo"} 2\n', text)
            self.assertEqual(text.count("ferry_replica_ongoing_requests{"), 2)
            memory = [float(v) for v in re.findall(r"^ferry_replica_memory_bytes\{.*\} (\S+)$", text, re.M)]
            self.assertEqual(len(memory), 2)
            self.assertTrue(all(1 << 20 < m < 1 << 32 for m in memory), memory)  # a replica's RSS: MiBs
            # The replicas' own histograms reach the node's endpoint (polled every second).
            def processed():
                t = requests.get(ferry.admin + "/metrics", timeout=10).text
                counts = re.findall(r'^ferry_replica_processing_seconds_count\{application="echo".*\} (\S+)$', t, re.M)
                return t if sum(float(c) for c in counts) == 20 else None

            text = wait_until(processed, 15, "the replicas' processing histograms")
            self.assertEqual(text.count('ferry_replica_processing_seconds_bucket{application="echo",deployment="Echo"'),
                             2 * 22)  # two replicas, 21 bounds + Inf
            check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_status_shows_live_traffic_and_watch_redraws(self):
        with Ferry(CONFIG) as ferry:
            stop = threading.Event()

            def load():  # bounded: at most 30 s or until the test is done
                end = time.monotonic() + 30
                while not stop.is_set() and time.monotonic() < end:
                    requests.get(ferry.url("/echo"), timeout=10)
                    requests.get(ferry.url("/echo?x"), timeout=10, headers={"x-request-id": "r"})

            loader = threading.Thread(target=load)
            loader.start()
            try:
                time.sleep(0.3)
                r = subprocess.run([FERRY_BIN, "status", "--address", ferry.admin, "--interval", "0.5"],
                                   capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                rps = float(re.search(r"requests_per_s: (\S+)", r.stdout).group(1))
                self.assertGreater(rps, 10)
                self.assertEqual(re.search(r"error_rate: (\S+)", r.stdout).group(1), "0.0")
                p99 = float(re.search(r"p99_ms: (\S+)", r.stdout).group(1))
                p50 = float(re.search(r"p50_ms: (\S+)", r.stdout).group(1))
                self.assertTrue(0 < p50 <= p99 < 1000, r.stdout)
                self.assertRegex(r.stdout, r"ongoing_requests: \d+")
                self.assertIn("queued_requests: 0", r.stdout)
                r = subprocess.run([FERRY_BIN, "status", "--address", ferry.admin, "--watch", "--count", "2",
                                    "--interval", "0.3"], capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout.count("\x1b[H\x1b[2J# ferry status at"), 2)
                self.assertEqual(r.stdout.count("requests_per_s:"), 2)
            finally:
                stop.set()
                loader.join()

    def test_a_real_prometheus_scrapes_and_queries_ferry(self):
        with Ferry(CONFIG) as ferry, Prometheus(ferry) as prom:
            stop = threading.Event()

            def load():  # bounded: at most 60 s or until the test is done
                end = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < end:
                    requests.get(ferry.url("/echo"), timeout=10)
                    time.sleep(0.005)

            loader = threading.Thread(target=load)
            loader.start()
            try:
                query = prom.query
                up = wait_until(lambda: query('up{job="ferry"}'), 60, "Prometheus to scrape ferry")
                self.assertEqual(up, 1.0)
                rate = wait_until(lambda: query('sum(rate(ferry_num_http_requests_total{route="/echo",code="200"}[5s]))'),
                                  60, "a request rate")
                self.assertGreater(rate, 1.0)
                p99 = wait_until(lambda: query('histogram_quantile(0.99, sum by (le) '
                                               '(rate(ferry_http_request_duration_seconds_bucket{route="/echo"}[5s])))'),
                                 60, "a p99 latency")
                self.assertGreater(p99, 0.0)
                self.assertLess(p99, 1.0)  # an echo answers in well under a second
                running = wait_until(lambda: query('sum(ferry_deployment_replicas{state="RUNNING"})'), 30, "replicas")
                self.assertEqual(running, 2.0)

                # Every query of the Grafana dashboard parses and runs, and names metrics ferry exports.
                exported = set(re.findall(r"^# TYPE (\S+)", requests.get(ferry.admin + "/metrics", timeout=10).text,
                                          re.M))
                with open(DASHBOARD) as f:
                    dashboard = json.load(f)
                exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
                self.assertGreaterEqual(len(exprs), 10)
                for expr in exprs:
                    q = expr.replace("$__rate_interval", "5s")
                    r = prom.raw_query(q)
                    self.assertEqual(r["status"], "success", f"{q}: {r}")
                    for name in re.findall(r"\b(ferry_[a-z_]+?)(?:_bucket|_sum|_count)?\b", q):
                        self.assertIn(name, exported, f"dashboard query {q} names {name}")
            finally:
                stop.set()
                loader.join()

if __name__ == "__main__":
    unittest.main()
