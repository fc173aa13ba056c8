#!/usr/bin/env bash
# Schedule throughput of one `duewheel node` over HTTP: BATCHES batch
# requests of SIZE timers each (`POST /v1/timers:batch`), CLIENTS at a time,
# then the same count as single `POST /v1/timers` requests. Prints the rates
# beside /proc/loadavg.
#
#   eval "$(scripts/pg-up.sh)"; examples/deploy/http-load.sh; eval "$PG_DOWN"
#
# Needs curl, jq and DUEWHEEL_PG_DSN; DUEWHEEL_BIN names the binary
# (default target/release/duewheel, built if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DUEWHEEL_PG_DSN:?run eval \"\$(scripts/pg-up.sh)\" first}"
BATCHES=${BATCHES:-40}; SIZE=${SIZE:-500}; CLIENTS=${CLIENTS:-4}; SINGLES=${SINGLES:-2000}
BIN=${DUEWHEEL_BIN:-target/release/duewheel}
[ -x "$BIN" ] || cargo build --release -q -p duewheel-cli
WORK=$(mktemp -d)
"$BIN" node --pg "$DUEWHEEL_PG_DSN" --schema "http_load_$$" --shards 64 --node-id load \
  --listen 127.0.0.1:0 </dev/null >"$WORK/out" 2>"$WORK/log" &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE 2>/dev/null; psql_drop; rm -rf "$WORK"' EXIT
psql_drop() { :; }
for _ in $(seq 600); do [ -s "$WORK/out" ] && break; sleep 0.1; done
URL=$(sed 's/listening //' "$WORK/out")
for _ in $(seq 600); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done

FAR=$(( $(date +%s%3N) + 3600000 ))
for b in $(seq 0 $((BATCHES - 1))); do
  jq -nc --argjson b "$b" --argjson n "$SIZE" --argjson at "$FAR" \
    '{timers: [range(0; $n) | {id: ($b * $n + . + 1), deadline_ms: $at, payload: "order"}]}' \
    >"$WORK/batch-$b.json"
done
start=$(date +%s%N)
seq 0 $((BATCHES - 1)) | xargs -P "$CLIENTS" -I{} \
  curl -s -o /dev/null -w '%{http_code}\n' -XPOST "$URL/v1/timers:batch" --data-binary @"$WORK/batch-{}.json" \
  | sort | uniq -c | sed 's/^/  batch answers: /'
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "batch:  $((BATCHES * SIZE)) timers in ${ms} ms = $((BATCHES * SIZE * 1000 / ms)) timers/s ($CLIENTS clients, $SIZE per request); loadavg $(cat /proc/loadavg)"

base=$((BATCHES * SIZE + 1))
start=$(date +%s%N)
seq "$base" $((base + SINGLES - 1)) | xargs -P "$CLIENTS" -I{} \
  curl -s -o /dev/null -w '%{http_code}\n' -XPOST "$URL/v1/timers" \
  -d "{\"id\": {}, \"deadline_ms\": $FAR, \"payload\": \"order\"}" \
  | sort | uniq -c | sed 's/^/  single answers: /'
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "single: $SINGLES timers in ${ms} ms = $((SINGLES * 1000 / ms)) timers/s ($CLIENTS clients, one curl process per request); loadavg $(cat /proc/loadavg)"
curl -s "$URL/metrics" | grep '^duewheel_node_scheduled_total'
