#!/usr/bin/python3
"""bench/cluster: cluster mode's control plane on one machine, against a real etcd started here.

1. Leader failover: 3 nodes (`ferry start --cluster`, lease TTL 2 s), a 2-replica builtin:echo application
   (placed on two of the nodes); kill -9 the leader's node, then time (a) until a standby leads (etcd says
   so), (b) until the application answers through the new leader's proxy and (c) until it is RUNNING with
   2 replicas again (the dead node's replaced, the live one taken over). Repeated ROUNDS times (a fresh
   node replaces the killed one each round).
2. A worker node's loss: kill -9 a node that is not the leader and holds a replica; time until the
   application is RUNNING with 2 replicas again on the others.
3. A drain: `ferry drain` of a node holding a replica, timed until it returns (the replacement RUNNING
   elsewhere, the old replica out of every router and stopped).
4. etcd writes in steady state: the store's revision over IDLE_S seconds with the cluster idle and serving
   (lease keepalives are not writes; anything that bumps the revision is).
5. The cost of crossing nodes: a 1-replica application; wrk at one connection for 5 s against the proxy of
   the node that holds the replica (Unix socket) and against another node's proxy (TCP to it), alternated
   three times.

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
             str(self.http), "--admin-port", str(self.admin_port), "--lease-ttl-s", "2", "--log-level", "warning",
             "--resources", '{"CPU": 8}'],
            stdout=self.log, stderr=self.log)
        until = time.monotonic() + 30
        while time.monotonic() < until:
            try:
                requests.get(f"{self.admin}/api/ferry/nodes", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"node {name} did not start")

    def answers(self, path="/echo"):
        try:
            return requests.post(f"http://127.0.0.1:{self.http}{path}", data=b"x", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def placement(self, app="echo"):
        """{replica_id: node_id} of the application's RUNNING replicas when it is RUNNING, else None."""
        try:
            a = requests.get(f"{self.admin}/api/serve/applications/", timeout=2).json()["applications"].get(app)
        except (requests.RequestException, ValueError, KeyError):
            return None
        if not a or a["status"] != "RUNNING":
            return None
        return {r["replica_id"]: r["node_id"] for d in a["deployments"].values() for r in d["replicas"]
                if r["state"] == "RUNNING"}

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
    config_dir = None
    try:
        for i in range(3):
            nodes[f"n{i}"] = Node(etcd, f"n{i}")
        wait(lambda: etcd_leader(etcd))
        config_dir = tempfile.mkdtemp(prefix="ferry-bench-config-")  # outlives any one node
        path = os.path.join(config_dir, "echo.yaml")
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

        # Crossing nodes: one replica, entered through its own node's proxy and through another's.
        one = ECHO.replace("num_replicas: 2", "num_replicas: 1").replace("name: echo", "name: one").replace(
            "route_prefix: /echo", "route_prefix: /one")
        with open(path, "w") as f:
            f.write(ECHO + one.split("applications:\n", 1)[1])
        leader = etcd_leader(etcd)
        subprocess.run([FERRY, "deploy", path, "--address", nodes[leader].admin], check=True, capture_output=True)
        held = wait(lambda: (p := nodes[leader].placement("one")) and len(p) == 1 and p)
        holder = next(iter(held.values()))
        other = next(n for name, n in nodes.items() if name != holder)
        wait(lambda: other.answers("/one") and nodes[holder].answers("/one"))
        local, remote = [], []
        for _ in range(3):
            local.append(wrk(f"http://127.0.0.1:{nodes[holder].http}/one", 1, 5)["p50_us"])
            remote.append(wrk(f"http://127.0.0.1:{other.http}/one", 1, 5)["p50_us"])
        print(f"one connection, p50: through the replica's own node's proxy {statistics.median(local):.0f} us "
              f"(runs {local}), through another node's proxy over TCP {statistics.median(remote):.0f} us "
              f"(runs {remote}): crossing nodes adds {statistics.median(remote) - statistics.median(local):.0f} us")

        # A worker's loss: kill -9 a node (not the leader) that holds an echo replica.
        placed = wait(lambda: (p := nodes[leader].placement()) and len(p) == 2 and p)
        victim = next((n for n in placed.values() if n != leader), None)
        if victim:
            killed_at = time.monotonic()
            nodes[victim].proc.kill()
            wait(lambda: (p := nodes[leader].placement()) and len(p) == 2 and victim not in p.values())
            print(f"worker loss: {victim} killed; echo RUNNING with 2 replicas on the others after "
                  f"{time.monotonic() - killed_at:.2f} s (lease TTL 2 s)")
            nodes.pop(victim).close()
        # A drain: the node holding "one" gives it up (replacement first).
        held = wait(lambda: (p := nodes[leader].placement("one")) and len(p) == 1 and p)
        holder = next(iter(held.values()))
        started = time.monotonic()
        subprocess.run([FERRY, "drain", holder, "--address", nodes[leader].admin], check=True, capture_output=True)
        drained = time.monotonic() - started
        moved = wait(lambda: (p := nodes[leader].placement("one")) and len(p) == 1 and p)
        print(f"drain: ferry drain {holder} returned after {drained:.2f} s; the replica now runs on "
              f"{next(iter(moved.values()))}")

        # Back to three fresh, undrained nodes for the failover rounds.
        nodes.pop(holder).close()
        next_id = 3
        while len(nodes) < 3:
            nodes[f"n{next_id}"] = Node(etcd, f"n{next_id}")
            next_id += 1
        with open(path, "w") as f:
            f.write(ECHO)
        any_node = nodes[etcd_leader(etcd)]
        subprocess.run([FERRY, "deploy", path, "--address", any_node.admin], check=True, capture_output=True)

        elected, serving, restored = [], [], []
        for round_ in range(ROUNDS):
            old = etcd_leader(etcd)
            wait(lambda: (p := nodes[old].placement()) and len(p) == 2)
            killed_at = time.monotonic()
            nodes[old].proc.kill()
            new = wait(lambda: (l := etcd_leader(etcd)) and l != old and l)
            elected.append(time.monotonic() - killed_at)
            wait(lambda: nodes[new].answers())
            serving.append(time.monotonic() - killed_at)
            wait(lambda: (p := nodes[new].placement()) and len(p) == 2 and old not in p.values())
            restored.append(time.monotonic() - killed_at)
            print(f"round {round_ + 1}: {old} killed; {new} leads after {elected[-1]:.2f} s, "
                  f"echo answers through it after {serving[-1]:.2f} s, RUNNING with 2 replicas after "
                  f"{restored[-1]:.2f} s")
            nodes.pop(old).close()
            nodes[f"n{next_id}"] = Node(etcd, f"n{next_id}")  # back to three nodes
            next_id += 1
        print(f"failover, {ROUNDS} rounds: new leader after p50 {statistics.median(elected):.2f} s "
              f"(max {max(elected):.2f}); serving again after p50 {statistics.median(serving):.2f} s "
              f"(max {max(serving):.2f}); 2 replicas RUNNING again after p50 {statistics.median(restored):.2f} s "
              f"(max {max(restored):.2f}); lease TTL 2 s")
    finally:
        for n in nodes.values():
            n.close()
        etcd.close()
        if config_dir:
            shutil.rmtree(config_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
