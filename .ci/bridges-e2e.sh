#!/usr/bin/env bash
# End-to-end test of the bridges with third-party clients: curl publishes over HTTP (JSON
# and the legacy raw route), and mosquitto_sub (MQTT 5, -F to print the content type and
# the user properties) must receive each message with its content type and origin.
#
#   .ci/bridges-e2e.sh [binary]     (default target/debug/fluxmq-edge)
#
# Needs: curl, mosquitto-clients. Exit status 1 on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/fluxmq-edge}
[[ -x $bin ]] || { echo "bridges: $bin missing (cargo build)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "bridges: FAIL: $*" >&2
  echo "--- broker log:" >&2
  cat "$work/log" >&2 || true
  exit 1
}

cat >"$work/edge.yaml" <<'YAML'
server:
  tcp:
    v3: { addr: "127.0.0.1:0" }
    v5: { addr: "127.0.0.1:0" }
  http:
    plain: { addr: "127.0.0.1:0" }
  health_addr: "127.0.0.1:0"
log: { level: info, format: text }
YAML
"$bin" --config "$work/edge.yaml" >"$work/log" 2>&1 &
pid=$!
port() { sed -n "s/.*$1.* on \(http:\/\/\)\{0,1\}127\.0\.0\.1:\([0-9]*\).*/\2/p" "$work/log" | head -1; }
for _ in $(seq 1 100); do
  p5=$(port 'server.tcp.v5: MQTT listening'); ph=$(port 'server.http.plain: HTTP publish bridge')
  [[ -n $p5 && -n $ph ]] && break
  sleep 0.1
done
[[ -n $p5 && -n $ph ]] || fail "listeners did not come up"

# One subscriber for everything, printing topic, content type, user properties, payload.
mosquitto_sub -h 127.0.0.1 -p "$p5" -V mqttv5 -t 'bridge/#' -t 'm/#' -q 1 -C 2 -W 10 \
  -F '%t|%C|%P|%p' >"$work/sub" 2>"$work/sub.err" &
sub=$!
for _ in $(seq 1 50); do
  grep -q 'fluxmq_edge_subscriptions 2' < <(curl -s "http://127.0.0.1:$(port 'server.health_addr: health and metrics')/metrics") && break
  sleep 0.1
done

curl -sf -X POST "http://127.0.0.1:$ph/publish" -H 'Content-Type: application/json' \
  -H 'X-FluxMQ-Client-ID: curl-1' -d '{"topic":"bridge/http","payload":"MjEuNQ==","qos":1}' \
  >"$work/r1" || fail "curl POST /publish"
grep -qx '{"status":"ok"}' "$work/r1" || fail "POST /publish answered $(cat "$work/r1")"
curl -sf -X POST "http://127.0.0.1:$ph/m/dom/c/ch/temp?qos=1" -H 'Content-Type: text/plain' \
  --data-binary 22 >/dev/null || fail "curl POST /m/dom/c/ch/temp"
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$ph/publish" -d '{')
[[ $status == 400 ]] || fail "bad JSON answered $status, want 400"

wait "$sub" || fail "mosquitto_sub did not get both messages: $(cat "$work/sub" "$work/sub.err")"
echo "--- received:"; cat "$work/sub"
grep -q '^bridge/http|application/json|protocol:http client_id:curl-1|21.5$' "$work/sub" ||
  fail "JSON publish not received with content type and origin"
grep -q '^m/dom/c/ch/temp|text/plain|.*|22$' "$work/sub" || fail "raw publish not received"

kill -TERM "$pid"
wait "$pid" || fail "broker exit status $?"
pid=""
echo "bridges: OK"
