#!/usr/bin/env bash
# The five-minute tour, on a fresh Debian machine as root or on a laptop:
# installs what is missing, starts a local redis-server from redis/redis.conf on a free
# loopback port, builds `rollout` in release mode, creates a demo feature and shows how many
# of 10,000 actors are on at 10, 50 and 100%, then the kill switch. Stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_swift
ensure_packages libhiredis-dev libssl-dev redis-server redis-tools

start_local_redis
echo "==> redis-server running on 127.0.0.1:$port (redis/redis.conf)"

echo "==> building rollout (release)"
swift build -c release --product rollout 2>&1 | tail -n 1
rollout="$(swift build -c release --show-bin-path)/rollout"

export REDIS_URL="redis://127.0.0.1:$port"
export ROLLOUT_AUDIT_LOG="$work/rollout_log.md"
feature=demo
seq -f "user-%.0f" 1 10000 > "$work/actors.txt"

echo
echo "==> rollout flags init $feature   (the original initial state: internal only, 0%)"
"$rollout" flags init "$feature" --reason "quickstart"
"$rollout" flags internal-only "$feature" false --reason "open the demo to everyone"

count_on() { "$rollout" check "$feature" --actors-from "$work/actors.txt" | grep -c $'\ttrue$' || true; }

on_at() { "$rollout" check "$feature" --actors-from "$work/actors.txt" --at "$1" | grep $'\ttrue$' | cut -f1 | sort; }
for percent in 10 50 100; do
  "$rollout" flags set-percent "$feature" "$percent" --reason "quickstart step to $percent%" >/dev/null
  printf '==> at %3s%%: %5s of 10000 actors are on\n' "$percent" "$(count_on)"
done

echo
on_at 10 > "$work/on10"
on_at 50 > "$work/on50"
printf '==> sticky: %s of the %s actors on at 10%% are off at 50%%\n' "$(comm -23 "$work/on10" "$work/on50" | wc -l)" "$(wc -l < "$work/on10")"
newcomer=$(comm -13 "$work/on10" "$work/on50" | sed -n 1p)
echo "==> one actor who joins between 10% and 50% ($newcomer):"
for percent in 10 50 100; do
  printf '    at %3s%%: ' "$percent"
  "$rollout" check "$feature" --actor "$newcomer" --at "$percent"
done

echo
echo "==> kill switch: rollout flags disable $feature"
"$rollout" flags disable "$feature" --reason "quickstart: kill switch drill"
printf '==> with the kill switch on: %s of 10000 actors are on\n' "$(count_on)"
"$rollout" flags enable "$feature" --reason "quickstart: drill over"

echo
echo "==> rollout flags get $feature"
"$rollout" flags get "$feature"

echo
echo "==> the audit log ($ROLLOUT_AUDIT_LOG):"
grep '^20' "$ROLLOUT_AUDIT_LOG"
echo
echo "Done. Redis is stopped; nothing was left running."
