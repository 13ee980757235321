#!/usr/bin/env bash
# The tour, on a fresh Debian machine as root or on a laptop, in about three minutes:
# installs what is missing; starts redis-server (redis/redis.conf), the demo service (every
# request through the gate and recorded in its cohort, metrics on /metrics, 200 requests a
# second), Prometheus scraping it
# every second and the Pushgateway, all on free loopback ports; then lets the controller roll a
# feature 0 -> 10 -> 50 -> 100%, injects errors into the new code path and watches the
# controller roll back. Stops everything it started, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_swift
ensure_packages libhiredis-dev libssl-dev redis-server redis-tools prometheus prometheus-pushgateway curl

start_local_redis
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_local_redis
}
trap stop_all EXIT INT TERM
echo "==> redis-server on 127.0.0.1:$port (redis/redis.conf)"
redis_port=$port

echo "==> building rollout (release; the first build takes a few minutes)"
swift build -c release --product rollout 2>&1 | tail -n 1
rollout="$(swift build -c release --show-bin-path)/rollout"
export REDIS_URL="redis://127.0.0.1:$redis_port"
export ROLLOUT_AUDIT_LOG="$work/rollout_log.md"
feature=demo

demo_port=$(free_port)
"$rollout" demo-service --feature "$feature" --port "$demo_port" --load 200 > "$work/demo.log" 2>&1 &
pids+=($!)
push_port=$(free_port)
prometheus-pushgateway --web.listen-address="127.0.0.1:$push_port" --persistence.file="$work/push.store" > "$work/push.log" 2>&1 &
pids+=($!)
prom_port=$(free_port)
cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: demo
    static_configs:
      - targets: ['127.0.0.1:$demo_port']
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn > "$work/prometheus.log" 2>&1 &
pids+=($!)
echo "==> demo service on 127.0.0.1:$demo_port, Prometheus on 127.0.0.1:$prom_port, Pushgateway on 127.0.0.1:$push_port"

echo "==> rollout flags init $feature, open to everyone, and 1,000 dogfooding actors on the allow list"
"$rollout" flags init "$feature" --reason "quickstart" >/dev/null
"$rollout" flags internal-only "$feature" false --reason "open the demo" >/dev/null
# At 0% only the allow list sees the new path: that traffic is the evidence for the first step.
"$rollout" flags allow add "$feature" $(seq -f "user-%.0f" 0 999) --reason "dogfooders" >/dev/null

cat > "$work/rollout.yaml" <<YAML
prometheus: http://127.0.0.1:$prom_port
redis: $REDIS_URL
pushgateway: http://127.0.0.1:$push_port
audit_log: $ROLLOUT_AUDIT_LOG
query_timeout: 5s
features:
  $feature:
    steps: [10, 50, 100]
    dwell: 10s                       # minutes or hours in production; seconds for the tour
    cooldown_after_rollback: 10m
    rollback_to: 10
    min_requests:
      query: sum(increase(action_exec_total{provider="$feature"}[20s]))
      at_least: 5
    checks:
      - name: error_rate
        query: sum(increase(action_error_total{provider="$feature"}[20s])) / sum(increase(action_exec_total{provider="$feature"}[20s]))
        max: 0.05
      - name: latency_p95
        query: histogram_quantile(0.95, sum(rate(action_latency_seconds_bucket{provider="$feature"}[20s])) by (le))
        max: 0.3
      # The feature's own users against the rest, since the last change (the gate's
      # rollout_cohort_* counters; judged at 10% and 50%, where both cohorts exist).
      - name: cohort_errors
        type: cohort
        max_regression: 2pp
        min_requests: 500
      - name: cohort_latency             # the mean of rollout_cohort_duration_seconds, per cohort
        type: cohort
        latency: rollout_cohort_duration_seconds
        max_regression: 50ms
        min_requests: 500
YAML
seq -f "user-%.0f" 1000000 1009999 > "$work/actors.txt"

echo "==> waiting for Prometheus to scrape the demo service"
for _ in $(seq 1 60); do
  if curl -fsS "http://127.0.0.1:$prom_port/api/v1/query?query=action_exec_total" 2>/dev/null | grep -q '"value"'; then break; fi
  sleep 1
done
sleep 5

controller() {
  "$rollout" controller run --config "$work/rollout.yaml" 2>>"$work/controller.log" | sed 's/^/    /' || true
}
percent() { redis-cli -p "$redis_port" GET "flags:$feature:rollout_percent"; }

echo
echo "==> the controller promotes while the new path is healthy (a run every 5 s)"
for _ in $(seq 1 40); do
  controller
  on=$("$rollout" check "$feature" --actors-from "$work/actors.txt" | grep -c $'\ttrue$' || true)
  echo "    now at $(percent)%: $on of 10000 fresh actors get the new path"
  [ "$(percent)" = "100" ] && break
  sleep 5
done

echo
echo "==> injecting errors into the new path: POST /faults?error_rate=0.5"
curl -fsS -X POST "http://127.0.0.1:$demo_port/faults?error_rate=0.5"
for _ in $(seq 1 20); do
  sleep 5
  controller
  [ "$(percent)" = "10" ] && break
done
echo "    now at $(percent)%"

echo
echo "==> the audit log ($ROLLOUT_AUDIT_LOG):"
grep '^20' "$ROLLOUT_AUDIT_LOG" | sed 's/^/    /'
echo
echo "==> telemetry in the Pushgateway:"
curl -fsS "http://127.0.0.1:$push_port/metrics" | grep -E '^rollout_controller_(percent|runs_total|decision\{.*result="rollback")' | sed 's/^/    /'
echo
echo "Done: everything started here is being stopped."
