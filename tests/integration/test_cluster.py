"""Cluster mode on one machine: a real etcd (started here) and ferry nodes started with --cluster, each its
own process on loopback. What must hold: one node leads (etcd election) and the others forward the
controller's endpoints to it; the leader places replicas on every node by Ray's rules (spread by default,
resources, labels, max_replicas_per_node; what fits nowhere says why); every node's proxy serves every
application (endpoint sets go through etcd, other nodes' replicas are reached over TCP); when a worker node
dies (kill -9) its replicas are replaced on the others; the desired state lives in etcd, so when the
leader's node dies a standby leads within the lease TTL plus a step, takes over the replicas still alive
(same processes) and replaces the dead node's; `ferry nodes` and the status say where things run; a node
whose name is taken cannot join; a leader that loses etcd keeps serving, and leads again when etcd is back;
a leader frozen past its lease finds another leader when it thaws and stops what is no longer its own.
"""
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
import unittest

import requests

from harness import Etcd, Ferry, make_certs, run_ferry, wait_until

ECHO = """applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: 2
"""


ECHO3 = ECHO.replace("num_replicas: 2", "num_replicas: 3")
# Small enough that one node (4 CPUs declared, below) holds all three.
ECHO3_SMALL = ECHO3 + "        ray_actor_options: {num_cpus: 0.5}\n"


class Node(Ferry):
    def __init__(self, etcd, name, *extra):
        self.name = name
        self.state_dir = tempfile.mkdtemp(prefix=f"ferry-{name}-")
        if "--resources" not in extra:  # the same on every machine (the default is the machine's cores)
            extra = ("--resources", '{"CPU": 4}', *extra)
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


def running(node, app="echo", replicas=2, on=None):
    """The status (as `node` answers it) once `app` runs `replicas` RUNNING replicas (every one on a node named
    in `on`, when given), else None."""
    try:
        s = node.api("/api/serve/applications/").json()
    except (requests.RequestException, ValueError):
        return None
    a = s.get("applications", {}).get(app)
    if not a or a["status"] != "RUNNING":
        return None
    where = [r["node_id"] for d in a["deployments"].values() for r in d["replicas"] if r["state"] == "RUNNING"]
    return s if len(where) == replicas and (on is None or set(where) <= set(on)) else None


def placement(status, app="echo"):
    """{replica_id: (node_id, pid)} of `app`'s RUNNING replicas."""
    return {r["replica_id"]: (r["node_id"], r["pid"]) for d in status["applications"][app]["deployments"].values()
            for r in d["replicas"] if r["state"] == "RUNNING"}


