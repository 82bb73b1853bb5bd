#!/usr/bin/python3
"""bench/cluster/crossing.py: what a request pays to cross nodes, on veth pairs between network namespaces.

etcd and two ferry nodes (`ferry start --cluster`, node x1 labelled zone=a, x2 zone=b) each in its own network
namespace, joined by veth pairs to a bridge (the namespaces of tests/integration/test_cluster_netns.py); the
client (wrk, one connection) in another namespace. Two 1-replica builtin:echo applications, placed by
label_selector: /here on x1, /there on x2. wrk against x1's proxy: /here is served on the entry node (its
replica's Unix socket), /there crosses to x2 (TCP over the veths), alternated RUNS times for SECONDS each;
the medians of the p50s are compared. Then the same with frames between nodes over mutual TLS
(--tls-ca/--tls-cert/--tls-key).

Usage (root: network namespaces): bench/cluster/crossing.py [RUNS] [SECONDS]   (needs a built ferry, etcd-server
and wrk)
"""
import ctypes
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import ROOT, wrk  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import make_certs, wait_until  # noqa: E402
from test_cluster_netns import CLONE_NEWNET, Network, NsEtcd, NsNode, enter_namespace  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
APPS = """applications:
  - name: here
    route_prefix: /here
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: 1, ray_actor_options: {label_selector: {zone: a}}}
  - name: there
    route_prefix: /there
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: 1, ray_actor_options: {label_selector: {zone: b}}}
"""


def measure(tls):
    net = Network()
    host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    nodes, etcd = [], None
    work = tempfile.mkdtemp(prefix="ferry-crossing-")
    try:
        client_ns, _ = net.add("client")
        enter_namespace(client_ns)
        etcd = NsEtcd(net)
        token = os.path.join(work, "token")
        with open(token, "w") as f:
            f.write("crossing-bench-admin-token\n")
        certs = make_certs(work, ["x1", "x2"], ips={"x1": net.address_of_next(), "x2": net.address_of_next(1)})
        for name, zone in [("x1", "a"), ("x2", "b")]:
            extra = ["--labels", f"zone={zone}"]
            if tls:
                extra += ["--tls-ca", certs["ca"], "--tls-cert", certs[name]["cert"], "--tls-key", certs[name]["key"]]
            nodes.append(NsNode(net, etcd, name, token, *extra))
        entry = nodes[0]
        wait_until(lambda: len(entry.nodes()) == 2 and entry.leader(), timeout=30, what="both nodes and a leader")
        path = os.path.join(work, "apps.yaml")
        with open(path, "w") as f:
            f.write(APPS)
        r = entry.cli("deploy", path)
        assert r.returncode == 0, r.stderr

        def placed():
            s = entry.api("/api/serve/applications/").json()["applications"]
            where = {a: [r["node_id"] for d in s[a]["deployments"].values() for r in d["replicas"]
                         if r["state"] == "RUNNING"] for a in ("here", "there") if a in s}
            return where == {"here": ["x1"], "there": ["x2"]}
        try:
            wait_until(placed, timeout=60, what="here on x1 and there on x2")
        except AssertionError:
            apps = entry.api("/api/serve/applications/").json()["applications"]
            for a, app in apps.items():
                print(a, app["status"], app.get("message"), {n: (d["status"], d.get("message"), [
                    (r["node_id"], r["state"]) for r in d["replicas"]]) for n, d in app["deployments"].items()})
            for n in nodes:
                print(n.name, n.stderr()[-2000:])
            raise
        for p in ("/here", "/there"):
            wait_until(lambda: wrk(entry.url(p), 1, 1)["non_2xx"] == 0, timeout=30, what=f"{p} to answer")
        here, there = [], []
        for _ in range(RUNS):
            here.append(wrk(entry.url("/here"), 1, SECONDS)["p50_us"])
            there.append(wrk(entry.url("/there"), 1, SECONDS)["p50_us"])
        return here, there
    finally:
        for n in nodes:
            n.close()
        if etcd:
            etcd.close()
        back_to(host_ns)
        os.close(host_ns)
        net.close()


def back_to(fd):
    """Back to the namespace `fd` refers to (the host's)."""
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back to the host's namespace")


def main():
    for tls in (False, True):
        here, there = measure(tls)
        print(f"{'mutual TLS' if tls else 'in the clear'}, one connection, p50: served on the entry node "
              f"{statistics.median(here):.0f} us (runs {here}), crossing to the other node "
              f"{statistics.median(there):.0f} us (runs {there}): crossing adds "
              f"{statistics.median(there) - statistics.median(here):.0f} us", flush=True)


if __name__ == "__main__":
    main()
