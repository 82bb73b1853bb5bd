#!/usr/bin/python3
"""bench/streaming: what a streamed response costs, on this machine, through the real ferry binary.

1. Delivery: builtin:echo streams chunks stamped with the wall-clock time they were produced
   (?stream=N&interval_ms=1&stamp=1); a client reads them as they come and records now - stamp. Direct (the
   proxy -> echo) and through one handle (the proxy -> builtin:call -> echo). The client is Python: its own
   wake-up is in the figure, so the figure is an upper bound.
2. Idle streams: N clients each hold an SSE stream that produces nothing for minutes; the node's and the
   replicas' resident memory (RSS, from /proc) before and with them open, per stream.
3. A large stream: 1 GiB through the proxy, read as fast as the client can; RSS sampled while it flows.
4. A large upload: 1 GiB sent to echo's ?count_body=1 (a streamed request body), RSS sampled meanwhile.
5. WebSocket: a message's round trip (client -> proxy -> echo's session -> back), and N idle sessions'
   memory, as for SSE streams.
The peer: the same SSE and WebSocket endpoints in Starlette under uvicorn (uvloop, httptools, websockets;
peer_app.py), measured the same way, one process (uvicorn's default).

Usage: bench/streaming/run.py [IDLE_STREAMS]   (default 200; needs a built ferry; 10000 needs
`ulimit -n` above 10,100 for the client and the node)
"""
import base64
import resource
import struct
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
FERRY = os.environ.get("FERRY_BIN", os.path.join(ROOT, "build/ferry"))
IDLE = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        except (OSError, AttributeError):
            pass
    return total


