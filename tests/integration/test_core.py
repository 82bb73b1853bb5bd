"""The data plane as a client sees it: routing, shedding, deadlines, cancellation, replica failure,
graceful shutdown."""
import concurrent.futures as cf
import json
import os
import signal
import socket
import time
import unittest

import requests

from harness import Ferry, raw_request, run_ferry, status_of

TWO_APPS = """
http_options: {request_timeout_s: 30}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: 2, max_ongoing_requests: 50}
  - name: nested
    route_prefix: /echo/deeper
    deployments:
      - {name: Deeper, import_path: "builtin:echo"}
  - name: busy
    route_prefix: /busy
    deployments:
      - {name: Busy, import_path: "builtin:busy", args: {work_us: 100}}
"""


class RoutingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(TWO_APPS)

    @classmethod
    def tearDownClass(cls):
        cls.assert_code = cls.ferry.stop()
        cls.ferry.close()

    def test_prints_progress_and_urls(self):
        out = self.ferry.stdout()
        self.assertIn("echo/Echo: 2/2 replicas ready", out)
        self.assertIn(f'application "busy" at http://127.0.0.1:{self.ferry.port}/busy', out)

    def test_longest_prefix_wins(self):
        r = requests.post(self.ferry.url("/echo/deeper/x?a=1"), data=b"payload", timeout=10)
        self.assertEqual(r.status_code, 200)
        body = r.json()
        self.assertEqual(body["route_prefix"], "/echo/deeper")
        self.assertEqual(body["path"], "/echo/deeper/x")
        self.assertEqual(body["query"], "a=1")
        self.assertEqual(body["method"], "POST")
        self.assertEqual(body["body"], "payload")
        r = requests.get(self.ferry.url("/echo/deeperx"), timeout=10)
        self.assertEqual(r.json()["route_prefix"], "/echo")
        r = requests.get(self.ferry.url("/busy?work_us=500"), timeout=10)
        self.assertEqual(r.json()["work_us"], 500)

    def test_no_route_is_a_json_404(self):
        r = requests.get(self.ferry.url("/nothing/here"), timeout=10)
        self.assertEqual(r.status_code, 404)
        self.assertIn("/nothing/here", r.json()["error"])
        self.assertEqual(r.json()["request_id"], r.headers["x-request-id"])

    def test_request_id_is_kept_or_generated(self):
        r = requests.get(self.ferry.url("/echo"), headers={"x-request-id": "my-id-42"}, timeout=10)
        self.assertEqual(r.headers["x-request-id"], "my-id-42")
        self.assertEqual(r.json()["request_id"], "my-id-42")
        r = requests.get(self.ferry.url("/echo"), timeout=10)
        self.assertRegex(r.headers["x-request-id"], r"^[0-9a-f]{32}$")
        self.assertEqual(r.json()["request_id"], r.headers["x-request-id"])

    def test_headers_reach_the_replica_in_lower_case(self):
        r = requests.get(self.ferry.url("/echo"), headers={"X-Custom-Thing": "v1"}, timeout=10)
        self.assertEqual(r.json()["headers"]["x-custom-thing"], "v1")

    def test_proxy_endpoints(self):
        r = requests.get(self.ferry.url("/-/healthz"), timeout=10)
        self.assertEqual((r.status_code, r.text), (200, "success"))
        r = requests.get(self.ferry.url("/-/routes"), timeout=10)
        self.assertEqual(r.json(), {"/echo": "echo", "/echo/deeper": "nested", "/busy": "busy"})

    def test_both_replicas_serve_over_keep_alive(self):
        with requests.Session() as s:
            statuses = [s.get(self.ferry.url("/echo/k"), timeout=10).status_code for _ in range(200)]
        self.assertEqual(statuses, [200] * 200)

    def test_pipelined_requests_are_answered_in_order(self):
        req = b"GET /echo/one HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = raw_request(self.ferry.port, req)
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), 2)
        self.assertLess(raw.index(b'"/echo/one"'), raw.index(b'"/echo/two"'))


