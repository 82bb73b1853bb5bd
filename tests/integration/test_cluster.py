"""Cluster mode on one machine: a real etcd (started here) and ferry nodes started with --cluster, each its
own process on loopback. What must hold: one node leads (etcd election) and the others forward the
controller's endpoints to it; every node's proxy serves every application (the leader's endpoint sets go
through etcd, its replicas are reached over TCP); the desired state lives in etcd, so when the leader's node dies (kill -9) a
standby leads within the lease TTL plus a step and brings every application back to RUNNING; `ferry nodes`
and the status say where things run; a node whose name is taken cannot join; a leader that loses etcd
keeps serving, and leads again when etcd is back; a leader frozen past its lease finds another leader when
it thaws and stops what it ran.
"""
import os
import shutil
import signal
import tempfile
import time
import unittest

import requests

from harness import Etcd, Ferry, run_ferry, wait_until

ECHO = """applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: 2
"""


class Node(Ferry):
    def __init__(self, etcd, name, *extra):
        self.name = name
        self.state_dir = tempfile.mkdtemp(prefix=f"ferry-{name}-")
        super().__init__(argv=["start", "--foreground", "--state-dir", self.state_dir, "--cluster", etcd.url,
                               "--node-name", name, "--address", "127.0.0.1", "--http-port", "0", "--admin-port", "0",
                               "--lease-ttl-s", "2", *extra])

    def close(self):
        super().close()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def api(self, path, method="GET", **kw):
        return requests.request(method, f"{self.admin}{path}", timeout=30, **kw)

    def nodes(self):
        r = self.api("/api/ferry/nodes")
        r.raise_for_status()
        return {n["node_id"]: n for n in r.json()["nodes"]}

    def leader(self):
        for n in self.nodes().values():
            if n["leader"]:
                return n["node_id"]
        return None


