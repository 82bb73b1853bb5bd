#!/usr/bin/env bash
# bench/http_echo: ferry's echo (1 and 2 replicas) against nginx `return 200` (the machine's HTTP ceiling)
# and FastAPI under uvicorn (uvloop + httptools, 1 worker), with wrk at fixed connection counts, all in one
# run on this machine. Prints requests/s, p50 and p99 for each, and the ratios the issue sets as targets.
# Usage: bench/http_echo/run.sh [DURATION_S]     (needs `scripts/install-deps --bench` and a built ferry)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ferry=${FERRY_BIN:-$root/build/ferry}
duration=${1:-${DURATION:-10}}
out=${OUT_DIR:-$root/bench/out}
mkdir -p "$out"
work=$(mktemp -d -t ferry-bench-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {  # url
  for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "server at $1 did not come up" >&2; return 1
}
stop_last() { kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

# wrk's latency lines ("50%  123.00us") to microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }

results="$out/http_echo.tsv"
printf "server\tconnections\trequests_per_s\tp50_us\tp99_us\terrors\n" > "$results"
measure() {  # name url connections
  local name=$1 url=$2 conns=$3 threads=1
  [ "$conns" -gt 1 ] && threads=2
  wrk -t1 -c"$conns" -d2s "$url" >/dev/null 2>&1 || true   # warm-up
  local text
  text=$(wrk -t"$threads" -c"$conns" -d"${duration}s" --latency "$url")
  local rps p50 p99 errors
  rps=$(echo "$text" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$text" | awk '$1=="50%" {print $2}' | to_us)
  p99=$(echo "$text" | awk '$1=="99%" {print $2}' | to_us)
  errors=$(echo "$text" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$name" "$conns" "$rps" "$p50" "$p99" "${errors:-none}" | tee -a "$results"
}

# nginx
port=$(free_port)
mkdir -p "$work/nginx"
sed "s#PREFIX#$work/nginx#g; s#PORT#$port#g" "$here/nginx.conf" > "$work/nginx/nginx.conf"
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
wait_http "http://127.0.0.1:$port/"
for c in 1 64; do measure nginx "http://127.0.0.1:$port/echo" "$c"; done
stop_last

# FastAPI + uvicorn, uvloop and httptools, one worker
port=$(free_port)
(cd "$here" && exec /usr/bin/python3 -m uvicorn fastapi_app:app --host 127.0.0.1 --port "$port" --loop uvloop \
  --http httptools --workers 1 --no-access-log --log-level warning) & pids+=($!)
wait_http "http://127.0.0.1:$port/echo"
for c in 1 64; do measure fastapi "http://127.0.0.1:$port/echo" "$c"; done
stop_last

# ferry echo, 1 and 2 replicas
for replicas in 1 2; do
  port=$(free_port)
  cat > "$work/ferry.yaml" <<YAML
http_options: {host: 127.0.0.1, port: $port}
applications:
  - name: echo
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: "builtin:echo", num_replicas: $replicas, max_ongoing_requests: 100}
YAML
  "$ferry" run "$work/ferry.yaml" --log-level warning >"$work/ferry.out" 2>&1 & pids+=($!)
  wait_http "http://127.0.0.1:$port/echo"
  for c in 1 64; do measure "ferry-echo-${replicas}r" "http://127.0.0.1:$port/echo" "$c"; done
  stop_last
done

/usr/bin/python3 - "$results" <<'PY'
import csv, sys
rows = {(r["server"], int(r["connections"])): r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")}
def rps(s, c): return float(rows[(s, c)]["requests_per_s"])
def p50(s, c): return float(rows[(s, c)]["p50_us"])
best = max(("ferry-echo-1r", "ferry-echo-2r"), key=lambda s: rps(s, 64))
print()
print(f"ferry (best: {best}) at 64 connections: {rps(best, 64):.0f} req/s")
print(f"  vs nginx:   {rps(best, 64) / rps('nginx', 64):.2f}x   (target >= 0.5x)")
print(f"  vs FastAPI: {rps(best, 64) / rps('fastapi', 64):.2f}x   (target >= 2.5x)")
for s in ("ferry-echo-1r", "ferry-echo-2r"):
    print(f"{s} p50 at 1 connection: {p50(s, 1):.0f} us, {p50(s, 1) - p50('nginx', 1):+.0f} us vs nginx (target <= +50 us)")
PY