class SheddingAndDeadlinesTest(unittest.TestCase):
    def test_queue_full_is_503_with_retry_after(self):
        with Ferry("""
applications:
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: "builtin:busy", args: {work_us: 1500000}, max_ongoing_requests: 1, max_queued_requests: 1}
""") as ferry:
            with cf.ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(requests.get, ferry.url("/slow"), timeout=30) for _ in range(6)]
                results = [f.result() for f in futures]
            codes = sorted(r.status_code for r in results)
            # One runs, one waits in the queue, the other four are shed at once.
            self.assertEqual(codes, [200, 200, 503, 503, 503, 503])
            shed = [r for r in results if r.status_code == 503]
            for r in shed:
                self.assertEqual(r.headers["Retry-After"], "1")
                self.assertIn("max_ongoing_requests", r.json()["error"])

    def test_timeout_is_504_and_cancels_the_work(self):
        with Ferry("""
http_options: {request_timeout_s: 2}
applications:
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: "builtin:busy", max_ongoing_requests: 1}
""") as ferry:
            r = requests.get(ferry.url("/slow?work_us=60000000"), timeout=30)
            self.assertEqual(r.status_code, 504)
            self.assertIn("request_timeout_s", r.json()["error"])
            # The only replica slot is free again only if the replica stopped the 60 s of work: a quick
            # request gets through (within its own 2 s, with room for a loaded machine's cancel round trip)
            # instead of timing out behind it.
            r = requests.get(ferry.url("/slow?work_us=1000"), timeout=30)
            self.assertEqual(r.status_code, 200, r.text)
            # The proxy's log line may reach stderr after the answer reached us.
            ferry.wait_for(lambda: "timed out" in ferry.stderr(), what="the timeout's log line")

    def test_client_disconnect_cancels_the_request(self):
        with Ferry("""
applications:
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: "builtin:busy", max_ongoing_requests: 1}
""") as ferry:
            s = socket.create_connection(("127.0.0.1", ferry.port), timeout=10)
            s.sendall(b"GET /slow?work_us=30000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            s.close()
            ferry.wait_for(lambda: "client disconnected; cancelling" in ferry.stderr(), what="cancel log line")
            # No request_timeout_s here: had the work gone on, this would wait 30 s; the client gives up after 10.
            r = requests.get(ferry.url("/slow?work_us=1000"), timeout=10)
            self.assertEqual(r.status_code, 200)


class ReplicaFailureTest(unittest.TestCase):
    def test_kill_9_under_load(self):
        with Ferry("""
http_options: {request_timeout_s: 60}
applications:
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: "builtin:busy", num_replicas: 2, max_ongoing_requests: 2}
""") as ferry:
            pids = ferry.replica_pids()
            self.assertEqual(len(pids), 2)
            with cf.ThreadPoolExecutor(4) as pool:
                # Four long requests fill both replicas (two each).
                inflight = [pool.submit(requests.get, ferry.url("/slow?work_us=8000000"), timeout=30) for _ in range(4)]
                time.sleep(0.5)
                victim = pids[0]
                os.kill(victim, signal.SIGKILL)
                started = time.time()
                # Requests in flight on the victim fail fast with 502, long before their 8 s of work.
                failed = []
                for f in inflight:
                    try:
                        r = f.result(timeout=max(0.1, 4 - (time.time() - started)))
                        failed.append(r)
                    except cf.TimeoutError:
                        pass
                self.assertEqual(sorted(r.status_code for r in failed), [502, 502])
                for r in failed:
                    self.assertIn("failed", r.json()["error"])
                # The survivors finish normally.
                rest = [f.result(timeout=30) for f in inflight if not f.done() or f.result() not in failed]
                self.assertTrue(all(r.status_code in (200, 502) for r in rest))
            # New requests go to the remaining (and then the replacement) replica.
            for _ in range(10):
                r = requests.get(ferry.url("/slow?work_us=1000"), timeout=30)
                self.assertEqual(r.status_code, 200)
                self.assertNotEqual(r.json()["pid"], victim)
            ferry.wait_for(lambda: len(ferry.replica_pids()) == 2 and victim not in ferry.replica_pids(),
                           what="a replacement replica")
            self.assertIn("killed by signal 9", ferry.stderr())
            self.assertIn("starting a replacement", ferry.stderr())

    def test_constructor_failure_exits_with_its_message(self):
        ferry = Ferry("""
applications:
  - name: bad
    route_prefix: /bad
    deployments:
      - {name: Broken, import_path: "builtin:busy", args: {work_us: -5}}
""", ready=False)
        try:
            code = ferry.wait_exit(30)
            self.assertNotEqual(code, 0)
            self.assertIn("args.work_us: expected a non-negative integer", ferry.stderr())
            self.assertIn("bad/Broken failed to start", ferry.stderr())
        finally:
            ferry.close()


class HealthCheckTest(unittest.TestCase):
    def test_fault_injection_knobs(self):
        with Ferry("""
applications:
  - name: flaky
    route_prefix: /flaky
    deployments:
      - {name: Flaky, import_path: "builtin:echo", user_config: {error_rate: 0.5, delay_ms: 20}, max_ongoing_requests: 20}
""") as ferry:
            with requests.Session() as s:
                codes = [s.get(ferry.url("/flaky"), timeout=10).status_code for _ in range(200)]
            failures = codes.count(500)
            self.assertEqual(codes.count(200) + failures, 200)
            self.assertTrue(50 <= failures <= 150, failures)  # 0.5 of 200, far outside chance at the edges
            r = requests.get(ferry.url("/flaky"), timeout=10)
            self.assertGreaterEqual(r.elapsed.total_seconds(), 0.02)

    def test_fail_constructor_knob(self):
        ferry = Ferry("""
applications:
  - name: broken
    deployments:
      - {name: Broken, import_path: "builtin:echo", args: {fail_constructor: "model weights are corrupt"}}
""", ready=False)
        try:
            self.assertNotEqual(ferry.wait_exit(30), 0)
            self.assertIn("model weights are corrupt", ferry.stderr())
        finally:
            ferry.close()


class ShutdownTest(unittest.TestCase):
    def test_sigterm_finishes_requests_in_flight(self):
        ferry = Ferry("""
applications:
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: "builtin:busy", num_replicas: 2, max_ongoing_requests: 4, graceful_shutdown_timeout_s: 20}
""")
        try:
            pids = ferry.replica_pids()
            with cf.ThreadPoolExecutor(4) as pool:
                inflight = [pool.submit(requests.get, ferry.url("/slow?work_us=1500000"), timeout=30) for _ in range(4)]
                time.sleep(0.4)
                ferry.proc.send_signal(signal.SIGTERM)
                results = [f.result() for f in inflight]
            self.assertEqual([r.status_code for r in results], [200] * 4)
            self.assertEqual(ferry.wait_exit(30), 0)
            self.assertIn("ferry: stopped", ferry.stdout())
            for pid in pids:
                self.assertFalse(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z")
            with self.assertRaises(requests.exceptions.ConnectionError):
                requests.get(ferry.url("/slow"), timeout=5)
        finally:
            ferry.close()


class HelpTest(unittest.TestCase):
    def test_help_explains_every_flag(self):
        r = run_ferry(["--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("ferry run CONFIG", r.stdout)
        r = run_ferry(["run", "--help"])
        self.assertEqual(r.returncode, 0)
        for flag in ["--http-host", "--http-port", "--threads", "--log-level", "--run-dir"]:
            self.assertIn(flag, r.stdout)
        r = run_ferry(["run", "--bogus"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown option --bogus", r.stderr)
        r = run_ferry(["frobnicate"])
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main()
