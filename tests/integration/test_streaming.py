"""Streamed responses as HTTP clients see them: chunked transfer encoding, Server-Sent Events, chunks
forwarded as they are produced, a client that leaves cancels the stream in the replica, request_timeout_s
bounding only the wait for the first byte, HTTP/1.0 clients, keep-alive after a stream, access lines."""
import json
import os
import socket
import unittest

import requests

from harness import Ferry, raw_request, replica_ongoing, status_of

CONFIG = """
http_options: {request_timeout_s: 1}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: 1, max_ongoing_requests: 20}
  - name: crashy
    route_prefix: /crashy
    deployments:
      - {name: Crashy, import_path: "builtin:echo", args: {allow_abort: true}}
  - name: via
    route_prefix: /via
    deployments:
      - {name: Call, import_path: "builtin:call", args: {next: Crashy}}
      - {name: Crashy, import_path: "builtin:echo", args: {allow_abort: true}}
"""


def ongoing(ferry):
    """The router's requests on replicas of echo/Echo, from /metrics."""
    return replica_ongoing(ferry, "Echo")


class StreamingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG)

    @classmethod
    def tearDownClass(cls):
        cls.ferry.stop()
        cls.ferry.close()

    def test_chunked_stream(self):
        with requests.get(self.ferry.url("/echo/s?stream=5"), stream=True, timeout=30) as r:
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.headers["transfer-encoding"], "chunked")
            self.assertNotIn("content-length", r.headers)
            self.assertTrue(r.headers["x-request-id"])
            lines = [line for line in r.iter_lines() if line]
        self.assertEqual(lines, [f"chunk {i}".encode() for i in range(5)])

    def test_server_sent_events(self):
        headers = {"Accept": "text/event-stream"}
        with requests.get(self.ferry.url("/echo/s?stream=3&interval_ms=5"), headers=headers, stream=True,
                          timeout=30) as r:
            self.assertEqual(r.status_code, 200)
            self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
            self.assertEqual(r.headers["cache-control"], "no-cache")
            text = r.content.decode()
        events = [e for e in text.split("\n\n") if e]
        self.assertEqual(events, [f"data: chunk {i}" for i in range(3)])

    def test_each_chunk_is_forwarded_as_it_is_produced_and_a_client_that_leaves_cancels(self):
        # The second chunk comes a minute after the first: the first must reach the client on its own.
        s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=30)
        s.sendall(b"GET /echo/s?stream=2&interval_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"chunk 0\n" not in got:
            b = s.recv(4096)
            self.assertTrue(b, "the connection closed before the first chunk")
            got += b
        self.assertIn(b"transfer-encoding: chunked", got)
        # The stream holds its slot (the controller's view lags by up to a tick).
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 1, what="the open stream counted as ongoing")
        s.close()
        # The replica stops producing and gives its slot back.
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 0, what="the cancelled stream to end in the replica")
        self.ferry.wait_for(lambda: "GET /echo/s 499" in self.ferry.stderr(), what="the 499 access line")

    def test_request_timeout_bounds_only_the_first_byte(self):
        # request_timeout_s is 1 s; the stream lasts longer than that and still completes.
        r = requests.get(self.ferry.url("/echo/s?stream=4&interval_ms=500"), timeout=30)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.text, "".join(f"chunk {i}\n" for i in range(4)))

    def test_keep_alive_after_a_stream_and_the_access_line(self):
        with requests.Session() as session:
            r = session.get(self.ferry.url("/echo/s?stream=2&chunk_bytes=1000"), timeout=30)
            self.assertEqual(len(r.content), 2000)
            rid = r.headers["x-request-id"]
            r = session.get(self.ferry.url("/echo/after"), timeout=30)
            self.assertEqual(r.json()["path"], "/echo/after")
        self.ferry.wait_for(lambda: f"stream 2 chunks 2000 bytes request_id={rid}" in self.ferry.stderr(),
                            what="the stream's access line")

    def test_http10_client_gets_the_raw_body_and_a_close(self):
        raw = raw_request(self.ferry.port, b"GET /echo/s?stream=3 HTTP/1.0\r\n\r\n", timeout=30)
        self.assertEqual(status_of(raw), 200)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertEqual(body, b"chunk 0\nchunk 1\nchunk 2\n")

    def test_bad_stream_arguments_are_a_400_not_a_stream(self):
        r = requests.get(self.ferry.url("/echo/s?stream=-1"), timeout=30)
        self.assertEqual(r.status_code, 400)
        self.assertIn("content-length", r.headers)
        self.assertIn("stream, interval_ms and chunk_bytes", r.json()["error"])

    def test_a_replica_that_crashes_mid_stream_cuts_the_body_short_and_nothing_else_breaks(self):
        for prefix in ("/crashy", "/via"):  # directly, and through a handle
            with self.subTest(prefix=prefix):
                raw = raw_request(self.ferry.port, f"GET {prefix}/s?stream=5&abort_after=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                                  .encode(), timeout=30)
                self.assertEqual(status_of(raw), 200)
                head, _, body = raw.partition(b"\r\n\r\n")
                self.assertIn(b"chunk 0\n", body)
                self.assertIn(b"chunk 1\n", body)
                self.assertNotIn(b"chunk 2", body)
                self.assertFalse(body.endswith(b"0\r\n\r\n"), "a broken stream must not end as a complete one")
                self.ferry.wait_for(lambda: "broke" in self.ferry.stderr(), what="the proxy's log line")
                # The replica is replaced and serves again; the other applications never noticed.
                self.ferry.wait_for(
                    lambda: requests.get(self.ferry.url(f"{prefix}/s?stream=2"), timeout=30).text ==
                    "chunk 0\nchunk 1\n", timeout=60, what="a replacement replica")
                self.assertEqual(requests.get(self.ferry.url("/echo/s?stream=1"), timeout=30).text, "chunk 0\n")

    def test_a_large_stream_passes_whole(self):
        # 64 MiB through a 256 KiB window: the producer waits for the client many times over.
        n, size = 1024, 65536
        total = 0
        with requests.get(self.ferry.url(f"/echo/s?stream={n}&chunk_bytes={size}"), stream=True, timeout=60) as r:
            for block in r.iter_content(1 << 20):
                total += len(block)
        self.assertEqual(total, n * size)


BODY_CONFIG = """
http_options: {body_stream_threshold_bytes: 65536, max_body_bytes: 4000000}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", max_ongoing_requests: 20}
  - name: batched
    route_prefix: /batched
    deployments:
      - {name: Batched, import_path: "builtin:busy", batching: {max_batch_size: 4, batch_wait_timeout_s: 0.001}}
"""


def fnv1a64(data):
    h = 14695981039346656037
    for c in data:
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


class StreamedBodyTest(unittest.TestCase):
    """Request bodies over body_stream_threshold_bytes (or chunked without a length) reach the replica as
    they arrive; max_body_bytes still bounds them, mid-stream too."""

    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(BODY_CONFIG)

    @classmethod
    def tearDownClass(cls):
        cls.ferry.stop()
        cls.ferry.close()

    def test_a_large_body_streams_to_the_deployment(self):
        data = os.urandom(3_000_000)
        r = requests.post(self.ferry.url("/echo/up?count_body=1"), data=data, timeout=60)
        self.assertEqual(r.status_code, 200, r.text)
        got = r.json()
        self.assertTrue(got["body_streamed"])
        self.assertEqual(got["body_bytes"], len(data))
        self.assertGreater(got["body_pieces"], 1)
        self.assertEqual(got["fnv1a64"], fnv1a64(data))
        # A small one still comes whole.
        small = requests.post(self.ferry.url("/echo/up?count_body=1"), data=b"abc", timeout=30).json()
        self.assertEqual((small["body_streamed"], small["body_bytes"], small["body_pieces"]), (False, 3, 1))

    def test_a_chunked_body_streams_and_body_reads_it_whole(self):
        def pieces():
            for i in range(50):
                yield (b"%04d" % i) * 1000
        r = requests.post(self.ferry.url("/echo/up?count_body=1"), data=pieces(), timeout=60)
        want = b"".join(pieces())
        self.assertEqual(r.json()["fnv1a64"], fnv1a64(want))
        self.assertTrue(r.json()["body_streamed"])
        # handle() that asks for body() gets it whole, streamed or not.
        r = requests.post(self.ferry.url("/echo/whole"), data=iter([b"hello ", b"streamed ", b"world"]), timeout=30)
        self.assertEqual(r.json()["body"], "hello streamed world")

    def test_a_batched_deployment_gets_the_streamed_body_whole(self):
        data = b"z" * 500_000
        r = requests.post(self.ferry.url("/batched"), data=data, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["body_bytes"], len(data))
        r = requests.post(self.ferry.url("/batched"), data=iter([b"a" * 100_000] * 3), timeout=30)
        self.assertEqual(r.json()["body_bytes"], 300_000)

    def test_a_body_over_max_body_bytes_mid_stream_is_413_and_cancels_the_request(self):
        def pieces():
            for _ in range(100):
                yield b"q" * 65536  # 6.5 MB against a 4 MB limit, no length given
        r = requests.post(self.ferry.url("/echo/up?count_body=1"), data=pieces(), timeout=60)
        self.assertEqual(r.status_code, 413)
        self.assertIn("max_body_bytes", r.json()["error"])
        self.ferry.wait_for(lambda: "body refused mid-stream" in self.ferry.stderr(), what="the proxy's log line")
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 0, what="the deployment's request to end")
        # A length over the limit is refused before anything is sent.
        raw = raw_request(self.ferry.port, b"POST /echo/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        self.assertEqual(status_of(raw), 413)

    def test_malformed_chunked_encoding_mid_body_is_a_400(self):
        head = b"POST /echo/up?count_body=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"10000\r\n" + b"a" * 0x10000 + b"\r\nzz-not-hex\r\n"
        raw = raw_request(self.ferry.port, head + body, timeout=30)
        self.assertEqual(status_of(raw), 400)
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 0, what="the deployment's request to end")

    def test_a_client_that_leaves_mid_body_cancels_the_request(self):
        s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=30)
        s.sendall(b"POST /echo/up?count_body=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n" +
                  b"x" * 200_000)
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 1, what="the request on its replica")
        s.close()
        self.ferry.wait_for(lambda: ongoing(self.ferry) == 0, what="the cancelled request to end")
        self.ferry.wait_for(lambda: "POST /echo/up 499" in self.ferry.stderr(), what="the 499 access line")

    def test_a_slow_reader_holds_the_client_back(self):
        # The deployment reads a piece every 20 ms: the client cannot be far ahead of it. The body is read
        # whole in the end, and nothing was lost on the way.
        data = os.urandom(1_500_000)
        r = requests.post(self.ferry.url("/echo/up?count_body=1&read_delay_ms=2"), data=data, timeout=120)
        self.assertEqual(r.json()["fnv1a64"], fnv1a64(data))


if __name__ == "__main__":
    unittest.main()
