#!/usr/bin/env bash
# bench/composition: a chain of handles against one deployment, with wrk, in one run on this machine.
#   echo:  the proxy -> builtin:echo                          (ingress only)
#   chain: the proxy -> builtin:call -> builtin:call -> echo  (ingress -> A -> B, two handle hops)
# Prints requests/s, p50 and p99 at 1 and 64 connections, and the issue's targets: the chain's p50 at one
# connection within 2 x 40 us of echo's, and at least 0.3x its requests/s at 64.
# Usage: bench/composition/run.sh [DURATION_S]     (needs wrk: `scripts/install-deps --bench`, and a built ferry)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ferry=${FERRY_BIN:-$root/build/ferry}
duration=${1:-${DURATION:-10}}
out=${OUT_DIR:-$root/bench/out}
mkdir -p "$out"
work=$(mktemp -d -t ferry-bench-XXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/ferry.yaml" <<YAML
http_options: {host: 127.0.0.1, port: $port}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", max_ongoing_requests: 100}
  - name: chain
    route_prefix: /chain
    deployments:
      - {name: Ingress, import_path: "builtin:call", args: {next: A}, max_ongoing_requests: 100}
      - {name: A, import_path: "builtin:call", args: {next: B}, max_ongoing_requests: 100}
      - {name: B, import_path: "builtin:echo", max_ongoing_requests: 100}
YAML
"$ferry" run "$work/ferry.yaml" --log-level warning >"$work/ferry.out" 2>&1 & pid=$!
for _ in $(seq 1 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/chain" && break; sleep 0.05; done
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }
results="$out/composition.tsv"
printf "server\tconnections\trequests_per_s\tp50_us\tp99_us\terrors\n" > "$results"
measure() {  # name path connections
  local threads=1; [ "$3" -gt 1 ] && threads=2
  wrk -t1 -c"$3" -d2s "http://127.0.0.1:$port$2" >/dev/null 2>&1 || true
  local text; text=$(wrk -t"$threads" -c"$3" -d"${duration}s" --latency "http://127.0.0.1:$port$2")
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$1" "$3" "$(echo "$text" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$text" | awk '$1=="50%" {print $2}' | to_us)" "$(echo "$text" | awk '$1=="99%" {print $2}' | to_us)" \
    "$(echo "$text" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')" | tee -a "$results"
}
for c in 1 64; do measure echo /echo "$c"; measure chain /chain "$c"; done
/usr/bin/python3 - "$results" <<'PY'
import csv, sys
rows = {(r["server"], int(r["connections"])): r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")}
e1, c1, e64, c64 = rows["echo", 1], rows["chain", 1], rows["echo", 64], rows["chain", 64]
added = float(c1["p50_us"]) - float(e1["p50_us"])
ratio = float(c64["requests_per_s"]) / float(e64["requests_per_s"])
print(f"chain p50 at 1 connection: {c1['p50_us']} us vs echo {e1['p50_us']} us: +{added:.1f} us for two hops "
      f"({added / 2:.1f} us per hop; target: within 80 us) -> {'ok' if added <= 80 else 'MISSED'}")
print(f"chain requests/s at 64 connections: {float(c64['requests_per_s']):.0f} vs echo "
      f"{float(e64['requests_per_s']):.0f}: {ratio:.2f}x (target: at least 0.3x) -> {'ok' if ratio >= 0.3 else 'MISSED'}")
PY
