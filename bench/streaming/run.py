#!/usr/bin/python3
"""bench/streaming: what a streamed response costs, on this machine, through the real ferry binary.

1. Delivery: builtin:echo streams chunks stamped with the wall-clock time they were produced
   (?stream=N&interval_ms=1&stamp=1); a client reads them as they come and records now - stamp. Direct (the
   proxy -> echo) and through one handle (the proxy -> builtin:call -> echo). The client is Python: its own
   wake-up is in the figure, so the figure is an upper bound.
2. Idle streams: N clients each hold an SSE stream that produces nothing for minutes; the node's and the
   replicas' resident memory (RSS, from /proc) before and with them open, per stream.
3. A large stream: 1 GiB through the proxy, read as fast as the client can; RSS sampled while it flows.

Usage: bench/streaming/run.py [IDLE_STREAMS]   (default 200; needs a built ferry)
"""
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


def main():
    port = free_port()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "ferry.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
http_options: {{host: 127.0.0.1, port: {port}, request_timeout_s: 30}}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {{name: Echo, import_path: "builtin:echo", max_ongoing_requests: {IDLE + 10}}}
  - name: via
    route_prefix: /via
    deployments:
      - {{name: Call, import_path: "builtin:call", args: {{next: Echo}}, max_ongoing_requests: 20}}
      - {{name: Echo, import_path: "builtin:echo", max_ongoing_requests: 20}}
""")
    node = subprocess.Popen([FERRY, "run", cfg, "--log-level", "warning"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        print(f"# machine: {os.cpu_count()} cores; ferry {FERRY}")
        for name, path in [("direct", "/echo/s"), ("one handle hop", "/via/s")]:
            delivery(port, f"{path}?stream=200&interval_ms=1&stamp=1", 200)  # warm-up
            lat = delivery(port, f"{path}?stream=3000&interval_ms=1&stamp=1", 3000)
            q = statistics.quantiles(lat, n=100)
            print(f"delivery {name}: {len(lat)} chunks, p50 {q[49]:.0f} us, p90 {q[89]:.0f} us, p99 {q[98]:.0f} us")

        pids = tree(node.pid)
        before = rss_kib(pids)
        streams = [open_stream(port, "/echo/s?stream=2&interval_ms=600000", True) for _ in range(IDLE)]
        for s in streams:  # each has its head and first event: the stream is open end to end
            got = b""
            while b"chunk 0" not in got:
                got += s.recv(4096)
        time.sleep(1)
        during = rss_kib(tree(node.pid))
        per = (during - before) * 1024 / IDLE
        print(f"idle SSE streams: {IDLE} open; RSS node+replicas {before / 1024:.1f} MiB -> {during / 1024:.1f} MiB: "
              f"{per / 1024:.1f} KiB per stream")
        for s in streams:
            s.close()
        time.sleep(2)

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
    finally:
        node.terminate()
        node.wait(30)


if __name__ == "__main__":
    main()
