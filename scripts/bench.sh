#!/usr/bin/env bash
# Reproduces the figures in docs/performance.md: builds in release mode, starts its own
# redis-server on a free loopback port, runs the benchmarks, compares `rollout check
# --actors-from` over 1,000,000 ids with a C program doing the same work, and counts heap
# allocations per gate check. Stops what it started. BENCH_ONLY=gate|check|allocations|controller|fleet|failover|hello|serve|cohort
# runs one section (the controller section doubles as the release-build smoke run; fleet, about
# 3 minutes, runs only when asked for: 200 gates x 1,000 features against one redis-server;
# failover, about 1 minute, runs only when asked for: a Sentinel topology per round, its primary
# SIGKILLed, BENCH_FAILOVER_ROUNDS=8 rounds, BENCH_FAILOVER_THREADS=1 checking thread; hello,
# a few seconds, runs only when asked for: what HELLO 2 adds to a connect; cohort: the cohort
# comparison's simulation, BENCH_COHORT_ROLLOUTS=10000 rollouts per scenario checked 144 times
# each, seeded with BENCH_COHORT_SEED=13, no server).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_swift
ensure_packages libhiredis-dev libssl-dev redis-server redis-tools gcc

start_local_redis
url="redis://127.0.0.1:$port"

# HELLO's cost is measured on raw sockets: no build needed.
if [ "${BENCH_ONLY:-}" = "hello" ]; then
  echo "== HELLO 2 in the connect: one connect (TCP, handshake, first PING), ${BENCH_HELLO_CONNECTS:-3000} of each, medians"
  ensure_packages python3
  python3 scripts/bench/hello_cost.py "$port" "${BENCH_HELLO_CONNECTS:-3000}"
  exit 0
fi

echo "==> building (release)"
swift build -c release --product rollout 2>&1 | tail -n 1
swift build -c release --product rollout-bench 2>&1 | tail -n 1
bin=$(swift build -c release --show-bin-path)
want() { [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = "$1" ]; }

if want gate; then
echo
"$bin/rollout-bench" "$url" "${BENCH_ITERATIONS:-2000000}"
fi

if want check; then
echo
echo "== rollout check --actors-from over 1,000,000 ids (best of 3)"
seq -f "user-%.0f" 1 1000000 > "$work/ids.txt"
cc -O2 -o "$work/check_baseline" scripts/bench/check_baseline.c -lcrypto
redis-cli -p "$port" SET flags:demo:rollout_percent 37.125 >/dev/null
best() {
  local best_ms=""
  for _ in 1 2 3; do
    local start end ms
    start=$(date +%s%N)
    "$@" > "$work/out.txt"
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    if [ -z "$best_ms" ] || [ "$ms" -lt "$best_ms" ]; then best_ms=$ms; fi
  done
  echo "$best_ms"
}
c_ms=$(best "$work/check_baseline" demo 37125 "$work/ids.txt")
cp "$work/out.txt" "$work/c.txt"
swift_ms=$(best env REDIS_URL="$url" "$bin/rollout" check demo --actors-from "$work/ids.txt")
if cmp -s "$work/c.txt" "$work/out.txt"; then same="identical answers"; else same="ANSWERS DIFFER"; fi
echo "C (SHA256_Init/Update/Final, stdio): ${c_ms} ms"
echo "rollout check --actors-from:         ${swift_ms} ms  ($same; budget: at most 2x the C time)"
awk -v c="$c_ms" -v s="$swift_ms" 'BEGIN { printf "ratio rollout / C = %.2f\n", s / c }'
fi