class Load:
    """Sequential requests to one proxy on a thread (one in flight at a time), bounded in count and time,
    counting the answers that were not right."""

    def __init__(self, node, limit=200000, seconds=120):
        self.node, self.ok, self.failed = node, 0, []
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.thread = threading.Thread(target=self.run, args=(limit,), daemon=True)
        self.thread.start()

    def run(self, limit):
        for i in range(limit):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            body = f"load-{i}".encode()
            try:
                r = requests.post(self.node.url("/echo"), data=body, timeout=10)
                if r.status_code == 200 and r.json()["body"] == body.decode():
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")
            except (requests.RequestException, ValueError) as e:
                self.failed.append(repr(e))

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self


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

    def leader_node(self):
        name = wait_until(lambda: self.nodes[0].leader(), timeout=20, what="a leader")
        return next(n for n in self.nodes if n.name == name)

    def start_nodes(self, names):
        for name in names:
            self.nodes.append(Node(self.etcd, name))
        # Every one registered (a node's process answers before it has joined).
        def joined():
            try:
                listed = self.nodes[0].nodes()
            except requests.RequestException:
                return False
            return all(listed.get(n, {}).get("state") == "ALIVE" for n in names)
        wait_until(joined, timeout=30, what="every node to join")
        leader = self.leader_node()
        return leader, [n for n in self.nodes if n is not leader]

    def deploy(self, node, text, name="echo.yaml"):
        path = os.path.join(node.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        r = run_ferry(["deploy", path, "--address", node.admin])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_the_leader_dies_and_a_standby_brings_the_applications_back(self):
        leader, standbys = self.start_nodes(["n1", "n2", "n3"])
        nodes = standbys[0].nodes()
        self.assertEqual(sorted(nodes), ["n1", "n2", "n3"])
        self.assertTrue(all(n["state"] == "ALIVE" for n in nodes.values()))
        self.assertEqual([n for n in nodes.values() if n["leader"]][0]["node_id"], leader.name)

        # Deployed through a standby: its admin API hands it to the leader, which spreads the replicas over
        # the nodes (Ray's default: the node with the fewest of the deployment).
        self.deploy(standbys[0], ECHO3)
        status = wait_until(lambda: running(standbys[1], replicas=3), timeout=60, what="echo RUNNING")
        self.assertEqual(status["controller_info"]["node_id"], leader.name)
        before = placement(status)
        self.assertEqual(sorted(n for n, _ in before.values()), ["n1", "n2", "n3"])
        for d in status["applications"]["echo"]["deployments"].values():
            for rep in d["replicas"]:
                self.assertEqual(rep["node_ip"], "127.0.0.1")
        # Each replica is a process of the node it is placed on.
        by_name = {n.name: n for n in self.nodes}
        for node_id, pid in before.values():
            self.assertIn(pid, by_name[node_id].replica_pids())
        self.assertEqual(requests.post(leader.url("/echo"), data=b"x", timeout=10).json()["body"], "x")
        # Every node's proxy serves it: the standbys route by the leader's endpoint sets (from etcd), to
        # replicas on any node over TCP.
        for n in standbys:
            wait_until(lambda: answers(n, b"s"), timeout=30, what=f"echo through {n.name}'s proxy")

        # kill -9 the leader's node: a standby leads once its lease lapses; it takes over the replicas still
        # alive on the other nodes (the same processes) and replaces the one that died with the leader.
        load = Load(standbys[1])
        wait_until(lambda: load.ok >= 50, timeout=30, what="the load to run")
        killed_at = time.monotonic()
        leader.proc.kill()
        leader.proc.wait()
        survivor = standbys[0]
        new_leader = wait_until(lambda: (l := survivor.leader()) and l != leader.name and l, timeout=30,
                                what="a new leader")
        took = time.monotonic() - killed_at
        self.assertLess(took, 15, "a standby leads within the lease TTL (2 s) and a step, on an idle machine")
        by_name = {n.name: n for n in standbys}
        status = wait_until(lambda: running(by_name[new_leader], replicas=3), timeout=60, what="echo RUNNING again")
        self.assertEqual(status["controller_info"]["node_id"], new_leader)
        after = placement(status)
        survivors = {n.name for n in standbys}
        self.assertTrue(all(n in survivors for n, _ in after.values()), after)
        kept = {rid: where for rid, where in before.items() if where[0] != leader.name}
        self.assertEqual({rid: after.get(rid) for rid in kept}, kept, "the survivors' replicas were taken over")
        self.assertEqual(len(after), 3)
        self.assertEqual(requests.post(by_name[new_leader].url("/echo"), data=b"y", timeout=10).json()["body"], "y")
        other = [n for n in standbys if n.name != new_leader][0]
        wait_until(lambda: answers(other, b"z"), timeout=30, what="echo through the other standby's proxy again")
        served = load.ok
        wait_until(lambda: load.ok >= served + 50, timeout=30, what="the load to go on")
        load.finish()
        # What may fail: the request in flight on the dead node's replica (one at a time here); routers
        # try another replica when a connection is refused, so the rest are served meanwhile.
        print(f"leader kill under load: {load.ok} ok, {len(load.failed)} failed", flush=True)
        self.assertLessEqual(len(load.failed), 1, load.failed[:5])
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

    def test_a_worker_node_dies_under_load_and_its_replicas_are_replaced(self):
        leader, workers = self.start_nodes(["w1", "w2", "w3"])
        self.deploy(leader, ECHO3)
        before = placement(wait_until(lambda: running(leader, replicas=3), timeout=60, what="echo RUNNING"))
        victim = workers[0]
        self.assertIn(victim.name, [n for n, _ in before.values()])
        load = Load(leader)
        wait_until(lambda: load.ok >= 50, timeout=30, what="the load to run")
        victim.proc.kill()
        victim.proc.wait()
        # Replaced on the two that are left; the others' replicas untouched.
        after = placement(wait_until(
            lambda: (s := running(leader, replicas=3)) and victim.name not in [n for n, _ in placement(s).values()] and s,
            timeout=60, what="echo RUNNING on the surviving nodes"))
        for rid, (node_id, pid) in before.items():
            if node_id != victim.name:
                self.assertEqual(after.get(rid), (node_id, pid))
        served_before = load.ok
        wait_until(lambda: load.ok >= served_before + 50, timeout=30, what="the load to go on")
        load.finish()
        # What may fail: the request in flight on the dead node's replica (one at a time here); a router
        # tries another replica when a connection is refused, so the rest are served meanwhile.
        print(f"worker kill under load: {load.ok} ok, {len(load.failed)} failed", flush=True)
        self.assertLessEqual(len(load.failed), 1, load.failed[:5])
        self.assertEqual(leader.nodes()[victim.name]["state"], "DEAD")

    def test_a_drained_node_hands_its_replicas_over_without_failing_a_request(self):
        leader, workers = self.start_nodes(["d1", "d2", "d3"])
        self.deploy(leader, ECHO3_SMALL)
        before = placement(wait_until(lambda: running(leader, replicas=3), timeout=60, what="echo RUNNING"))
        drained, other = workers
        # Load through the leader's proxy and through the draining node's own (which keeps serving).
        loads = [Load(leader), Load(drained)]
        wait_until(lambda: all(l.ok >= 30 for l in loads), timeout=30, what="the load to run")
        r = run_ferry(["drain", drained.name, "--address", other.admin], timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(f"node {drained.name} is drained", r.stdout)
        status = wait_until(lambda: running(leader, replicas=3), timeout=60, what="echo RUNNING after the drain")
        after = placement(status)
        self.assertNotIn(drained.name, [n for n, _ in after.values()])
        for rid, where in before.items():  # only the drained node's replica moved
            if where[0] != drained.name:
                self.assertEqual(after.get(rid), where)
        counts = [l.ok for l in loads]
        wait_until(lambda: all(l.ok >= c + 30 for l, c in zip(loads, counts)), timeout=30, what="the load to go on")
        for l in loads:
            l.finish()
        print(f"drain under load: {[l.ok for l in loads]} ok, {[len(l.failed) for l in loads]} failed", flush=True)
        for l in loads:
            self.assertEqual(l.failed, [], "a drain fails no request")
        nodes = leader.nodes()
        self.assertEqual((nodes[drained.name]["state"], nodes[drained.name]["replicas"]), ("DRAINING", 0))
        self.assertEqual(sum(n["replicas"] for n in nodes.values()), 3)
        out = run_ferry(["nodes", "--address", leader.admin]).stdout
        self.assertRegex(out, rf"{drained.name}\s+DRAINING\s+\S+\s+0\s+CPU 0/")
        # A node that is not in the cluster cannot be drained.
        r = run_ferry(["drain", "nowhere", "--address", leader.admin])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('no node named "nowhere"', r.stderr)

        # SIGTERM to a node (a rolling upgrade, a spot preemption) drains it the same way before it leaves.
        loads = [Load(leader)]
        wait_until(lambda: loads[0].ok >= 30, timeout=30, what="the load to run")
        other.proc.send_signal(signal.SIGTERM)
        self.assertEqual(other.proc.wait(timeout=120), 0)
        self.assertIn("drains: its", other.stdout())
        status = wait_until(lambda: running(leader, replicas=3), timeout=60, what="echo RUNNING after the SIGTERM")
        self.assertEqual({n for n, _ in placement(status).values()}, {leader.name})
        count = loads[0].ok
        wait_until(lambda: loads[0].ok >= count + 30, timeout=30, what="the load to go on")
        loads[0].finish()
        self.assertEqual(loads[0].failed, [], "a node leaving on SIGTERM fails no request")

        # The last live node (the other is draining) has nowhere to move its replicas: on SIGTERM it stops
        # them and leaves, rather than waiting out the drain limit (120 s).
        leader.proc.send_signal(signal.SIGTERM)
        self.assertEqual(leader.proc.wait(timeout=60), 0)
        self.assertIn("is the cluster's last live node: its replicas have nowhere to move", leader.stdout())

    def test_autoscaling_counts_the_load_on_every_nodes_proxy(self):
        # All the traffic enters through a standby's proxy: the leader hears it from that node's reports
        # (GET /api/ferry/reports) and scales up, placing the new replicas across the cluster.
        leader, (standby, _) = self.start_nodes(["a1", "a2", "a3"])
        self.deploy(leader, """applications:
  - name: work
    route_prefix: /work
    deployments:
      - name: Busy
        import_path: builtin:busy
        args: {work_us: 20000}
        max_ongoing_requests: 2
        autoscaling_config: {min_replicas: 1, max_replicas: 3, target_ongoing_requests: 1, upscale_delay_s: 0.5,
                             downscale_delay_s: 600, metrics_interval_s: 0.2, look_back_period_s: 1}
""")
        wait_until(lambda: running(leader, "work", 1), timeout=60, what="work RUNNING")
        stop = threading.Event()
        codes = []

        def client():
            deadline = time.monotonic() + 60
            with requests.Session() as session:
                for _ in range(3000):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        codes.append(session.get(standby.url("/work"), timeout=30).status_code)
                    except requests.RequestException as e:
                        codes.append(repr(e))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            status = wait_until(lambda: running(leader, "work", 3), timeout=60, what="3 replicas")
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertEqual(set(codes), {200})
        nodes = {r["node_id"] for d in status["applications"]["work"]["deployments"].values() for r in d["replicas"]}
        self.assertGreaterEqual(len(nodes), 2, "placed across the cluster")

    def test_proxy_location_says_which_nodes_serve_http(self):
        leader, (standby,) = self.start_nodes(["h1", "h2"])
        self.deploy(leader, "proxy_location: HeadOnly\n" + ECHO)
        wait_until(lambda: running(leader), timeout=60, what="echo RUNNING")
        self.assertTrue(answers(leader, b"head"))

        def refused(node, what):
            try:
                r = requests.post(node.url("/echo"), data=b"x", timeout=5)
                return r.status_code == 503 and what in r.json()["error"]
            except (requests.RequestException, ValueError):
                return False
        # HeadOnly: the other node's proxy answers 503 saying which node serves.
        wait_until(lambda: refused(standby, f"only the head node's proxy (node {leader.name}"), timeout=30,
                   what="the standby's proxy to refuse")
        # EveryNode (the default) again: both serve.
        self.deploy(leader, ECHO)
        wait_until(lambda: answers(standby, b"every"), timeout=30, what="the standby's proxy to serve")
        # Disabled: no proxy serves HTTP.
        self.deploy(leader, "proxy_location: Disabled\n" + ECHO)
        for n in (leader, standby):
            wait_until(lambda: refused(n, "proxy_location is Disabled"), timeout=30, what=f"{n.name} to refuse")
        r = run_ferry(["config", "--address", standby.admin])
        self.assertIn('proxy_location: "Disabled"', r.stdout)

    def assert_cannot_join(self, leader, attempts):
        """Each (flags, why) of `attempts`: a node started with those flags exits non-zero saying `why`."""
        for flags, why in attempts:
            state = tempfile.mkdtemp(prefix="ferry-intruder-")
            try:
                r = run_ferry(["start", "--foreground", "--state-dir", state, "--cluster", self.etcd.url,
                               "--node-name", "intruder", "--http-port", "0", "--admin-port", "0", *flags], timeout=60)
            finally:
                shutil.rmtree(state, ignore_errors=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(why, r.stderr + r.stdout)
        self.assertNotIn("intruder", leader.nodes())

    def test_a_cluster_with_a_token_admits_only_nodes_that_have_it(self):
        tokens = tempfile.mkdtemp(prefix="ferry-tokens-")
        try:
            paths = {}
            for name, token in [("right", "s3cret-cluster-token-0001"), ("wrong", "another-cluster-token-02"),
                                ("short", "tiny")]:
                paths[name] = os.path.join(tokens, name)
                with open(paths[name], "w") as f:
                    f.write(token + "\n")
            self.nodes.append(Node(self.etcd, "t1", "--cluster-token-file", paths["right"]))
            self.nodes.append(Node(self.etcd, "t2", "--cluster-token-file", paths["right"]))
            leader = self.leader_node()
            # The replicas require the token on their frames: one replica, so that one node's proxy reaches
            # it on the other node (over TCP, presenting the token).
            self.deploy(leader, ECHO.replace("num_replicas: 2", "num_replicas: 1"))
            wait_until(lambda: running(leader, replicas=1), timeout=60, what="echo RUNNING")
            for n in self.nodes:
                wait_until(lambda: answers(n, b"tok"), timeout=30, what=f"echo through {n.name}")
            self.assert_cannot_join(leader, [(["--cluster-token-file", paths["wrong"]], "is not the cluster's"),
                                             ([], "this cluster requires a token"),
                                             (["--cluster-token-file", paths["short"]], "shorter than 16 characters")])
        finally:
            shutil.rmtree(tokens, ignore_errors=True)

    def test_with_tls_etcd_and_the_frames_between_nodes_are_encrypted_and_strangers_refused(self):
        certs_dir = tempfile.mkdtemp(prefix="ferry-certs-")
        try:
            certs = make_certs(certs_dir, ["etcd", "n1", "n2"])
            rogue = make_certs(certs_dir, ["stranger"], ca="rogue-ca")
            self.etcd.close()
            self.etcd = Etcd(tls={"ca": certs["ca"], **certs["etcd"]})

            def tls_flags(name, frames=True):
                flags = ["--etcd-cacert", certs["ca"], "--etcd-cert", certs[name]["cert"], "--etcd-key",
                         certs[name]["key"]]
                if frames:
                    flags += ["--tls-ca", certs["ca"], "--tls-cert", certs[name]["cert"], "--tls-key",
                              certs[name]["key"]]
                return flags
            self.nodes.append(Node(self.etcd, "n1", "--labels", "zone=a", *tls_flags("n1")))
            self.nodes.append(Node(self.etcd, "n2", "--labels", "zone=b", *tls_flags("n2")))
            leader = self.leader_node()
            # One replica: one node's proxy reaches it on the other node, over TLS. And a handle's call from a
            # replica on n1 to one on n2 (composition across nodes), over TLS too.
            self.deploy(leader, ECHO.replace("num_replicas: 2", "num_replicas: 1") + """  - name: chain
    route_prefix: /chain
    deployments:
      - {name: Ingress, import_path: "builtin:call", args: {next: Callee},
         ray_actor_options: {label_selector: {zone: a}}}
      - {name: Callee, import_path: "builtin:echo", ray_actor_options: {label_selector: {zone: b}}}
""")
            wait_until(lambda: running(leader, replicas=1), timeout=60, what="echo RUNNING")
            wait_until(lambda: running(leader, app="chain", replicas=2, on={"n1", "n2"}), timeout=60,
                       what="chain RUNNING")
            for n in self.nodes:
                wait_until(lambda: answers(n, b"over-tls"), timeout=30, what=f"echo through {n.name}")
            for n in self.nodes:
                self.assertTrue(all(answers(n, f"tls-{i}".encode()) for i in range(20)))
                r = requests.post(n.url("/chain"), data=b"composed", timeout=10)
                self.assertEqual(r.status_code, 200, r.text)
                self.assertEqual((r.json()["via"], r.json()["next"]["body"]), ("Ingress", "composed"))

            # The replica's TCP port (as its node reported it in etcd) speaks only TLS with the cluster's CA.
            prefix = b"/ferry/replicas/"
            got = self.etcd.call("/v3/kv/range", {"key": base64.b64encode(prefix).decode(),
                                                  "range_end": base64.b64encode(b"/ferry/replicas0").decode()})
            reports = [json.loads(base64.b64decode(kv["value"])) for kv in got.json().get("kvs", [])]
            tcp = [r["tcp_address"] for r in reports if r.get("state") == "READY"]
            self.assertEqual(len(tcp), 3, reports)  # echo's, chain's two
            host, port = tcp[0][len("tcp://"):].rsplit(":", 1)
            port = int(port)

            def handshake(cert=None):
                context = ssl.create_default_context(cafile=certs["ca"])
                context.check_hostname = False
                if cert:
                    context.load_cert_chain(cert["cert"], cert["key"])
                with socket.create_connection((host, port), timeout=10) as raw:
                    with context.wrap_socket(raw) as tls:
                        # TLS 1.3: a refused client certificate shows at the first read.
                        tls.sendall(b"\xff" * 16)
                        return tls.recv(1)
            # The cluster's certificate gets through the handshake (a frame header that is not one is then
            # refused: closed).
            self.assertEqual(handshake(certs["n1"]), b"")
            for cert in (None, rogue["stranger"]):
                with self.assertRaises((ssl.SSLError, ConnectionError)):
                    handshake(cert)
            # A client in the clear gets nothing back: its bytes are not a TLS handshake.
            with socket.create_connection((host, port), timeout=10) as raw:
                raw.sendall(b"FERRY hello in the clear\r\n" * 4)
                try:
                    self.assertEqual(raw.recv(100)[:1] in (b"", b"\x15"), True)  # closed, or a TLS alert
                except ConnectionResetError:
                    pass

            # A node without the frame TLS cannot join; nor one without an etcd client certificate.
            self.assert_cannot_join(leader, [(tls_flags("n2", frames=False), "this cluster's nodes talk TLS"),
                                             (["--etcd-cacert", certs["ca"]], "TLS"),
                                             ([], "needs the CA that signed etcd's certificate")])
        finally:
            shutil.rmtree(certs_dir, ignore_errors=True)

    def test_replicas_are_placed_by_resources_labels_and_limits(self):
        self.nodes.append(Node(self.etcd, "cpu-a", "--resources", '{"CPU": 2}', "--labels", "zone=a"))
        self.nodes.append(Node(self.etcd, "gpu-b", "--resources", '{"CPU": 2, "GPU": 1, "accelerator_A100": 1}',
                               "--labels", "zone=b"))
        leader = self.leader_node()
        self.deploy(leader, """applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Gpu
        import_path: builtin:echo
        ray_actor_options: {num_gpus: 1, resources: {accelerator_A100: 1}}
      - name: ZoneA
        import_path: builtin:echo
        num_replicas: 2
        ray_actor_options: {num_cpus: 0.5, label_selector: {zone: a}}
      - name: OnePerNode
        import_path: builtin:echo
        num_replicas: 2
        ray_actor_options: {num_cpus: 0.1}
        max_replicas_per_node: 1
""")
        status = wait_until(lambda: running(leader, replicas=5), timeout=60, what="echo RUNNING")
        deps = status["applications"]["echo"]["deployments"]
        nodes_of = lambda name: sorted(r["node_id"] for r in deps[name]["replicas"])
        self.assertEqual(nodes_of("Gpu"), ["gpu-b"])
        self.assertEqual(nodes_of("ZoneA"), ["cpu-a", "cpu-a"])
        self.assertEqual(nodes_of("OnePerNode"), ["cpu-a", "gpu-b"])
        # One that fits nowhere: the application keeps running what fits, and the deployment says what it
        # needs and what the closest node lacks.
        self.deploy(leader, """applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - name: Gpu
        import_path: builtin:echo
        num_replicas: 2
        ray_actor_options: {num_gpus: 1, resources: {accelerator_A100: 1}}
""")

        def unschedulable():
            d = leader.api("/api/serve/applications/").json()["applications"]["echo"]["deployments"]["Gpu"]
            return d if "cannot be scheduled" in d["message"] else None
        d = wait_until(unschedulable, timeout=60, what="an unschedulable message")
        self.assertIn(d["status"], ("UPDATING", "UPSCALING"))
        self.assertIn("GPU", d["message"])
        self.assertRegex(d["message"], r"gpu-b, lacks .*GPU \(needs 1\.0, has 0\.0 free\)")
        self.assertEqual(len([r for r in d["replicas"] if r["state"] == "RUNNING"]), 1)
        self.assertTrue(answers(leader, b"still"))

    def test_a_leader_that_was_frozen_past_its_lease_finds_another_leader_and_stops_its_replicas(self):
        # SIGSTOP freezes the leader's node (as a long GC pause or a cut network would): its lease lapses, a
        # standby leads, takes over the replica on its own node and replaces the frozen node's. Thawed, the
        # old leader learns it was deposed, finds the other leader, and stops the replica it ran (no longer
        # assigned to it); the desired state stays the new leader's.
        leader, (standby,) = self.start_nodes(["p1", "p2"])
        self.deploy(standby, ECHO)
        before = placement(wait_until(lambda: running(leader), timeout=60, what="echo RUNNING on the first leader"))
        self.assertEqual(sorted(n for n, _ in before.values()), ["p1", "p2"])
        self.assertEqual(len(leader.replica_pids()), 1)
        os.kill(leader.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: standby.leader() == standby.name, timeout=30, what="the standby to lead")
            after = placement(wait_until(
                lambda: (s := running(standby)) and all(n == "p2" for n, _ in placement(s).values()) and s,
                timeout=60, what="echo RUNNING on the new leader's node"))
            self.assertTrue(set(before.items()) & set(after.items()), "p2's replica was taken over")
            wait_until(lambda: answers(standby, b"q"), timeout=30, what="echo through the new leader")
        finally:
            os.kill(leader.proc.pid, signal.SIGCONT)
        wait_until(lambda: not leader.replica_pids(), timeout=60, what="the old leader to stop its replica")
        self.assertEqual(standby.leader(), standby.name)
        self.assertTrue(running(standby))
        # Its admin API now forwards to the new leader; the node is back in the cluster.
        r = leader.api("/api/serve/applications/")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.headers.get("x-ferry-leader"), standby.admin)
        self.assertEqual(r.json()["controller_info"]["node_id"], standby.name)
        wait_until(lambda: standby.nodes()["p1"]["state"] == "ALIVE", timeout=30, what="p1 to rejoin")

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
