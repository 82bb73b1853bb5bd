"""Composition through deployment handles as a client sees it: a chain ingress -> A -> B, a fan-out, streams
through handles, back-pressure from a callee, cancellation down the chain, request ids per call, and config
errors for args that name no deployment or form a cycle."""
import os
import re
import socket
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

import requests

from harness import Ferry, run_ferry

CONFIG = """
http_options: {request_timeout_s: 30}
applications:
  - name: chain
    route_prefix: /chain
    deployments:
      - {name: Ingress, import_path: "builtin:call", args: {next: A}}
      - {name: A, import_path: "builtin:call", args: {next: B}}
      - {name: B, import_path: "builtin:echo", max_ongoing_requests: 20}
  - name: fan
    route_prefix: /fan
    deployments:
      - {name: Fan, import_path: "builtin:call", args: {fanout: [B, C, {deployment: B, application: chain}]}}
      - {name: B, import_path: "builtin:echo"}
      - {name: C, import_path: "builtin:busy", args: {work_us: 100}}
  - name: tight
    route_prefix: /tight
    deployments:
      - {name: Front, import_path: "builtin:call", args: {next: Slow}, max_ongoing_requests: 20}
      - {name: Slow, import_path: "builtin:busy", args: {work_us: 2000000}, max_ongoing_requests: 1,
         max_queued_requests: 0}
  - name: cold
    route_prefix: /cold
    deployments:
      - {name: Front, import_path: "builtin:call", args: {next: Sleeper}}
      - {name: Sleeper, import_path: "builtin:echo",
         autoscaling_config: {min_replicas: 0, initial_replicas: 0, max_replicas: 1, downscale_delay_s: 600}}
"""


class CompositionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG)

    def test_a_call_to_a_deployment_scaled_to_zero_starts_it(self):
        # Nothing runs Sleeper until the call: the call waits in Front's router, the node wakes the
        # controller, a replica starts, and the call is answered.
        r = requests.post(self.ferry.url("/cold/x"), data=b"wake up", timeout=60)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["next"]["body"], "wake up")
        metrics = requests.get(self.ferry.admin + "/metrics", timeout=10).text
        self.assertIn('ferry_deployment_cold_starts_total{application="cold",deployment="Sleeper"} 1', metrics)

    @classmethod
    def tearDownClass(cls):
        cls.ferry.stop()
        cls.ferry.close()

    def test_chain_forwards_the_request_and_nests_the_answers(self):
        r = requests.post(self.ferry.url("/chain/x/y?q=1"), data=b"payload", headers={"x-custom": "v"}, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        body = r.json()
        self.assertEqual(body["via"], "Ingress")
        self.assertEqual(body["next"]["via"], "A")
        echo = body["next"]["next"]
        self.assertEqual(echo["body"], "payload")
        self.assertEqual(echo["path"], "/chain/x/y")
        self.assertEqual(echo["query"], "q=1")
        self.assertEqual(echo["method"], "POST")
        self.assertEqual(echo["headers"]["x-custom"], "v")
        self.assertEqual(echo["headers"]["x-ferry-caller"], "chain/A")
        # The request id is kept, and each call has its own under it.
        rid = r.headers["x-request-id"]
        self.assertRegex(echo["request_id"], "^" + rid + r"\.\d+\.\d+$")

    def test_calls_per_caller_and_callee_in_metrics_and_status(self):
        for _ in range(3):
            self.assertEqual(requests.get(self.ferry.url("/chain/m"), timeout=30).status_code, 200)

        def counted(caller, callee):  # the replicas' stats are polled every second: wait for them
            text = requests.get(self.ferry.admin + "/metrics", timeout=10).text
            for line in text.splitlines():
                if (line.startswith("ferry_handle_requests_total{") and f'deployment="{caller}"' in line
                        and f'callee="{callee}"' in line and 'outcome="ok"' in line and float(line.split()[-1]) >= 3):
                    return True
            return False
        self.ferry.wait_for(lambda: counted("A", "chain/B"), what="A's calls to B in /metrics")
        self.ferry.wait_for(lambda: counted("Ingress", "chain/A"), what="Ingress's calls to A in /metrics")
        text = requests.get(self.ferry.admin + "/metrics", timeout=10).text
        self.assertIn('ferry_handle_request_latency_seconds_count{application="chain",deployment="Ingress"', text)
        status = requests.get(self.ferry.admin + "/api/serve/applications/", timeout=10).json()
        calls = status["applications"]["chain"]["deployments"]["A"]["calls"]["chain/B"]
        self.assertGreaterEqual(calls["requests"], 3)
        self.assertGreater(calls["mean_latency_ms"], 0)

    def test_callee_status_passes_through(self):
        r = requests.get(self.ferry.url("/chain/x?stream=-1"), timeout=30)
        self.assertEqual(r.status_code, 400)
        self.assertIn("stream, interval_ms", r.json()["next"]["next"]["error"])

    def test_fanout_calls_every_deployment(self):
        r = requests.post(self.ferry.url("/fan/z"), data=b"f", timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        body = r.json()
        self.assertEqual(body["via"], "Fan")
        self.assertEqual(sorted(body["fanout"]), ["B", "C"])  # the two B's share a name: the last answer stays
        self.assertEqual(body["fanout"]["B"]["body"], "f")
        self.assertEqual(body["fanout"]["C"]["work_us"], 100)

    def test_a_stream_passes_through_the_chain(self):
        headers = {"Accept": "text/event-stream"}
        with requests.get(self.ferry.url("/chain/s?stream=3&interval_ms=5"), headers=headers, stream=True,
                          timeout=30) as r:
            self.assertEqual(r.status_code, 200)
            self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
            self.assertEqual(r.headers["transfer-encoding"], "chunked")
            text = r.content.decode()
        self.assertEqual([e for e in text.split("\n\n") if e], [f"data: chunk {i}" for i in range(3)])
        # A large one, through two hops' windows.
        n, size = 256, 65536
        with requests.get(self.ferry.url(f"/chain/s?stream={n}&chunk_bytes={size}"), stream=True, timeout=60) as r:
            total = sum(len(b) for b in r.iter_content(1 << 20))
        self.assertEqual(total, n * size)

    def test_a_client_that_leaves_cancels_every_call_down_the_chain(self):
        s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=30)
        s.sendall(b"GET /chain/s?stream=2&interval_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"chunk 0\n" not in got:
            b = s.recv(4096)
            self.assertTrue(b, "the connection closed before the first chunk")
            got += b
        rid = [line.split(b": ")[1].decode() for line in got.split(b"\r\n") if line.startswith(b"x-request-id")][0]
        s.close()
        # Ingress's call to A and A's call to B are cancelled (each replica logs its own).
        self.ferry.wait_for(lambda: f"call {rid}." in self.ferry.stderr() and "to chain/A cancelled" in self.ferry.stderr(),
                            what="the ingress's call cancelled")
        self.ferry.wait_for(lambda: "to chain/B cancelled" in self.ferry.stderr(), what="A's call cancelled")

    def test_many_at_once_each_answer_reaches_its_own_client(self):
        # Past two calls in flight a caller's calls go the I/O thread's way and builtin:call answers later
        # (its thread goes back to reading requests): under 16 clients at once, whole answers and streams
        # through the chain must each still reach the client that asked.
        def whole(i):
            r = requests.post(self.ferry.url(f"/chain/w{i}?i={i}"), data=f"body {i}".encode(), timeout=60)
            return r.status_code, r.json()

        def streamed(i):
            with requests.get(self.ferry.url(f"/chain/s{i}?stream=3&interval_ms=20"), stream=True, timeout=60) as r:
                return r.status_code, r.content.decode()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(whole, range(160)))
            streams = list(pool.map(streamed, range(24)))
        for i, (status, body) in enumerate(answers):
            self.assertEqual(status, 200, body)
            self.assertEqual(body["via"], "Ingress")
            self.assertEqual(body["next"]["via"], "A")
            self.assertEqual(body["next"]["next"]["body"], f"body {i}")
            self.assertEqual(body["next"]["next"]["query"], f"i={i}")
        for status, text in streams:
            self.assertEqual(status, 200)
            self.assertEqual(text, "chunk 0\nchunk 1\nchunk 2\n")

    def test_clients_that_leave_at_once_cancel_their_calls(self):
        # Five streams held open at once (Ingress and A take five each, Ray's default max_ongoing_requests;
        # past two, calls go the I/O thread's way), then every client leaves: each one's calls are cancelled
        # down the chain.
        socks, rids = [], []
        try:
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=30)
                s.sendall(b"GET /chain/s?stream=2&interval_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(s)
            for s in socks:
                got = b""
                while b"chunk 0\n" not in got:
                    b = s.recv(4096)
                    self.assertTrue(b, "the connection closed before the first chunk")
                    got += b
                rids.append([line.split(b": ")[1].decode() for line in got.split(b"\r\n")
                             if line.startswith(b"x-request-id")][0])
        finally:
            for s in socks:
                s.close()
        for rid in rids:
            # Its call to A is rid.N, A's call to B rid.N.M.
            pattern = re.compile(rf"call {rid}\.\d+\.\d+ to chain/B cancelled")
            self.ferry.wait_for(lambda: pattern.search(self.ferry.stderr()), what=f"request {rid}'s call to B cancelled")

    def test_back_pressure_reaches_the_caller(self):
        # Slow takes one request at a time and queues none. A long request holds its slot (sent on a raw
        # socket, closed at the end, which cancels it down the chain); a short one then finds Slow full and
        # Front's call is shed with 503. Until the long one holds the slot, the short ones pass; a long one
        # that was itself shed is sent again.
        def send_long():
            s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=30)
            s.sendall(b"GET /tight?work_us=60000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.setblocking(False)
            return s
        long = send_long()
        shed = None
        try:
            for _ in range(600):
                try:
                    if long.recv(4096):  # answered: it was shed, not running
                        long.close()
                        long = send_long()
                        continue
                except BlockingIOError:
                    pass
                r = requests.get(self.ferry.url("/tight?work_us=1"), timeout=60)
                if r.status_code == 503:
                    shed = r.json()
                    break
                self.assertEqual(r.status_code, 200, r.text)
        finally:
            long.close()
        self.assertIsNotNone(shed, "no call was shed")
        self.assertEqual(shed["via"], "Front")
        self.assertEqual(shed["next"]["status"], 503)
        self.assertIn("tight/Slow is overloaded", shed["next"]["error"])


class CompositionConfigErrorsTest(unittest.TestCase):
    def check(self, config, expected):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.yaml")
            with open(path, "w") as f:
                f.write(config)
            r = run_ferry(["run", path, "--http-port", "0", "--admin-port", "0"])
        self.assertNotEqual(r.returncode, 0)
        for e in expected:
            self.assertIn(e, r.stderr)
        return r.stderr

    def test_args_naming_no_deployment(self):
        self.check("""applications:
  - name: a
    route_prefix: /a
    deployments:
      - {name: I, import_path: "builtin:call", args: {next: Missing}}
      - {name: J, import_path: "builtin:echo", args: {peer: {deployment: Nope}}}
""", ["bad.yaml:5:", "args.next: expected the name of a deployment of application \"a\"",
      "bad.yaml:6:", "args.peer: names deployment \"Nope\", which application \"a\" does not have"])

    def test_a_cycle(self):
        self.check("""applications:
  - name: a
    route_prefix: /a
    deployments:
      - {name: I, import_path: "builtin:call", args: {next: A}}
      - {name: A, import_path: "builtin:call", args: {next: B}}
      - {name: B, import_path: "builtin:call", args: {next: A}}
""", ["bad.yaml:6:", "form a cycle: A -> B -> A"])


if __name__ == "__main__":
    unittest.main()
