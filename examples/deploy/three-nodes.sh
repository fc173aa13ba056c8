#!/usr/bin/env bash
# Three `duewheel node`s behind HTTP on one throwaway PostgreSQL, and a curl
# client that schedules, cancels and consumes through them, then drains one
# node with SIGTERM. Everything it started stops when it exits.
#
#   examples/deploy/three-nodes.sh            # from the repository root
#
# Needs curl and jq; builds `duewheel` (release) unless DUEWHEEL_BIN names
# one. Nodes listen on 127.0.0.1:8081-8083 (DUEWHEEL_DEMO_PORT=8081 moves
# them); PostgreSQL on DUEWHEEL_PG_PORT (default 54329, unix socket only).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${DUEWHEEL_BIN:-target/release/duewheel}
if [ -z "${DUEWHEEL_BIN:-}" ]; then
  cargo build --release -q -p duewheel-cli
fi
BASE=${DUEWHEEL_DEMO_PORT:-8081}
LOGS=$(mktemp -d)
PIDS=()

eval "$(scripts/pg-up.sh)"
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  eval "$PG_DOWN" >/dev/null 2>&1 || true
  rm -rf "$LOGS"
}
trap stop_all EXIT

for i in 1 2 3; do
  DUEWHEEL_PG="$DUEWHEEL_PG_DSN" DUEWHEEL_NODE_ID="node-$i" \
    DUEWHEEL_LISTEN="127.0.0.1:$((BASE + i - 1))" \
    "$BIN" node --config examples/deploy/node.toml \
    </dev/null >"$LOGS/node-$i.out" 2>"$LOGS/node-$i.log" &
  PIDS+=($!)
done
url() { echo "http://127.0.0.1:$((BASE + $1 - 1))"; }

echo "== waiting until every node is ready (holds its leases)"
for i in 1 2 3; do
  for _ in $(seq 300); do
    curl -sf "$(url $i)/healthz" >/dev/null && break
    sleep 0.1
  done
  echo "node-$i: $(curl -s "$(url $i)/healthz")"
done

NOW=$(($(date +%s%3N)))
echo "== schedule: one timer through node-1, a batch through node-2"
curl -s -XPOST "$(url 1)/v1/timers" \
  -d "{\"id\": 1, \"delay_ms\": 1000, \"payload\": \"order 1 unpaid\"}" | jq -c .
curl -s -XPOST "$(url 2)/v1/timers:batch" -d "{\"timers\": [
  {\"id\": 2, \"deadline_ms\": $((NOW + 1500)), \"payload\": \"order 2 unpaid\"},
  {\"id\": 3, \"deadline_ms\": $((NOW + 1500)), \"payload\": \"order 3 unpaid\"},
  {\"id\": 4, \"deadline_ms\": $((NOW + 60000)), \"payload\": \"order 4 unpaid\"}]}" | jq -c .
echo "== order 4 was paid: cancel it through node-3 (any node takes any id)"
curl -s -XDELETE "$(url 3)/v1/timers/4" | jq -c .
echo "== a duplicate and a bad request"
curl -s -XPOST "$(url 3)/v1/timers" -d '{"id": 1, "delay_ms": 5, "payload": "other"}' -w ' HTTP %{http_code}\n'
curl -s -XPOST "$(url 3)/v1/timers" -d '{"id": 5}' -w ' HTTP %{http_code}\n'

echo "== consume group billing on every node (an event comes from its shard's owner; ack it there)"
seen=0
for _ in $(seq 20); do
  for i in 1 2 3; do
    events=$(curl -s "$(url $i)/v1/groups/billing/events?max=10&wait_ms=200")
    n=$(echo "$events" | jq length)
    [ "$n" = 0 ] && continue
    echo "node-$i delivered: $(echo "$events" | jq -c '[.[] | {id, kind, attempt, token, payload}]')"
    acks=$(echo "$events" | jq -c '[.[] | {id, token}]')
    echo "  acked: $(curl -s -XPOST "$(url $i)/v1/groups/billing/acks" -d "$acks" | jq -c '[.results[].outcome]')"
    seen=$((seen + n))
  done
  [ "$seen" -ge 3 ] && break
done
echo "billing consumed $seen of 3 expiries (mail has its own copy, unconsumed here: redelivered after ack_timeout_ms)"

echo "== drain node-1 (SIGTERM): it hands its leases back; the others take its shards at once"
kill -TERM "${PIDS[0]}"; wait "${PIDS[0]}"; echo "node-1 exited $?"
sleep 1
for i in 2 3; do echo "node-$i: $(curl -s "$(url $i)/healthz")"; done
echo "== node-1's log"
cat "$LOGS/node-1.log"
echo "== node-2 metrics (excerpt)"
curl -s "$(url 2)/metrics" | grep -E '^duewheel_node_(owned_shards|scheduled_total|acked_total|shards_acquired_total)[{ ]'