if want allocations; then
echo
echo "== heap allocations per gate check (LD_PRELOAD counter)"
cc -O2 -shared -fPIC -o "$work/count_mallocs.so" scripts/bench/count_mallocs.c
allocs() {
  LD_PRELOAD="$work/count_mallocs.so" "$bin/rollout-bench" --checks "$1" "$url" 2>&1 >/dev/null | sed -n 's/^heap allocations: //p' | tail -n 1
}
small=$(allocs 1000)
large=$(allocs 1001000)
awk -v a="$small" -v b="$large" 'BEGIN { printf "allocations: %d for 1,000 checks, %d for 1,001,000: %.4f per check\n", a, b, (b - a) / 1000000 }'
fi

if [ "${BENCH_ONLY:-}" = "fleet" ]; then
echo
echo "== a fleet on one redis-server: 200 gates x 1,000 features, 60 s, push on and off"
"$bin/rollout-bench" --fleet 200 1000 60 on "$url" 2>&1 | grep '^fleet:'
"$bin/rollout-bench" --fleet 200 1000 60 off "$url" 2>&1 | grep '^fleet:'
fi

if [ "${BENCH_ONLY:-}" = "failover" ]; then
echo
echo "== the failover as the gate sees it: primary SIGKILLed under two gates (readFrom=primary, readFrom=replica)"
# The bench starts and stops its own topology (RolloutTestSupport's SentinelTopology: a primary,
# two replicas, three sentinels) in a process group of its own, so the trap stops every server
# even when the bench itself crashed; their folders are under $work.
TMPDIR="$work/" setsid "$bin/rollout-bench" --failover "${BENCH_FAILOVER_ROUNDS:-8}" "${BENCH_FAILOVER_THREADS:-1}" &
failover_pid=$!
trap 'kill -KILL -- "-$failover_pid" 2>/dev/null || true; stop_local_redis' EXIT INT TERM
wait "$failover_pid"
trap stop_local_redis EXIT INT TERM
fi

if want cohort; then
echo
echo "== the cohort comparison, simulated: false alarms, detection, an outside incident"
"$bin/rollout-bench" --cohort "${BENCH_COHORT_ROLLOUTS:-10000}" "${BENCH_COHORT_SEED:-13}"
fi

if want controller; then
echo
echo "== rollout controller run over 1,000 features x 3 checks (best of 3)"
ensure_packages prometheus prometheus-pushgateway curl libcurl4-openssl-dev
push_port=$(free_port)
prometheus-pushgateway --web.listen-address="127.0.0.1:$push_port" --persistence.file="$work/push.store" > "$work/push.log" 2>&1 &
bench_pids=($!)
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: bench
    honor_labels: true
    static_configs:
      - targets: ['127.0.0.1:$push_port']
YAML
trap 'kill "${bench_pids[@]}" 2>/dev/null || true; stop_local_redis' EXIT INT TERM
# Prometheus on a free port, started again on another one if it exits before it is ready (its
# port taken between the choice and its bind); its log is shown when it never gets ready.
prom_ready=""
for _ in 1 2 3; do
  prom_port=$(free_port)
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
  prom_pid=$!
  bench_pids+=("$prom_pid")
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$prom_port/-/ready" >/dev/null 2>&1; then prom_ready=1; break; fi
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$prom_ready" ] && break
  kill "$prom_pid" 2>/dev/null || true
done
if [ -z "$prom_ready" ]; then
  echo "FAILED: Prometheus did not get ready; its log:" >&2
  tail -n 30 "$work/prometheus.log" >&2
  exit 1
