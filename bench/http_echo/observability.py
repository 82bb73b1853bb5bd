#!/usr/bin/python3
"""bench/http_echo/observability.py: what metrics, tracing and access lines cost on bench/http_echo's load.

The echo config of bench/http_echo (1 replica, max_ongoing_requests 100), under wrk with 64 connections,
served by one ferry binary in four setups, alternating rounds so that drift hits every setup alike:
  off        --no-metrics, enable_access_log false, no tracing
  metrics    metrics on (the default), no access lines, no tracing
  traced     metrics on, tracing at sampling_ratio 0.01 to a real OTLP/HTTP receiver on loopback
  all        as traced, plus the default access line per request (TEXT, to a file)
The issue's target: "traced" within 5% of "off". Prints requests/s per round, the medians, and the ratios.
The receiver only counts what it gets (parsing 2,500 spans a second in Python would take CPU from the
server measured on a 2-core machine; the integration tests check the spans themselves).
Usage: bench/http_echo/observability.py [SECONDS] [ROUNDS]     (needs wrk and a built ferry)
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/integration"))
from common import FERRY, free_port, wrk  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

import requests  # noqa: E402

SETUPS = ("off", "metrics", "traced", "all")


def config(port, setup, endpoint):
    lines = [f"http_options: {{host: 127.0.0.1, port: {port}}}"]
    if setup in ("traced", "all"):
        lines.append(f'tracing: {{otlp_endpoint: "{endpoint}", sampling_ratio: 0.01}}')
    if setup != "all":
        lines.append("logging_config: {enable_access_log: false}")
    lines.append("""applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: 1, max_ongoing_requests: 100}""")
    return "\n".join(lines) + "\n"


def cpu_seconds(pid):
    """User + system CPU seconds of `pid` and its children (the node and its replicas)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run_setup(setup, seconds, receiver, work):
    port = free_port()
    path = os.path.join(work, f"{setup}.yaml")
    with open(path, "w") as f:
        f.write(config(port, setup, receiver.url))
    args = [FERRY, "run", path, "--admin-port", "0"]
    if setup == "off":
        args.append("--no-metrics")
    with open(os.path.join(work, f"{setup}.log"), "a") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}/echo"
            for _ in range(200):
                try:
                    if requests.get(url, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            warm = wrk(url, 64, 2)
            before = cpu_seconds(proc.pid)
            m = wrk(url, 64, seconds)
            m["cpu_us_per_request"] = (cpu_seconds(proc.pid) - before) / (m["rps"] * seconds) * 1e6
            m["requests"] = m["rps"] * seconds + warm["rps"] * 2  # the warm-up is traced too
            return m
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    results = {s: [] for s in SETUPS}
    with OtlpReceiver(validate=False) as receiver, tempfile.TemporaryDirectory(prefix="ferry-obs-bench-") as work:
        for r in range(rounds):
            # Each round starts with a different setup, so drift during a round favours none of them.
            for setup in SETUPS[r % len(SETUPS):] + SETUPS[:r % len(SETUPS)]:
                m = run_setup(setup, seconds, receiver, work)
                results[setup].append(m)
                print(f"round {r + 1} {setup:8s} {m['rps']:10,.0f} req/s  p50 {m['p50_us']:6.0f} us  "
                      f"p99 {m['p99_us']:6.0f} us  ferry CPU {m['cpu_us_per_request']:5.2f} us/request  "
                      f"non-2xx {m['non_2xx']}", flush=True)
        spans = receiver.span_count
        traced_requests = sum(m["requests"] for s in ("traced", "all") for m in results[s])
        print(f"\nspans received: {spans} from ~{traced_requests:,.0f} traced-setup requests "
              f"({spans / 4 / max(traced_requests, 1) * 100:.2f}% sampled; 4 spans a request); "
              f"receiver errors: {len(receiver.errors)}")
    median = {s: statistics.median(m["rps"] for m in results[s]) for s in SETUPS}
    cpu = {s: statistics.median(m["cpu_us_per_request"] for m in results[s]) for s in SETUPS}
    print("\nmedian req/s: " + ", ".join(f"{s} {median[s]:,.0f}" for s in SETUPS))
    print("median ferry CPU per request: " + ", ".join(f"{s} {cpu[s]:.2f} us" for s in SETUPS))
    # The machine drifts between rounds (other processes, thread placement): compare within each round,
    # then take the median of those ratios.
    for s in SETUPS[1:]:
        ratios = sorted(a["rps"] / b["rps"] for a, b in zip(results[s], results["off"]))
        cpu_ratio = statistics.median(a["cpu_us_per_request"] / b["cpu_us_per_request"]
                                      for a, b in zip(results[s], results["off"]))
        print(f"  {s:8s} vs off (median of per-round ratios): {statistics.median(ratios):.3f}x req/s "
              f"({(1 - statistics.median(ratios)) * 100:+.1f}% cost; rounds {ratios[0]:.3f}..{ratios[-1]:.3f}), "
              f"{cpu_ratio:.3f}x ferry CPU per request")
    print("target: traced >= 0.95x off in req/s")


if __name__ == "__main__":
    main()
