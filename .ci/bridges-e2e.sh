#!/usr/bin/env bash
# End-to-end test of the bridges with third-party clients: curl publishes over HTTP (JSON
# and the legacy raw route) and libcoap's coap-client over CoAP (CON, NON, a block-wise
# upload), and mosquitto_sub (MQTT 5, -F to print the content type and the user
# properties) must receive each message with its content type and origin. Then coap-client
# observes a topic filter (Observe, RFC 7641) and must get what mosquitto_pub publishes,
# including a message larger than one block (Block2).
#
#   .ci/bridges-e2e.sh [binary]     (default target/debug/fluxmq-edge)
#
# Needs: curl, mosquitto-clients, libcoap3-bin. Exit status 1 on any mismatch.
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
  coap:
    plain: { addr: "127.0.0.1:0" }
  health_addr: "127.0.0.1:0"
log: { level: info, format: text }
YAML
"$bin" --config "$work/edge.yaml" >"$work/log" 2>&1 &
pid=$!
port() { sed -n "s/.*$1.* on \(http:\/\/\)\{0,1\}127\.0\.0\.1:\([0-9]*\).*/\2/p" "$work/log" | head -1; }
for _ in $(seq 1 100); do
  p5=$(port 'server.tcp.v5: MQTT listening'); ph=$(port 'server.http.plain: HTTP publish bridge')
  pc=$(sed -n 's/.*server.coap.plain: CoAP bridge on coap:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/log" | head -1)
  [[ -n $p5 && -n $ph && -n $pc ]] && break
  sleep 0.1
done
[[ -n $p5 && -n $ph && -n $pc ]] || fail "listeners did not come up"
coap=(coap-client-notls)
command -v coap-client-notls >/dev/null || coap=(coap-client)

# One subscriber for everything, printing topic, content type, user properties, payload.
mosquitto_sub -h 127.0.0.1 -p "$p5" -V mqttv5 -t 'bridge/#' -t 'm/#' -q 1 -C 5 -W 10 \
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

# CoAP: CON with Content-Format 0 and a client id, NON on the legacy path, and a 3000-byte
# upload in 1024-byte blocks (Block1).
out=$("${coap[@]}" -m post -t 0 -e 21.5 "coap://127.0.0.1:$pc/bridge/coap?client_id=libcoap") ||
  fail "coap-client CON POST"
[[ $out == ok ]] || fail "CON POST answered '$out'"
"${coap[@]}" -N -m put -e non "coap://127.0.0.1:$pc/mqtt/publish/bridge/non" >/dev/null ||
  fail "coap-client NON PUT"
head -c 3000 /dev/zero | tr '\0' 'b' >"$work/big"
"${coap[@]}" -m post -b 1024 -f "$work/big" "coap://127.0.0.1:$pc/bridge/big" >/dev/null ||
  fail "coap-client block-wise POST"

wait "$sub" || fail "mosquitto_sub did not get every message: $(cat "$work/sub" "$work/sub.err")"
echo "--- received:"; cut -c1-100 "$work/sub"
grep -q '^bridge/http|application/json|protocol:http client_id:curl-1|21.5$' "$work/sub" ||
  fail "JSON publish not received with content type and origin"
grep -q '^m/dom/c/ch/temp|text/plain|.*|22$' "$work/sub" || fail "raw publish not received"
grep -q '^bridge/coap|text/plain; charset=utf-8|protocol:coap client_id:libcoap|21.5$' "$work/sub" ||
  fail "CoAP CON publish not received with content type and origin"
grep -q '^bridge/non||protocol:coap client_id:coap:127.0.0.1:[0-9]*|non$' "$work/sub" ||
  fail "CoAP NON publish not received"
grep -q "^bridge/big||protocol:coap client_id:coap:127.0.0.1:[0-9]*|$(cat "$work/big")\$" "$work/sub" ||
  fail "CoAP block-wise upload not received whole"

# Observe: coap-client observes obs/+ (5 s); MQTT publishes reach it, one larger than a block.
"${coap[@]}" -s 5 -B 6 "coap://127.0.0.1:$pc/obs/+" >"$work/obs" 2>"$work/obs.err" &
obs=$!
hp=$(port 'server.health_addr: health and metrics')
for _ in $(seq 1 50); do
  curl -s "http://127.0.0.1:$hp/metrics" | grep -q '^fluxmq_edge_coap_observers_registered_total 1$' && break
  sleep 0.1
done
mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -t obs/a -m hello-observer
head -c 2500 /dev/zero | tr '\0' 'z' >"$work/bigobs"
mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -t obs/b -f "$work/bigobs"
wait "$obs" || true
grep -q hello-observer "$work/obs" || fail "observer did not get the MQTT publish: $(cat "$work/obs" "$work/obs.err")"
grep -q "$(cat "$work/bigobs")" "$work/obs" || fail "observer did not get the large message whole (Block2)"

kill -TERM "$pid"
wait "$pid" || fail "broker exit status $?"
pid=""
echo "bridges: OK"