fi
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$push_port/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
# Three series per feature, pushed once; Prometheus scrapes them from the Pushgateway.
awk 'BEGIN { for (i = 0; i < 1000; i++) printf "bench_error_ratio{feature=\"f%d\"} 0.001\nbench_latency_p95{feature=\"f%d\"} 0.2\nbench_saturation{feature=\"f%d\"} 0.5\n", i, i, i }' \
  | curl -fsS --data-binary @- "http://127.0.0.1:$push_port/metrics/job/bench"
{
  echo "prometheus: http://127.0.0.1:$prom_port"
  echo "redis: $url"
  echo "audit_log: $work/bench_log.md"
  echo "query_timeout: 10s"
  echo "features:"
  for i in $(seq 0 999); do
    cat <<YAML
  f$i:
    steps: [10, 50, 100]
    dwell: 0s
    checks:
      - {name: error_rate, query: 'max(bench_error_ratio{feature="f$i"})', max: 0.01}
      - {name: latency_p95, query: 'max(bench_latency_p95{feature="f$i"})', max: 0.5}
      - {name: saturation, query: 'max(bench_saturation{feature="f$i"})', max: 0.9}
YAML
  done
} > "$work/bench.yaml"
scraped=""
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$prom_port/api/v1/query?query=count(bench_saturation)" 2>/dev/null | grep -q '"1000"'; then scraped=1; break; fi
  sleep 0.5
done
if [ -z "$scraped" ]; then
  echo "FAILED: Prometheus never held the 3,000 pushed series; its log:" >&2
  tail -n 30 "$work/prometheus.log" >&2
  exit 1
fi
# The baseline, measured side by side: the same 3,000 query strings, one per check per feature,
# POST /api/v1/query one after another over one keep-alive connection (libcurl, one handle).
awk 'BEGIN { for (i = 0; i < 1000; i++) printf "max(bench_error_ratio{feature=\"f%d\"})\nmax(bench_latency_p95{feature=\"f%d\"})\nmax(bench_saturation{feature=\"f%d\"})\n", i, i, i }' \
  > "$work/queries.txt"
cc -O2 -o "$work/prometheus_baseline" scripts/bench/prometheus_baseline.c -lcurl
best_baseline=""
for _ in 1 2 3; do
  start=$(date +%s%N)
  "$work/prometheus_baseline" "http://127.0.0.1:$prom_port" "$work/queries.txt" > "$work/baseline.txt"
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  if [ -z "$best_baseline" ] || [ "$ms" -lt "$best_baseline" ]; then best_baseline=$ms; fi
done
best_run=""
best_cpu=""
for _ in 1 2 3; do
  start=$(date +%s%N)
  status=0
  # The CPU time (user + sys) moves much less than wall time on a shared machine.
  /usr/bin/time -o "$work/run.cpu" -f "%U %S" \
    "$bin/rollout" controller run --config "$work/bench.yaml" > "$work/run.txt" 2> "$work/run.err" || status=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  cpu=$(awk '{ printf "%d", ($1 + $2) * 1000 }' "$work/run.cpu")
  if [ -z "$best_cpu" ] || [ "$cpu" -lt "$best_cpu" ]; then best_cpu=$cpu; fi
  if [ "$status" -ne 0 ]; then
    # The release build once crashed here while every debug test passed: never hide it.
    echo "FAILED: the release controller run exited $status" >&2
    tail -n 20 "$work/run.err" >&2
    exit 1
  fi
  if [ -z "$best_run" ] || [ "$ms" -lt "$best_run" ]; then best_run=$ms; fi
done
echo "promotions in the last run: $(grep -c -- '-> promote' "$work/run.txt" || true) of 1000; holds: $(grep -c -- '-> hold' "$work/run.txt" || true)"
echo "one run, 1000 features x 3 queries, locks and compare-and-set writes: ${best_run} ms (budget: within 5000 ms), CPU user+sys ${best_cpu} ms"
if [ -n "${BENCH_PERF:-}" ]; then
  # One more run under perf (BENCH_PERF=record|stat), its report in $BENCH_PERF_OUT, from an
  # empty Redis so that it promotes every feature like the first run.
  redis-cli -p "$port" FLUSHALL >/dev/null
  case "$BENCH_PERF" in
    record) perf record -q -F 1999 --call-graph dwarf -o "${BENCH_PERF_OUT:-/tmp/controller.perf}" \
      "$bin/rollout" controller run --config "$work/bench.yaml" > /dev/null 2>&1 ;;
    stat) perf stat -o "${BENCH_PERF_OUT:-/tmp/controller.perfstat}" "$bin/rollout" controller run --config "$work/bench.yaml" > /dev/null 2>&1 ;;
  esac
