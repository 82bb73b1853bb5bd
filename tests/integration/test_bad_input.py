"""Bad input never crashes or wedges the server: each case gets its answer (or a close), and a normal
request still works afterwards."""
import socket
import time
import unittest

import requests

from harness import Ferry, raw_request, status_of

CONFIG = """
http_options: {header_timeout_s: 1, max_body_bytes: 1024, request_timeout_s: 10}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo"}
"""


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG)

    @classmethod
    def tearDownClass(cls):
        code = cls.ferry.stop()
        cls.ferry.close()
        assert code == 0, code

    def tearDown(self):
        # After every bad input the server still answers.
        r = requests.get(self.ferry.url("/echo/still-alive"), timeout=10)
        self.assertEqual(r.status_code, 200)

    def assert_json_error(self, raw, status, fragment):
        self.assertEqual(status_of(raw), status, raw[:300])
        body = raw.split(b"\r\n\r\n", 1)[1]
        self.assertIn(b'"error"', body)
        self.assertIn(fragment.encode(), body)

    def test_garbage_bytes_get_400_and_a_close(self):
        raw = raw_request(self.ferry.port, b"\x00\x01\x02garbage\xff\xfe\r\n\r\n")
        self.assert_json_error(raw, 400, "malformed HTTP request")

    def test_bad_request_line(self):
        raw = raw_request(self.ferry.port, b"GET\r\n\r\n")
        self.assertEqual(status_of(raw), 400)

    def test_header_block_over_16_kib_is_431(self):
        big = b"x-big: " + b"a" * (17 * 1024) + b"\r\n"
        raw = raw_request(self.ferry.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        self.assert_json_error(raw, 431, "16384 bytes")

    def test_body_over_max_body_bytes_is_413(self):
        r = requests.post(self.ferry.url("/echo"), data=b"x" * 2048, timeout=10)
        self.assertEqual(r.status_code, 413)
        self.assertIn("max_body_bytes", r.json()["error"])
        # Chunked bodies are counted too.
        def chunks():
            for _ in range(8):
                yield b"y" * 512
        try:
            r = requests.post(self.ferry.url("/echo"), data=chunks(), timeout=10)
            self.assertEqual(r.status_code, 413)
        except requests.exceptions.ConnectionError:
            pass  # the server may close while the client is still sending; it must not answer 200
        # A body just under the limit passes.
        r = requests.post(self.ferry.url("/echo"), data=b"z" * 1000, timeout=10)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(len(r.json()["body"]), 1000)

    def test_unknown_method_is_501(self):
        raw = raw_request(self.ferry.port, b"FROB /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assert_json_error(raw, 501, "FROB")

    def test_standard_methods_pass_through(self):
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]:
            r = requests.request(method, self.ferry.url("/echo/m"), timeout=10)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.json()["method"], method)

    def test_slow_client_is_closed_after_the_header_timeout(self):
        s = socket.create_connection(("127.0.0.1", self.ferry.port), timeout=15)
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.time()
        data = s.recv(1024)  # blocks until the server closes
        waited = time.time() - started
        s.close()
        self.assertEqual(data, b"")
        self.assertLess(waited, 14)  # closed by the server (header_timeout_s: 1), not by our socket timeout

    def test_many_idle_connections_do_not_block_others(self):
        idle = [socket.create_connection(("127.0.0.1", self.ferry.port), timeout=5) for _ in range(50)]
        try:
            r = requests.get(self.ferry.url("/echo/busy-neighbours"), timeout=10)
            self.assertEqual(r.status_code, 200)
        finally:
            for s in idle:
                s.close()

    def test_truncated_body_then_close(self):
        raw = raw_request(self.ferry.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
                          timeout=3)
        self.assertEqual(raw, b"")

    def test_bad_content_length(self):
        raw = raw_request(self.ferry.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        self.assertEqual(status_of(raw), 400)

    def test_absolute_form_and_star_targets(self):
        raw = raw_request(self.ferry.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(status_of(raw), 400)


if __name__ == "__main__":
    unittest.main()
