#!/usr/bin/python3
"""bench/batching: builtin:busy with batch_cost_us 2000 and work_us 50 (a model whose fixed cost per call is
shared by the batch) on one replica, wrk at 64 connections, for max_batch_size 1 to 64: requests/s, p50
and p99 against the ideal max_batch_size / (batch_cost + max_batch_size x work). Then, at 1 connection, the
p50 of the adaptive mode against no batching at all.

Usage: bench/batching/run.py [DURATION_S]
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import OUT, Node, wrk  # noqa: E402

DURATION = int(sys.argv[1]) if len(sys.argv) > 1 else 10
BATCH_COST_US, WORK_US = 2000, 50


def config(batching):
    return f"""applications:
  - name: m
    route_prefix: /m
    deployments:
      - name: Busy
        import_path: builtin:busy
        args: {{work_us: {WORK_US}, batch_cost_us: {BATCH_COST_US}}}
        max_ongoing_requests: 64
{batching}"""


def main():
    node = Node()
    rows = []
    try:
        print(f"busy: batch_cost_us {BATCH_COST_US}, work_us {WORK_US}, 1 replica, wrk -c64 for {DURATION} s")
        print(f"{'max_batch_size':>14} {'req/s':>9} {'ideal':>9} {'of ideal':>9} {'p50 ms':>8} {'p99 ms':>8}")
        sizes = [int(x) for x in os.environ.get("BATCH_SIZES", "1,2,4,8,16,32,64").split(",")]
        for b in sizes:
            node.deploy(config(f"        batching: {{max_batch_size: {b}, batch_wait_timeout_s: 0.01}}\n"))
            node.wait_running("m")
            wrk(node.url("/m"), 64, 2)  # warm-up
            r = wrk(node.url("/m"), 64, DURATION)
            ideal = b / ((BATCH_COST_US + b * WORK_US) / 1e6)
            rows.append({"max_batch_size": b, **r, "ideal_rps": ideal, "of_ideal": r["rps"] / ideal})
            print(f"{b:>14} {r['rps']:>9.0f} {ideal:>9.0f} {r['rps'] / ideal:>8.0%} {r['p50_us'] / 1000:>8.2f} "
                  f"{r['p99_us'] / 1000:>8.2f}  non-2xx {r['non_2xx']}")
        print(f"\nat 1 connection for {DURATION} s:")
        node.deploy(config(""))
        node.wait_running("m")
        wrk(node.url("/m"), 1, 2)
        plain = wrk(node.url("/m"), 1, DURATION)
        node.deploy(config("        batching: {max_batch_size: 64, batch_wait_timeout_s: 0.01, adaptive: true}\n"))
        node.wait_running("m")
        wrk(node.url("/m"), 1, 2)
        adaptive = wrk(node.url("/m"), 1, DURATION)
        node.deploy(config("        batching: {max_batch_size: 64, batch_wait_timeout_s: 0.01}\n"))
        node.wait_running("m")
        wrk(node.url("/m"), 1, 2)
        fixed = wrk(node.url("/m"), 1, DURATION)
        for name, r in (("no batching", plain), ("batching, adaptive", adaptive), ("batching, fixed 10 ms wait", fixed)):
            print(f"  {name:<28} p50 {r['p50_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms  {r['rps']:7.0f} req/s")
        print(f"  adaptive p50 - unbatched p50: {(adaptive['p50_us'] - plain['p50_us']) / 1000:+.2f} ms (target within 1 ms)")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "batching.json"), "w") as f:
            json.dump({"sweep": rows, "one_connection": {"plain": plain, "adaptive": adaptive, "fixed": fixed}}, f, indent=1)
    finally:
        node.close()


if __name__ == "__main__":
    main()
