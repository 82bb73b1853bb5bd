"""Starts the real ferry binary on a free port and talks to it over real HTTP.

Every wait here is bounded; every process started is stopped, even when a test fails.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import requests

FERRY_BIN = os.environ.get("FERRY_BIN") or os.path.join(os.path.dirname(__file__), "../../build/ferry")
SOURCE_DIR = os.environ.get("FERRY_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUILD_DIR = os.environ.get("FERRY_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")


class Ferry:
    """A `ferry run` process serving a config written to a temporary file (`env`: variables to add), or, with
    `target`, what `ferry run TARGET...` names (an import path and its arguments), run in `cwd`; or, with
    `argv`, ferry with those arguments (a `ferry start --foreground` node)."""

    def __init__(self, config_text=None, extra_args=(), ready=True, timeout=30, config_file=None, binary=None,
                 env=None, target=None, cwd=None, argv=None):
        self.dir = tempfile.TemporaryDirectory(prefix="ferry-test-")
        self.config_path = config_file or os.path.join(self.dir.name, "config.yaml")
        if config_file is None and target is None and argv is None:
            with open(self.config_path, "w") as f:
                f.write(config_text)
        self.stdout_lines = []
        self.stderr_lines = []
        self._lock = threading.Lock()
        command = argv or ["run", *(target or [self.config_path]), "--http-port", "0", "--admin-port", "0", *extra_args]
        self.proc = subprocess.Popen(
            [binary or FERRY_BIN, *command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, cwd=cwd,
            env={**os.environ, **env} if env else None)
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.port = None
        if ready:
            self.wait_ready(timeout)

    def _pump(self, stream, sink):
        for line in stream:
            with self._lock:
                sink.append(line.rstrip("\n"))

    def stdout(self):
        with self._lock:
            return "\n".join(self.stdout_lines)

    def stderr(self):
        with self._lock:
            return "\n".join(self.stderr_lines)

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"listening on http://[0-9.]+:(\d+)", self.stdout())
            a = re.search(r"admin API at (http://[0-9.]+:\d+)", self.stdout())
            # "ferry: ready", or with logging_config.encoding JSON a log line whose message is "ready"
            if m and a and ("ferry: ready" in self.stdout() or '"message": "ready"' in self.stdout()):
                self.port = int(m.group(1))
                self.admin = a.group(1)
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"ferry exited with {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"ferry not ready after {timeout}s:\n{self.stdout()}\n{self.stderr()}")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def replica_pids(self):
        """Pids of this node's replica processes (its direct children)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def wait_for(self, predicate, timeout=20, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.stderr()[-4000:]}")

    def wait_exit(self, timeout=30):
        """Waits for ferry to exit, then for its output to be read to the end (stdout()/stderr() are whole)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ferry did not exit in {timeout}s")
        for t in self._readers:
            t.join(timeout=5)
        return code

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """Stops ferry gracefully; when the body passed, a graceful stop must also exit 0."""
        try:
            code = self.stop() if self.proc.poll() is None else self.proc.returncode
        finally:
            self.close()
        if exc_type is None and code != 0:
            raise AssertionError(f"ferry exited with {code} on SIGTERM:\n{self.stderr()[-4000:]}")
        return False

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.dir.cleanup()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for peers that need a port number up front)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, timeout=60, what="condition"):
    """Polls `predicate` until it returns something true (returned) or `timeout` seconds pass (fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_ferry(args, timeout=60):
    """Runs ferry to completion (for commands that should fail fast)."""
    return subprocess.run([FERRY_BIN, *args], capture_output=True, text=True, timeout=timeout)


def raw_request(port, data, timeout=10, read_all=True):
    """Sends raw bytes and returns what the server answered before closing (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
                if not read_all:
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def replica_ongoing(ferry, deployment):
    """Requests on the replicas of `deployment` now, as the node's /metrics says (the router's count)."""
    import requests
    text = requests.get(ferry.admin + "/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if line.startswith("ferry_replica_ongoing_requests{") and f'deployment="{deployment}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_samples(ferry, name):
    """The samples named `name` on the node's /metrics now, as (labels dict, value) pairs."""
    import requests
    text = requests.get(ferry.admin + "/metrics", timeout=10).text
    out = []
    for line in text.splitlines():
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        labels = dict((k, v.encode().decode("unicode_escape"))
                      for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((labels, float(m.group(3))))
    return out


class Prometheus:
    """A real Prometheus (Debian's) scraping a node's admin /metrics every second, on a free port; `query`
    answers an instant PromQL query's first value (None: no answer or no result yet). A context manager."""

    def __init__(self, ferry):
        import tempfile
        self.work = tempfile.TemporaryDirectory(prefix="ferry-prom-")
        admin = ferry.admin.removeprefix("http://")
        config = os.path.join(self.work.name, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ferry\n"
                    f"    static_configs:\n      - targets: ['{admin}']\n")
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api/v1/query"
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.work.name}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(self, q):
        import requests
        try:
            r = requests.get(self.api, params={"query": q}, timeout=5).json()
        except (requests.RequestException, ValueError):
            return None
        result = r.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    def raw_query(self, q):
        import requests
        return requests.get(self.api, params={"query": q}, timeout=5).json()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.work.cleanup()