def tree(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [int(p) for p in out]


def open_stream(port, path, accept_sse=False, close=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    extra = ("Accept: text/event-stream\r\n" if accept_sse else "") + ("Connection: close\r\n" if close else "")
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    return s


def ws_open(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_frame(payload):
    key = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def ws_round_trips(port, n):
    s = ws_open(port, "/echo/ws")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    msg = ws_frame(b"x" * 32)
    for _ in range(n):
        t = time.perf_counter_ns()
        s.sendall(msg)
        got = b""
        while len(got) < 34:
            got += s.recv(64)
        lat.append((time.perf_counter_ns() - t) / 1000)
    s.close()
    return lat


def idle(node, port, opener, what):
    before = rss_kib(tree(node.pid))
    time.sleep(0.5)
    opened = [opener() for _ in range(IDLE)]
    time.sleep(2)
    during = rss_kib(tree(node.pid))
    per = (during - before) * 1024 / IDLE
    print(f"idle {what}: {IDLE} open; RSS of the server processes {before / 1024:.1f} MiB -> {during / 1024:.1f} MiB: "
          f"{per / 1024:.1f} KiB per {what.split()[-1][:-1]}")
    for s in opened:
        s.close()
    time.sleep(3)


def sse_stream(port):
    s = open_stream(port, "/echo/s?stream=2&interval_ms=600000", True)
    got = b""
    while b"chunk 0" not in got:  # its head and first event: the stream is open end to end
        got += s.recv(4096)
    return s


def delivery(port, path, n):
    s = open_stream(port, path)
    buf = b""
    lat = []
    while len(lat) < n:
        b = s.recv(65536)
        if not b:
            break
        now = time.time_ns()
        buf += b
        for m in re.finditer(rb"t=(\d+)", buf):
            lat.append((now - int(m.group(1))) / 1000)
        buf = buf[buf.rfind(b"\n") + 1:]
    s.close()
    return lat


def start_node(extra_apps=""):
    port = free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "ferry.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
http_options: {{host: 127.0.0.1, port: {port}, request_timeout_s: 30, max_body_bytes: {(1 << 30) + 1}}}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {{name: Echo, import_path: "builtin:echo", max_ongoing_requests: {IDLE + 10}, max_queued_requests: 10}}
  - name: via
    route_prefix: /via
    deployments:
      - {{name: Call, import_path: "builtin:call", args: {{next: Echo}}, max_ongoing_requests: 20}}
      - {{name: Echo, import_path: "builtin:echo", max_ongoing_requests: 20}}
""")
    node = subprocess.Popen([FERRY, "run", cfg, "--log-level", "warning"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return node, wait_listening(port)


def wait_listening(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(1)
    return port


def start_peer():
    port = free_port()
    node = subprocess.Popen([sys.executable, "-m", "uvicorn", "peer_app:app", "--app-dir", os.path.dirname(__file__),
                             "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
                             "--ws-ping-interval", "20", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return node, wait_listening(port)


def stop_node(node):
    node.terminate()
    node.wait(60)


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"# machine: {os.cpu_count()} cores; ferry {FERRY}")
    # Idle streams and sessions each on a fresh node: memory freed by one would hide the other's.
    node, port = start_node()
    try:
        idle(node, port, lambda: sse_stream(port), "SSE streams")
    finally:
        stop_node(node)
    node, port = start_node()
    try:
        idle(node, port, lambda: ws_open(port, "/echo/ws"), "WebSocket sessions")
    finally:
        stop_node(node)
    for what, opener in [("SSE streams", sse_stream), ("WebSocket sessions", lambda p: ws_open(p, "/echo/ws"))]:
        node, port = start_peer()
        try:
            idle(node, port, lambda: opener(port), f"peer (uvicorn) {what}")
            if what.startswith("WebSocket"):
                ws_round_trips(port, 200)
                q = statistics.quantiles(ws_round_trips(port, 5000), n=100)
                print(f"peer (uvicorn) WebSocket round trip: p50 {q[49]:.0f} us, p90 {q[89]:.0f} us, p99 {q[98]:.0f} us")
        finally:
            stop_node(node)
    node, port = start_node()
    try:
        for name, path in [("direct", "/echo/s"), ("one handle hop", "/via/s")]:
            delivery(port, f"{path}?stream=200&interval_ms=1&stamp=1", 200)  # warm-up
            lat = delivery(port, f"{path}?stream=3000&interval_ms=1&stamp=1", 3000)
            q = statistics.quantiles(lat, n=100)
            print(f"delivery {name}: {len(lat)} chunks, p50 {q[49]:.0f} us, p90 {q[89]:.0f} us, p99 {q[98]:.0f} us")
        ws_round_trips(port, 200)  # warm-up
        q = statistics.quantiles(ws_round_trips(port, 5000), n=100)
        print(f"WebSocket round trip (32-byte text, echoed): p50 {q[49]:.0f} us, p90 {q[89]:.0f} us, p99 {q[98]:.0f} us")

        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(tree(node.pid)))
                time.sleep(0.05)
        base = rss_kib(tree(node.pid))
        t = threading.Thread(target=sample)
        t.start()
        start = time.time()
        s = open_stream(port, f"/echo/s?stream=1024&chunk_bytes={1 << 20}", close=True)
        total = 0  # bytes on the wire: the body and its chunked framing
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            total += len(b)
        took = time.time() - start
        stop.set()
        t.join()
        s.close()
        print(f"1 GiB stream: {total / (1 << 30):.3f} GiB in {took:.2f} s ({total / took / 1e6:.0f} MB/s); "
              f"RSS node+replicas {base / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB while it flowed")

        # A 1 GiB upload, read by the deployment as it arrives.
        peak[0] = 0
        stop.clear()
        t = threading.Thread(target=sample)
        t.start()
        base = rss_kib(tree(node.pid))
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        size = 1 << 30
        s.sendall(f"POST /echo/up?count_body=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                  "Connection: close\r\n\r\n".encode())
        block = b"u" * (1 << 20)
        start = time.time()
        for _ in range(size // len(block)):
            s.sendall(block)
        answer = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            answer += b
        took = time.time() - start
        stop.set()
        t.join()
        s.close()
        ok = b'"body_bytes":1073741824' in answer
        print(f"1 GiB upload (streamed body{'' if ok else ', NOT whole'}): {took:.2f} s ({size / took / 1e6:.0f} MB/s); "
              f"RSS node+replicas {base / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB while it flowed")
    finally:
        stop_node(node)


if __name__ == "__main__":
    main()
