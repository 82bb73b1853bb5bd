#!/usr/bin/python3
"""bench/cluster: cluster mode's control plane on one machine, against a real etcd started here.

1. Leader failover: 3 nodes (`ferry start --cluster`, lease TTL 2 s), a 2-replica builtin:echo application;
   kill -9 the leader's node, then time (a) until a standby leads (etcd says so) and (b) until the
   application answers through the new leader's proxy. Repeated ROUNDS times (a fresh node replaces the
   killed one each round).
2. etcd writes in steady state: the store's revision over IDLE_S seconds with the cluster idle and serving
   (lease keepalives are not writes; anything that bumps the revision is).
3. The cost of crossing nodes: wrk at one connection for 5 s against the leader's proxy (its own replicas,
   over Unix sockets) and against a standby's proxy (the same replicas, over TCP), alternated three times.

Usage: bench/cluster/run.py [ROUNDS] [IDLE_S]   (needs a built ferry, etcd-server and wrk)
"""
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import FERRY, ROOT, free_port, wrk  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import Etcd  # noqa: E402  (etcd-server on free loopback ports, as the cluster tests start it)

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
IDLE_S = int(sys.argv[2]) if len(sys.argv) > 2 else 30
ECHO = """applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: 2
"""


def etcd_post(etcd, path, body):
    return requests.post(f"http://127.0.0.1:{etcd.client_port}{path}", json=body, timeout=5).json()


def etcd_revision(etcd):
    return int(etcd_post(etcd, "/v3/kv/range", {"key": base64.b64encode(b"/ferry/leader").decode()})["header"]["revision"])


def etcd_leader(etcd):
    kvs = etcd_post(etcd, "/v3/kv/range", {"key": base64.b64encode(b"/ferry/leader").decode()}).get("kvs", [])
    return json.loads(base64.b64decode(kvs[0]["value"]))["node_id"] if kvs else None


class Node:
    def __init__(self, etcd, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"ferry-bench-{name}-")
        self.http, self.admin_port = free_port(), free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log = open(os.path.join(self.dir, "node.log"), "w")
        self.proc = subprocess.Popen(
            [FERRY, "start", "--foreground", "--state-dir", os.path.join(self.dir, "state"), "--cluster",
             etcd.url, "--node-name", name, "--address", "127.0.0.1", "--http-port",
             str(self.http), "--admin-port", str(self.admin_port), "--lease-ttl-s", "2", "--log-level", "warning"],
            stdout=self.log, stderr=self.log)
        until = time.monotonic() + 30
        while time.monotonic() < until:
            try:
                requests.get(f"{self.admin}/api/ferry/nodes", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"node {name} did not start")

    def answers(self):
        try:
            return requests.post(f"http://127.0.0.1:{self.http}/echo", data=b"x", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait(predicate, timeout=60, step=0.01):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError("timed out")


def main():
    etcd = Etcd()
    nodes = {}
    try:
        for i in range(3):
            nodes[f"n{i}"] = Node(etcd, f"n{i}")
        wait(lambda: etcd_leader(etcd))
        path = os.path.join(next(iter(nodes.values())).dir, "echo.yaml")
        with open(path, "w") as f:
            f.write(ECHO)
        any_node = next(iter(nodes.values()))
        subprocess.run([FERRY, "deploy", path, "--address", any_node.admin], check=True, capture_output=True)
        wait(lambda: nodes[etcd_leader(etcd)].answers())

        # Steady state: nothing to do, everything serving.
        before = etcd_revision(etcd)
        time.sleep(IDLE_S)
        writes = etcd_revision(etcd) - before
        print(f"steady state: {writes} etcd writes in {IDLE_S} s with 3 nodes and 2 replicas "
              f"({writes / IDLE_S:.2f}/s; lease keepalives are not writes)")

        leader = etcd_leader(etcd)
        standby = next(n for name, n in nodes.items() if name != leader)
        wait(lambda: standby.answers())
        local, remote = [], []
        for _ in range(3):
            local.append(wrk(f"http://127.0.0.1:{nodes[leader].http}/echo", 1, 5)["p50_us"])
            remote.append(wrk(f"http://127.0.0.1:{standby.http}/echo", 1, 5)["p50_us"])
        print(f"one connection, p50: through the leader's proxy {statistics.median(local):.0f} us "
              f"(runs {local}), through a standby's proxy over TCP {statistics.median(remote):.0f} us (runs {remote}): "
              f"crossing nodes adds {statistics.median(remote) - statistics.median(local):.0f} us")

        elected, serving = [], []
        next_id = 3
        for round_ in range(ROUNDS):
            old = etcd_leader(etcd)
            killed_at = time.monotonic()
            nodes[old].proc.kill()
            new = wait(lambda: (l := etcd_leader(etcd)) and l != old and l)
            elected.append(time.monotonic() - killed_at)
            wait(lambda: nodes[new].answers())
            serving.append(time.monotonic() - killed_at)
            print(f"round {round_ + 1}: {old} killed; {new} leads after {elected[-1]:.2f} s, "
                  f"echo answers through it after {serving[-1]:.2f} s")
            nodes.pop(old).close()
            nodes[f"n{next_id}"] = Node(etcd, f"n{next_id}")  # back to three nodes
            next_id += 1
        print(f"failover, {ROUNDS} rounds: new leader after p50 {statistics.median(elected):.2f} s "
              f"(max {max(elected):.2f}); serving again after p50 {statistics.median(serving):.2f} s "
              f"(max {max(serving):.2f}); lease TTL 2 s")
    finally:
        for n in nodes.values():
            n.close()
        etcd.close()


if __name__ == "__main__":
    main()