class Etcd:
    """etcd-server on free loopback ports, its data in a temporary directory; stop() and start() keep both."""

    def __init__(self, tls=None):
        """`tls`: {"ca", "cert", "key"} files (make_certs): etcd then serves HTTPS and requires client certificates."""
        self.dir = tempfile.mkdtemp(prefix="ferry-etcd-")
        self.proc = None
        self.tls = tls
        # A port picked free may be taken by another test before etcd binds it (tests run in parallel): then
        # etcd exits, and it starts again on other ports, with a fresh data directory.
        for attempt in range(3):
            self.client_port, self.peer_port = free_port(), free_port()
            if self.start(must=attempt == 2):
                return

    def start(self, must=True):
        """Starts etcd and waits until it answers; False (when not `must`) if it exited or did not answer."""
        client = self.base_url()
        peer = client.replace("https://", "http://").rsplit(":", 1)[0] + f":{self.peer_port}"
        self.log = open(os.path.join(self.dir, "etcd.log"), "a")
        self.proc = subprocess.Popen(self.command(client, peer), stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self._answers():
                return True
            time.sleep(0.1)
        self.stop()  # not left running when it does not answer
        if must:
            raise AssertionError(f"etcd did not answer at {self.base_url()}: see {self.dir}/etcd.log")
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)
        return False

    def command(self, client, peer):
        """etcd's command line, serving clients at `client` and its peer at `peer` (URLs)."""
        tls = []
        if self.tls:
            tls = ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"], "--trusted-ca-file", self.tls["ca"],
                   "--client-cert-auth"]
        return ["etcd", "--name", "t", "--data-dir", os.path.join(self.dir, "data"), "--listen-client-urls", client,
                "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"t={peer}", *tls]

    def base_url(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    def call(self, path, body, timeout=5):
        """POSTs `body` to etcd's JSON gateway (with the client certificate under TLS)."""
        kw = {"verify": self.tls["ca"], "cert": (self.tls["cert"], self.tls["key"])} if self.tls else {}
        return requests.post(f"{self.base_url()}{path}", json=body, timeout=timeout, **kw)

    def _answers(self):
        try:
            return self.call("/v3/kv/range", {"key": "AA=="}, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return f"{'https' if self.tls else 'etcd'}://127.0.0.1:{self.client_port}"


def make_certs(directory, names, ca="ca", ips=None):
    """A CA (DIRECTORY/CA.crt, .key) and, for each name, a certificate it signs for its IP in `ips` (default
    127.0.0.1; an IP SAN, for servers and clients alike): {"ca": ..., name: {"cert": ..., "key": ...}}. The
    commands are the ones docs/operations.md gives."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN={ca}")
    out = {"ca": os.path.join(directory, f"{ca}.crt")}
    for name in names:
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName = IP:{(ips or {}).get(name, '127.0.0.1')}\n"
                    "extendedKeyUsage = serverAuth, clientAuth\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        out[name] = {"cert": os.path.join(directory, f"{name}.crt"), "key": os.path.join(directory, f"{name}.key")}
    return out