fi
echo "baseline, the same 3000 queries sent sequentially over one keep-alive connection (C, libcurl): ${best_baseline} ms ($(cat "$work/baseline.txt"))"
awk -v a="$best_run" -v b="$best_baseline" 'BEGIN { printf "controller / baseline: %.2fx (target: within 1.2x)\n", a / b }'
fi

if want serve; then
echo
echo "== rollout serve: OFREP over loopback with wrk (2 threads, 32 connections, 10 s each)"
ensure_packages wrk curl
# 1,000 features for the bulk evaluation; the single-flag one asks for checkout at 37.5%.
awk 'BEGIN { for (i = 0; i < 1000; i++) printf "SET flags:f%d:rollout_percent %d\n", i, i % 101 }' | redis-cli -p "$port" >/dev/null
redis-cli -p "$port" SET flags:checkout:rollout_percent 37.5 >/dev/null
serve_port=$(free_port)
REDIS_URL="$url" "$bin/rollout" serve --listen "127.0.0.1:$serve_port" > "$work/serve.log" 2>&1 &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; stop_local_redis' EXIT INT TERM
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$serve_port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
# Both the baseline and the evaluation go through a request() function returning a request made
# once, so wrk, on the same 2 cores, costs the same for each: formatting a request per call in
# Lua cost wrk enough CPU to lower the evaluation's figure by itself.
cat > "$work/health.lua" <<'LUA'
local made = wrk.format("GET", "/healthz")
request = function() return made end
LUA
cat > "$work/single.lua" <<'LUA'
-- 1,000 subjects, one after the other: the bucket rule runs on every request.
local made = {}
for i = 1, 1000 do
  made[i] = wrk.format("POST", "/ofrep/v1/evaluate/flags/checkout", {["Content-Type"] = "application/json"},
    '{"context":{"targetingKey":"user-' .. i .. '"}}')
end
local n = 0
request = function()
  n = n % 1000 + 1
  return made[n]
end
LUA
cat > "$work/bulk.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"context":{"targetingKey":"user-1"}}'
LUA
# Requests per second, p99, and the server's CPU time per request (from /proc: what a busy
# machine changes least).
run_wrk() {
  local before after
  before=$(awk '{ print $14 + $15 }' "/proc/$serve_pid/stat")
  wrk -t2 -c32 -d10s --latency "$@" > "$work/wrk.txt" 2>&1
  after=$(awk '{ print $14 + $15 }' "/proc/$serve_pid/stat")
  awk -v ticks="$((after - before))" -v hz="$(getconf CLK_TCK)" '/requests in/ { n = $1 } /Requests\/sec/ { rps = $2 } /^ +99%/ { p99 = $2 } /Non-2xx/ { bad = $NF }
    END { printf "%s req/s, p99 %s, server CPU %.1f us/request%s\n", rps, p99, ticks / hz * 1e6 / n, (bad ? ", NON-2XX " bad : "") }' "$work/wrk.txt"
}
health=$(run_wrk -s "$work/health.lua" "http://127.0.0.1:$serve_port")
single=$(run_wrk -s "$work/single.lua" "http://127.0.0.1:$serve_port")
bulk=$(run_wrk -s "$work/bulk.lua" "http://127.0.0.1:$serve_port/ofrep/v1/evaluate/flags")
echo "GET /healthz (baseline):                      $health"
echo "POST /ofrep/v1/evaluate/flags/checkout:       $single"
echo "POST /ofrep/v1/evaluate/flags (1,001 flags):  $bulk"
awk -v a="${single%% *}" -v b="${health%% *}" 'BEGIN { printf "single evaluation / healthz throughput: %.2f (goal: at least 0.8)\n", a / b }'
kill "$serve_pid" 2>/dev/null || true
fi
