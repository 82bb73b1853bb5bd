#!/usr/bin/python3
"""bench/lifecycle: what operating a ferry node costs.

1. Time from `ferry deploy` to every replica RUNNING, for 1, 10 and 100 builtin:echo replicas.
2. Extra p99 latency during a rolling update: wrk at 16 connections for DURATION s against a 4-replica echo
   deployment, once steady and once with a new version rolled out a third of the way in.

Usage: bench/lifecycle/run.py [DURATION_S]   (needs a built ferry and wrk: scripts/install-deps --bench)
"""
import json
import os
import sys
import threading
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import OUT, Node, wrk  # noqa: E402

DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def config(replicas, version=1, name="app"):
    return f"""applications:
  - name: {name}
    route_prefix: /{name}
    deployments:
      - name: Echo
        import_path: builtin:echo
        num_replicas: {replicas}
        max_ongoing_requests: 100
        graceful_shutdown_timeout_s: 5
        args: {{version: {version}}}
"""


def timed_deploy(node, text, app):
    started = time.monotonic()
    node.deploy(text)
    node.wait_running(app, timeout=300)
    return time.monotonic() - started


def main():
    node = Node()
    try:
        print("time from `ferry deploy` to all replicas RUNNING (builtin:echo):")
        results = {}
        for n in (1, 10, 100):
            app = f"scale{n}"
            results[n] = timed_deploy(node, config(n, name=app), app)
            print(f"  {n:>3} replicas: {results[n] * 1000:8.0f} ms")
            requests.delete(f"{node.address}/api/serve/applications/", timeout=30)
            deadline = time.monotonic() + 60
            while node.status()["applications"] and time.monotonic() < deadline:
                time.sleep(0.05)

        timed_deploy(node, config(4, 1), "app")
        url = node.url("/app")
        steady = wrk(url, 16, DURATION)
        rolled = {}

        def roll():
            time.sleep(DURATION / 3)
            rolled["took"] = timed_deploy(node, config(4, 2), "app")

        t = threading.Thread(target=roll)
        t.start()
        during = wrk(url, 16, DURATION)
        t.join()
        print(f"\nwrk -c16 -t2 for {DURATION} s against 4 echo replicas:")
        for name, r in (("steady", steady), ("with a rolling update", during)):
            print(f"  {name + ':':<23} {r['rps']:9.0f} req/s  p50 {r['p50_us']:7.0f} us  p99 {r['p99_us']:7.0f} us"
                  f"  non-2xx {r['non_2xx']}")
        print(f"  rolling update of 4 replicas took {rolled['took'] * 1000:.0f} ms; extra p99 "
              f"{during['p99_us'] - steady['p99_us']:+.0f} us")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "lifecycle.json"), "w") as f:
            json.dump({"deploy_to_running_s": results, "steady": steady, "rolling": during, "rollout_s": rolled["took"]},
                      f, indent=1)
    finally:
        node.close()


if __name__ == "__main__":
    main()
