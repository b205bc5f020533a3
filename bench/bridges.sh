#!/usr/bin/env bash
# bench/bridges.sh — the HTTP and CoAP bridges against one MQTT subscriber, same run, same
# machine: HTTP publish requests/s (keep-alive connections, POST /<topic>), CoAP NON
# publishes/s (a window of requests outstanding), then the broker's RSS with 1,000 active
# CoAP observers (one per UDP endpoint, each notified of one MQTT publish). Release builds
# of the broker and of `bridges` (bench/src/bridges.rs).
#
#   bench/bridges.sh                          # 5 s per phase, 4 HTTP connections, 1000 observers
#   SECS=10 HTTP_CONNS=8 OBSERVERS=2000 bench/bridges.sh
set -euo pipefail

SECS=${SECS:-5}
HTTP_CONNS=${HTTP_CONNS:-4}
WINDOW=${WINDOW:-32}
OBSERVERS=${OBSERVERS:-1000}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d /tmp/fluxmq-bridges.XXXXXX)"
BPID=""
cleanup() {
  [[ -n "$BPID" ]] && kill "$BPID" 2>/dev/null && wait "$BPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p fluxmq-bench && cargo build --release -q -p fluxmq-edge --bin fluxmq-edge)

cat >"$WORK/edge.yaml" <<YAML
server:
  tcp: { v3: { addr: "127.0.0.1:0" }, v5: { addr: "" } }
  http: { plain: { addr: "127.0.0.1:0" } }
  coap: { plain: { addr: "127.0.0.1:0" } }
  health_addr: "127.0.0.1:0"
broker:
  coap_max_observers: $OBSERVERS
session:
  max_sessions: $((OBSERVERS + 100))
log: { level: info }
YAML
"$TARGET/release/fluxmq-edge" --config "$WORK/edge.yaml" >"$WORK/log" 2>&1 &
BPID=$!
port() { sed -n "s/.*$1.* on [a-z]*:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p; s/.*$1.* on 127\.0\.0\.1:\([0-9]*\).*/\1/p" "$WORK/log" | head -1; }
for _ in $(seq 1 100); do
  pm=$(port 'server.tcp.v3: MQTT listening'); ph=$(port 'server.http.plain: HTTP'); pc=$(port 'server.coap.plain: CoAP')
  [[ -n $pm && -n $ph && -n $pc ]] && break
  sleep 0.1
done
[[ -n $pm && -n $ph && -n $pc ]] || { cat "$WORK/log"; echo "broker did not start" >&2; exit 1; }
echo "fluxmq-edge $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) cores, $(uname -m)"
"$TARGET/release/bridges" --pid "$BPID" --mqtt "127.0.0.1:$pm" --http "127.0.0.1:$ph" \
  --coap "127.0.0.1:$pc" --secs "$SECS" --http-conns "$HTTP_CONNS" --coap-window "$WINDOW" \
  --observers "$OBSERVERS"
hp=$(port 'server.health_addr: health and metrics')
echo "broker counters (non-zero drops and bridge answers):"
curl -s "http://127.0.0.1:$hp/metrics" |
  grep -E '^fluxmq_edge_(messages_dropped_total|http_responses_total|coap_responses_total)' | grep -v ' 0$' | sed 's/^/  /'
