"""WebSocket sessions as clients see them, with Debian's websocket-client and with hand-made frames:
messages both ways, pings, closes from either side, refusals as plain HTTP answers, the message size
limit (1009), RFC 6455 violations (1002, 1007), a session holding its replica slot, a client that
vanishes, a replica that crashes mid-session (1011), the idle timeout and a draining node (1001)."""
import base64
import json
import os
import signal
import socket
import struct
import unittest

import requests
import websocket

from harness import Ferry, replica_ongoing, status_of

CONFIG = """
http_options: {websocket_max_message_bytes: 4096}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", args: {allow_abort: true}, max_ongoing_requests: 50}
  - name: single
    route_prefix: /single
    deployments:
      - {name: Single, import_path: "builtin:echo", max_ongoing_requests: 1, max_queued_requests: 0}
  - name: busy
    route_prefix: /busy
    deployments:
      - {name: Busy, import_path: "builtin:busy"}
"""


def handshake(port, path):
    """A WebSocket handshake by hand: the socket and the server's answer head (and body, when refused)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            break
        head += b
    return s, head


def frame(opcode, payload, mask=True, fin=True):
    """One client frame (RFC 6455 5.2), masked unless told otherwise."""
    n = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head = first + bytes([m | n])
    elif n < 65536:
        head = first + bytes([m | 126]) + struct.pack(">H", n)
    else:
        head = first + bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise ConnectionError("closed")
        out += b
    return out


def read_frame(s):
    """One server frame: (opcode, payload)."""
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", recv_exact(s, 8))[0]
    return b0 & 0x0F, recv_exact(s, n)


def read_close_code(s):
    """Reads frames until the server's close; its code."""
    while True:
        opcode, payload = read_frame(s)
        if opcode == 8:
            return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


class WebSocketTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG)
        cls.ws_url = f"ws://127.0.0.1:{cls.ferry.port}"

    @classmethod
    def tearDownClass(cls):
        cls.ferry.stop()
        cls.ferry.close()

    def connect(self, path):
        return websocket.create_connection(self.ws_url + path, timeout=20)

    def test_messages_both_ways_pings_and_a_normal_close(self):
        ws = self.connect("/echo/chat")
        ws.send("héllo")
        self.assertEqual(ws.recv(), "héllo")
        ws.send_binary(b"\x00\x01\xfe\xff")
        self.assertEqual(ws.recv(), b"\x00\x01\xfe\xff")
        big = "x" * 4000  # under the 4096-byte limit, several TCP reads
        ws.send(big)
        self.assertEqual(ws.recv(), big)
        ws.ping(b"are you there")
        opcode, f = ws.recv_data_frame(True)
        self.assertEqual(opcode, websocket.ABNF.OPCODE_PONG)
        self.assertEqual(f.data, b"are you there")
        rid = ws.getheaders()["x-request-id"]
        ws.close()
        self.ferry.wait_for(lambda: f"101" in self.ferry.stderr() and f"close 1000 request_id={rid}" in self.ferry.stderr(),
                            what="the session's access line")
        line = next(l for l in self.ferry.stderr().splitlines() if rid in l and "websocket" in l)
        self.assertIn("websocket 6 messages", line)
        metrics = requests.get(self.ferry.admin + "/metrics", timeout=10).text
        self.assertIn('ferry_websocket_sessions_closed_total{application="echo",route="/echo",code="1000"}', metrics)

    def test_a_fragmented_message_arrives_whole(self):
        s, head = handshake(self.ferry.port, "/echo/frag")
        self.assertEqual(status_of(head), 101)
        s.sendall(frame(0x1, b"hel", fin=False) + frame(0x0, b"lo ", fin=False) + frame(0x0, b"world"))
        self.assertEqual(read_frame(s), (0x1, b"hello world"))
        s.sendall(frame(0x8, struct.pack(">H", 1000)))
        self.assertEqual(read_close_code(s), 1000)
        s.close()

    def test_the_deployment_closes_the_session(self):
        ws = self.connect("/echo/x?close_after=2")
        ws.send("one")
        self.assertEqual(ws.recv(), "one")
        ws.send("two")
        self.assertEqual(ws.recv(), "two")
        opcode, f = ws.recv_data_frame(True)
        self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE)
        self.assertEqual(struct.unpack(">H", f.data[:2])[0], 1000)
        self.assertEqual(f.data[2:], b"close_after reached")
        ws.close()

    def test_a_refusal_is_a_plain_http_answer(self):
        s, head = handshake(self.ferry.port, "/echo/x?refuse=401")
        self.assertEqual(status_of(head), 401)
        length = int([l for l in head.decode().split("\r\n") if l.lower().startswith("content-length")][0].split(":")[1])
        body = json.loads(recv_exact(s, length))
        self.assertIn("refused", body["error"])
        s.close()
        # A deployment that takes no sessions: 403, and it says so.
        s, head = handshake(self.ferry.port, "/busy")
        self.assertEqual(status_of(head), 403)
        self.assertIn(b"takes no WebSocket sessions", head + s.recv(4096))
        s.close()
        with self.assertRaises(websocket.WebSocketBadStatusException) as e:
            self.connect("/echo/x?refuse=451")
        self.assertEqual(e.exception.status_code, 451)

    def test_an_oversized_message_closes_with_1009(self):
        s, head = handshake(self.ferry.port, "/echo/big")
        self.assertEqual(status_of(head), 101)
        s.sendall(frame(0x1, b"y" * 5000))
        self.assertEqual(read_close_code(s), 1009)
        s.close()
        self.ferry.wait_for(lambda: 'code="1009"' in requests.get(self.ferry.admin + "/metrics", timeout=10).text,
                            what="the 1009 counted")
        self.ferry.wait_for(lambda: "WebSocket session closed with 1009" in self.ferry.stderr(), what="its log line")

    def test_protocol_violations_close_with_the_rfc_codes(self):
        cases = [
            ("bad UTF-8 in a text message", frame(0x1, b"\xff\xfe\xfd"), 1007),
            ("an unmasked client frame", frame(0x1, b"hi", mask=False), 1002),
            ("a control frame over 125 bytes", frame(0x9, b"p" * 126), 1002),
            ("a fragmented control frame", frame(0x9, b"p", fin=False), 1002),
            ("an unknown opcode", frame(0x3, b"?"), 1002),
            ("a continuation with nothing to continue", frame(0x0, b"?"), 1002),
            ("reserved bits set", bytes([0xF1]) + frame(0x1, b"x")[1:], 1002),
        ]
        for what, data, code in cases:
            with self.subTest(what):
                s, head = handshake(self.ferry.port, "/echo/bad")
                self.assertEqual(status_of(head), 101)
                s.sendall(data)
                self.assertEqual(read_close_code(s), code)
                s.close()
        # Nothing else broke: a new session works.
        ws = self.connect("/echo/after")
        ws.send("still here")
        self.assertEqual(ws.recv(), "still here")
        ws.close()

    def test_a_session_holds_its_replica_slot_and_a_vanished_client_ends_it(self):
        s, head = handshake(self.ferry.port, "/single/a")
        self.assertEqual(status_of(head), 101)
        self.ferry.wait_for(lambda: replica_ongoing(self.ferry, "Single") == 1, what="the session counted as ongoing")
        # max_ongoing_requests 1 and no queue: a second session is shed.
        s2, head2 = handshake(self.ferry.port, "/single/b")
        self.assertEqual(status_of(head2), 503)
        s2.close()
        s.close()  # no close frame: the connection just ends
        self.ferry.wait_for(lambda: replica_ongoing(self.ferry, "Single") == 0, what="the vanished session to end")
        self.ferry.wait_for(lambda: "close 1006" in self.ferry.stderr(), what="the 1006 access line")

        def a_new_session_works():
            try:
                ws = self.connect("/single/c")
            except websocket.WebSocketBadStatusException:
                return False
            ws.send("ok")
            got = ws.recv()
            ws.close()
            return got == "ok"
        self.ferry.wait_for(a_new_session_works, what="the slot to be free again")

    def test_a_replica_that_crashes_mid_session_closes_it_with_1011(self):
        ws = self.connect("/echo/crash?abort_on=die")
        ws.send("fine")
        self.assertEqual(ws.recv(), "fine")
        ws.send("die")
        opcode, f = ws.recv_data_frame(True)
        self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE)
        self.assertEqual(struct.unpack(">H", f.data[:2])[0], 1011)
        ws.close()
        # The replica is replaced; sessions work again.
        def works():
            try:
                w = self.connect("/echo/again")
                w.send("back")
                ok = w.recv() == "back"
                w.close()
                return ok
            except (websocket.WebSocketException, OSError):
                return False
        self.ferry.wait_for(works, timeout=60, what="sessions after the crash")


class WebSocketLifetimeTest(unittest.TestCase):
    def test_an_idle_session_is_closed_and_a_draining_node_closes_sessions_with_1001(self):
        config = CONFIG.replace("{websocket_max_message_bytes: 4096}",
                                "{websocket_idle_timeout_s: 0.5, websocket_ping_interval_s: 0.2}")
        with Ferry(config) as ferry:
            url = f"ws://127.0.0.1:{ferry.port}/echo/idle"
            ws = websocket.create_connection(url, timeout=20)
            ws.send("one message, then silence")
            ws.recv()
            opcode, f = ws.recv_data_frame(True)  # pings are answered by the client library meanwhile
            while opcode == websocket.ABNF.OPCODE_PING:
                opcode, f = ws.recv_data_frame(True)
            self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE)
            self.assertEqual(struct.unpack(">H", f.data[:2])[0], 1001)
            self.assertIn(b"idle", f.data[2:])
            ws.close()

        with Ferry(CONFIG) as ferry:
            ws = websocket.create_connection(f"ws://127.0.0.1:{ferry.port}/echo/drain", timeout=20)
            ws.send("hi")
            ws.recv()
            ferry.proc.send_signal(signal.SIGTERM)
            opcode, f = ws.recv_data_frame(True)
            self.assertEqual(opcode, websocket.ABNF.OPCODE_CLOSE)
            self.assertEqual(struct.unpack(">H", f.data[:2])[0], 1001)
            ws.close()
            self.assertEqual(ferry.wait_exit(), 0)


if __name__ == "__main__":
    unittest.main()