def running(node, app="echo", replicas=2):
    """The status (as `node` answers it) once `app` runs `replicas` RUNNING replicas, else None."""
    try:
        s = node.api("/api/serve/applications/").json()
    except (requests.RequestException, ValueError):
        return None
    a = s.get("applications", {}).get(app)
    if not a or a["status"] != "RUNNING":
        return None
    reps = [r for d in a["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"]
    return s if len(reps) == replicas else None


def answers(node, body):
    try:
        r = requests.post(node.url("/echo"), data=body, timeout=5)
        return r.status_code == 200 and r.json()["body"] == body.decode()
    except (requests.RequestException, ValueError):
        return False


class ClusterTest(unittest.TestCase):
    def setUp(self):
        self.etcd = Etcd()
        self.nodes = []

    def tearDown(self):
        for n in self.nodes:
            n.close()
        self.etcd.close()

    def start_nodes(self, names):
        for name in names:
            self.nodes.append(Node(self.etcd, name))
        by_name = {n.name: n for n in self.nodes}
        leader = wait_until(lambda: self.nodes[0].leader(), timeout=20, what="a leader")
        return by_name[leader], [n for n in self.nodes if n.name != leader]

    def test_the_leader_dies_and_a_standby_brings_the_applications_back(self):
        leader, standbys = self.start_nodes(["n1", "n2", "n3"])
        nodes = standbys[0].nodes()
        self.assertEqual(sorted(nodes), ["n1", "n2", "n3"])
        self.assertTrue(all(n["state"] == "ALIVE" for n in nodes.values()))
        self.assertEqual([n for n in nodes.values() if n["leader"]][0]["node_id"], leader.name)

        # Deployed through a standby: its admin API hands it to the leader.
        with open(os.path.join(standbys[0].dir.name, "echo.yaml"), "w") as f:
            f.write(ECHO)
        r = run_ferry(["deploy", f.name, "--address", standbys[0].admin])
        self.assertEqual(r.returncode, 0, r.stderr)
        status = wait_until(lambda: running(standbys[1]), timeout=60, what="echo RUNNING")
        self.assertEqual(status["controller_info"]["node_id"], leader.name)
        for d in status["applications"]["echo"]["deployments"].values():
            for rep in d["replicas"]:
                self.assertEqual((rep["node_id"], rep["node_ip"]), (leader.name, "127.0.0.1"))
        self.assertEqual(requests.post(leader.url("/echo"), data=b"x", timeout=10).json()["body"], "x")
        # Every node's proxy serves it: the standbys route by the leader's endpoint sets (from etcd) to its
        # replicas over TCP.
        for n in standbys:
            wait_until(lambda: answers(n, b"s"), timeout=30, what=f"echo through {n.name}'s proxy")

        # kill -9 the leader's node: a standby leads once its lease lapses, and the state it reads from etcd
        # brings echo back, on the new leader's node.
        killed_at = time.monotonic()
        leader.proc.kill()
        leader.proc.wait()
        survivor = standbys[0]
        new_leader = wait_until(lambda: (l := survivor.leader()) and l != leader.name and l, timeout=30,
                                what="a new leader")
        took = time.monotonic() - killed_at
        self.assertLess(took, 15, "a standby leads within the lease TTL (2 s) and a step, on an idle machine")
        by_name = {n.name: n for n in standbys}
        status = wait_until(lambda: running(by_name[new_leader]), timeout=60, what="echo RUNNING again")
        self.assertEqual(status["controller_info"]["node_id"], new_leader)
        self.assertEqual(requests.post(by_name[new_leader].url("/echo"), data=b"y", timeout=10).json()["body"], "y")
        other = [n for n in standbys if n.name != new_leader][0]
        wait_until(lambda: answers(other, b"z"), timeout=30, what="echo through the other standby's proxy again")
        nodes = survivor.nodes()
        self.assertEqual(nodes[leader.name]["state"], "DEAD")
        self.assertTrue(nodes[new_leader]["leader"])
        # The config and history came through etcd: `ferry config` on any node shows echo.
        r = run_ferry(["config", "--address", survivor.admin])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("builtin:echo", r.stdout)
        out = run_ferry(["nodes", "--address", survivor.admin]).stdout
        self.assertRegex(out, rf"{leader.name}\s+DEAD")
        self.assertRegex(out, rf"{new_leader}\s+ALIVE\s+yes")

    def test_a_leader_that_was_frozen_past_its_lease_finds_another_leader_and_stops_its_replicas(self):
        # SIGSTOP freezes the leader's node (as a long GC pause or a cut network would): its lease lapses, a
        # standby leads and starts echo. Thawed, the old leader learns it was deposed, finds the other
        # leader, and stops the replicas it ran; the desired state stays the new leader's.
        leader, (standby,) = self.start_nodes(["p1", "p2"])
        with open(os.path.join(standby.dir.name, "echo.yaml"), "w") as f:
            f.write(ECHO)
        self.assertEqual(run_ferry(["deploy", f.name, "--address", standby.admin]).returncode, 0)
        wait_until(lambda: running(leader), timeout=60, what="echo RUNNING on the first leader")
        old_pids = leader.replica_pids()
        self.assertEqual(len(old_pids), 2)
        os.kill(leader.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: standby.leader() == standby.name, timeout=30, what="the standby to lead")
            wait_until(lambda: running(standby), timeout=60, what="echo RUNNING on the new leader")
            wait_until(lambda: answers(standby, b"q"), timeout=30, what="echo through the new leader")
        finally:
            os.kill(leader.proc.pid, signal.SIGCONT)
        wait_until(lambda: not leader.replica_pids(), timeout=60, what="the old leader to stop its replicas")
        self.assertIn("leads the cluster; node p1 stops the replicas it ran as the leader", leader.stdout())
        self.assertEqual(standby.leader(), standby.name)
        self.assertTrue(running(standby))
        # Its admin API now forwards to the new leader.
        r = leader.api("/api/serve/applications/")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers.get("x-ferry-leader"), standby.admin)
        self.assertEqual(r.json()["controller_info"]["node_id"], standby.name)

    def test_a_taken_name_cannot_join_and_bad_flags_are_refused(self):
        self.start_nodes(["only"])
        state = tempfile.mkdtemp(prefix="ferry-twin-")
        try:
            r = run_ferry(["start", "--foreground", "--state-dir", state, "--cluster", self.etcd.url, "--node-name",
                           "only", "--http-port", "0", "--admin-port", "0"], timeout=60)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn('a live node named "only" is already in the cluster', r.stderr + r.stdout)
        finally:
            shutil.rmtree(state, ignore_errors=True)
        r = run_ferry(["start", "--foreground", "--cluster", "etcd://", "--http-port", "0"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--cluster: no etcd endpoint", r.stderr)
        r = run_ferry(["start", "--foreground", "--node-name", "x"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--node-name is for cluster nodes", r.stderr)
        r = run_ferry(["start", "--foreground", "--cluster", self.etcd.url, "--resources", "[1]"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--resources needs a JSON object", r.stderr)
        # On one node, the nodes endpoint says it is not a cluster.
        with Ferry(ECHO) as single:
            r = requests.get(f"{single.admin}/api/ferry/nodes", timeout=10)
            self.assertEqual(r.status_code, 404)
            self.assertIn("not in a cluster", r.json()["error"])

    def test_a_leader_that_loses_etcd_keeps_serving_and_leads_again_when_it_returns(self):
        leader, _ = self.start_nodes(["solo"])
        with open(os.path.join(leader.dir.name, "echo.yaml"), "w") as f:
            f.write(ECHO)
        self.assertEqual(run_ferry(["deploy", f.name, "--address", leader.admin]).returncode, 0)
        wait_until(lambda: running(leader), timeout=60, what="echo RUNNING")
        pids = sorted(leader.replica_pids())
        self.etcd.stop()
        leader.wait_for(lambda: "no longer leads" in leader.stdout(), timeout=30, what="the node to step down")
        # No etcd, no leader: the data plane serves on; writes are refused with a reason.
        for i in range(20):
            self.assertEqual(requests.post(leader.url("/echo"), data=str(i), timeout=10).json()["body"], str(i))
        r = run_ferry(["deploy", f.name, "--address", leader.admin])
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(sorted(leader.replica_pids()), pids)
        self.etcd.start()
        leader.wait_for(lambda: leader.stdout().count("leads the cluster") >= 2, timeout=30, what="leading again")
        wait_until(lambda: running(leader), timeout=30, what="echo RUNNING")
        self.assertEqual(sorted(leader.replica_pids()), pids)  # the same replicas: nothing was restarted
        self.assertEqual(run_ferry(["deploy", f.name, "--address", leader.admin]).returncode, 0)


if __name__ == "__main__":
    unittest.main()
