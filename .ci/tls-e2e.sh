#!/usr/bin/env bash
# End-to-end test of MQTT over TLS and mutual TLS with third-party clients: a test PKI from
# config/make-test-certs.sh (openssl), the broker with server.tcp.tls (client_auth none) and
# server.tcp.mtls (client certificate required), then mosquitto_sub / mosquitto_pub (3.1.1
# and 5) over both; a client without a certificate is refused on mtls; SIGHUP makes the
# broker serve a renewed certificate (checked with openssl s_client).
#
#   .ci/tls-e2e.sh [binary] [runner...]   e.g. .ci/tls-e2e.sh target/release/fluxmq-edge
#       .ci/tls-e2e.sh target/aarch64-unknown-linux-musl/release/fluxmq-edge qemu-aarch64-static
#
# Needs: openssl, mosquitto-clients, curl. Exit status 1 on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/fluxmq-edge}
shift || true
runner=("$@")
[[ -x $bin ]] || { echo "tls-e2e: $bin missing" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "tls-e2e: FAIL: $*" >&2
  echo "--- broker log:" >&2
  cat "$work/log" >&2 || true
  exit 1
}

config/make-test-certs.sh "$work/certs" >/dev/null
c=$work/certs
cat >"$work/edge.yaml" <<YAML
server:
  tcp:
    v3: { addr: "" }
    v5: { addr: "" }
    tls: { addr: "127.0.0.1:0", cert_file: "$c/server.pem", key_file: "$c/server.key", client_auth: none }
    mtls: { addr: "127.0.0.1:0", cert_file: "$c/server.pem", key_file: "$c/server.key", ca_file: "$c/ca.pem", use_identity_as_username: true }
  health_addr: "127.0.0.1:0"
log: { level: info, format: text }
YAML
"${runner[@]}" "$bin" --config "$work/edge.yaml" >"$work/log" 2>&1 &
pid=$!
port() { sed -n "s/.*$1.* on \(http:\/\/\)\{0,1\}127\.0\.0\.1:\([0-9]*\).*/\2/p" "$work/log" | head -1; }
for _ in $(seq 1 100); do
  pt=$(port 'server.tcp.tls: MQTT listening'); pm=$(port 'server.tcp.mtls: MQTT listening')
  ph=$(port 'server.health_addr: health and metrics')
  [[ -n $pt && -n $pm && -n $ph ]] && break
  sleep 0.1
done
[[ -n $pt && -n $pm && -n $ph ]] || fail "listeners did not come up"
metric() { curl -s "http://127.0.0.1:$ph/metrics" | awk -v s="$1" '$1 == s { print $2 }'; }
tls=(-h localhost --cafile "$c/ca.pem")
mtls=(-h localhost --cafile "$c/ca.pem" --cert "$c/client.pem" --key "$c/client.key")

# A subscriber on mTLS (MQTT 5), publishers on TLS (3.1.1) and mTLS (5).
mosquitto_sub "${mtls[@]}" -p "$pm" -V mqttv5 -t 'tls/#' -q 1 -C 2 -W 20 -v \
  >"$work/sub" 2>"$work/sub.err" &
sub=$!
for _ in $(seq 1 100); do
  [[ $(metric fluxmq_edge_subscriptions) == 1 ]] && break
  sleep 0.1
done
[[ $(metric fluxmq_edge_subscriptions) == 1 ]] || fail "subscriber over mTLS not subscribed: $(cat "$work/sub.err")"
mosquitto_pub "${tls[@]}" -p "$pt" -V mqttv311 -t tls/plain -m 'over tls' -q 1 ||
  fail "mosquitto_pub over TLS"
mosquitto_pub "${mtls[@]}" -p "$pm" -V mqttv5 -t tls/mutual -m 'over mtls' -q 1 ||
  fail "mosquitto_pub over mTLS"
wait "$sub" || fail "mosquitto_sub did not get both messages: $(cat "$work/sub" "$work/sub.err")"
echo "--- received:"; cat "$work/sub"
grep -qx 'tls/plain over tls' "$work/sub" || fail "TLS publish not received"
grep -qx 'tls/mutual over mtls' "$work/sub" || fail "mTLS publish not received"

# mTLS without a client certificate: refused in the handshake, counted.
if mosquitto_pub "${tls[@]}" -p "$pm" -t tls/x -m no 2>/dev/null; then
  fail "mTLS accepted a client without a certificate"
fi
for _ in $(seq 1 50); do
  [[ $(metric 'fluxmq_edge_connections_closed_total{reason="tls_handshake_failed"}') -ge 1 ]] && break
  sleep 0.1
done
[[ $(metric 'fluxmq_edge_connections_closed_total{reason="tls_handshake_failed"}') -ge 1 ]] ||
  fail "refused handshake not counted"

# SIGHUP: a renewed certificate (from a new CA) is served to new handshakes.
config/make-test-certs.sh "$work/new" >/dev/null
cp "$work/new/server.pem" "$c/server.pem.tmp" && mv "$c/server.pem.tmp" "$c/server.pem"
cp "$work/new/server.key" "$c/server.key.tmp" && mv "$c/server.key.tmp" "$c/server.key"
kill -HUP "$pid"
for _ in $(seq 1 100); do
  [[ $(metric fluxmq_edge_tls_reloads_total) -ge 2 ]] && break # both listeners
  sleep 0.1
done
[[ $(metric fluxmq_edge_tls_reloads_total) -ge 2 ]] || fail "SIGHUP did not reload the certificates"
want=$(openssl x509 -in "$work/new/server.pem" -noout -fingerprint -sha256)
got=$(openssl s_client -connect "127.0.0.1:$pt" -servername localhost </dev/null 2>/dev/null |
  openssl x509 -noout -fingerprint -sha256)
[[ $got == "$want" ]] || fail "after SIGHUP the broker serves $got, want $want"
mosquitto_pub -h localhost --cafile "$work/new/ca.pem" -p "$pt" -t tls/renewed -m ok ||
  fail "mosquitto_pub against the renewed certificate"

kill -TERM "$pid"
wait "$pid" || fail "broker exit status $?"
pid=""
echo "tls-e2e: OK (TLS and mTLS with mosquitto clients, refusal, SIGHUP reload)"
