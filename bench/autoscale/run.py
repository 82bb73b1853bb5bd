#!/usr/bin/python3
"""bench/autoscale: replica count and p99 latency over time under a step load, as a table and a PNG
(bench/out/autoscale.png), and the time from the step to the target replica count. Target: no more than
upscale_delay_s + one replica start + one metrics interval.

The deployment: builtin:busy (5 ms of CPU per request), autoscaling from 1 to 4 replicas at
target_ongoing_requests 2, upscale_delay_s 2, downscale_delay_s 6, metrics_interval_s 0.5,
look_back_period_s 2. The load (closed loop, Python clients): 1 client for 5 s, 12 clients for 20 s, then
none for 15 s.

Usage: bench/autoscale/run.py
"""
import json
import os
import sys
import threading
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import OUT, Node  # noqa: E402

UPSCALE_DELAY_S, METRICS_INTERVAL_S = 2, 0.5
CONFIG = f"""applications:
  - name: a
    route_prefix: /a
    deployments:
      - name: Busy
        import_path: builtin:busy
        args: {{work_us: 5000}}
        max_ongoing_requests: 4
        autoscaling_config:
          min_replicas: 1
          max_replicas: 4
          target_ongoing_requests: 2
          upscale_delay_s: {UPSCALE_DELAY_S}
          downscale_delay_s: 6
          metrics_interval_s: {METRICS_INTERVAL_S}
          look_back_period_s: 2
"""
PHASES = [(5, 1), (20, 12), (15, 0)]  # (seconds, clients)


def main():
    node = Node()
    latencies = []  # (finish time, latency)
    lock = threading.Lock()
    try:
        node.deploy(CONFIG)
        node.wait_running("a")
        start = time.monotonic()
        clients = []

        def client(start_at, stop_at):
            time.sleep(max(0.0, start_at - time.monotonic()))
            with requests.Session() as s:
                while time.monotonic() < stop_at:
                    t0 = time.monotonic()
                    code = s.get(node.url("/a"), timeout=30).status_code
                    t1 = time.monotonic()
                    with lock:
                        latencies.append((t1 - start, t1 - t0, code))

        t = 0
        for seconds, n in PHASES:
            for _ in range(n):
                th = threading.Thread(target=client, args=(start + t, start + t + seconds), daemon=True)
                th.start()
                clients.append(th)
            t += seconds
        samples = []
        step_at = PHASES[0][0]
        reached = None
        while time.monotonic() - start < t:
            now = time.monotonic() - start
            d = node.status()["applications"]["a"]["deployments"]["Busy"]
            running = d["replica_states"].get("RUNNING", 0)
            samples.append((now, running, d["autoscaling"]["target_replicas"]))
            if reached is None and now >= step_at and running == 4:
                reached = now - step_at
            time.sleep(0.05)
        for th in clients:
            th.join(timeout=30)
        # p99 per 1 s bucket.
        rows = []
        for second in range(int(t)):
            bucket = sorted(l for f, l, _ in latencies if second <= f < second + 1)
            p99 = bucket[min(len(bucket) - 1, int(len(bucket) * 0.99))] * 1000 if bucket else None
            reps = [r for s, r, _ in samples if second <= s < second + 1]
            rows.append((second, max(reps) if reps else None, len(bucket), p99))
        print(f"{'t (s)':>5} {'replicas':>8} {'req/s':>6} {'p99 ms':>7}")
        for second, reps, count, p99 in rows:
            print(f"{second:>5} {str(reps if reps is not None else '-'):>8} {count:>6} {'-' if p99 is None else f'{p99:.1f}':>7}")
        errors = sum(1 for _, _, c in latencies if c != 200)
        target = UPSCALE_DELAY_S + METRICS_INTERVAL_S + 0.1
        print(f"\nstep at t={step_at}s from 1 to 12 clients; 4 replicas RUNNING after "
              f"{'never' if reached is None else f'{reached:.2f} s'} (target: upscale_delay_s {UPSCALE_DELAY_S} + one "
              f"replica start + one metrics interval {METRICS_INTERVAL_S} = about {target:.1f} s); non-200: {errors}")
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "autoscale.json"), "w") as f:
            json.dump({"rows": rows, "samples": samples, "time_to_target_s": reached, "errors": errors}, f, indent=1)
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax1 = plt.subplots(figsize=(9, 4.5))
            ax1.step([s for s, _, _ in samples], [r for _, r, _ in samples], where="post", label="replicas RUNNING")
            ax1.set_xlabel("time (s)")
            ax1.set_ylabel("replicas")
            ax1.set_ylim(0, 5)
            ax2 = ax1.twinx()
            ax2.plot([r[0] + 0.5 for r in rows if r[3] is not None], [r[3] for r in rows if r[3] is not None],
                     color="tab:red", marker=".", label="p99 latency")
            ax2.set_ylabel("p99 (ms)")
            for x in (PHASES[0][0], PHASES[0][0] + PHASES[1][0]):
                ax1.axvline(x, color="grey", linestyle=":")
            ax1.set_title("ferry autoscaling under a step load (1 → 12 → 0 clients)")
            fig.legend(loc="upper right")
            fig.tight_layout()
            fig.savefig(os.path.join(OUT, "autoscale.png"), dpi=100)
            print(f"plot: {os.path.join(OUT, 'autoscale.png')}")
        except ImportError:
            print("matplotlib is missing (scripts/install-deps --bench): no plot")
    finally:
        node.close()


if __name__ == "__main__":
    main()
