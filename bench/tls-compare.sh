#!/usr/bin/env bash
# The cost of MQTT over TLS, fluxmq-edge and Mosquitto (Debian) side by side in one run:
# serial full TLS 1.3 connect -> CONNACK time (median, p90, max of --connects) and broker RSS
# per idle TLS connection (--conns held open), for a TLS listener (no client certificate) and
# an mTLS one (client certificate required). Same test PKI (config/make-test-certs.sh, P-256),
# same client (`loadgen tls`: rustls, ring, no session resumption), loopback only.
#
#   bench/tls-compare.sh [--connects 200] [--conns 1000] [--rounds 1]
#
# Needs: openssl, python3; installs mosquitto with apt-get when missing. Prints a markdown
# table; writes nothing into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTS=200 CONNS=1000 ROUNDS=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --connects) CONNECTS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "tls-compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
log() { echo "tls-compare: $*" >&2; }
if ! command -v mosquitto >/dev/null 2>&1; then
  log "installing mosquitto (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --locked -p fluxmq-edge -p fluxmq-bench >&2
FLUX=target/release/fluxmq-edge
LOADGEN=target/release/loadgen
WORK=$(mktemp -d)
BPID=""
cleanup() {
  if [[ -n $BPID ]]; then kill -KILL "$BPID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
config/make-test-certs.sh "$WORK/certs" >/dev/null
C=$WORK/certs
chmod 755 "$WORK" "$C"; chmod 644 "$C"/*   # mosquitto drops to its own user when started as root

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_listening() { # PORT PID
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}
start() { # BROKER MUTUAL -> sets BPID, BPORT
  BPORT=$(free_port)
  case $1 in
    mosquitto)
      {
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$BPORT"
        printf 'log_dest stderr\nlog_type error\nmax_connections -1\nmax_queued_messages 1000\n'
        printf 'set_tcp_nodelay true\ncafile %s\ncertfile %s\nkeyfile %s\n' \
          "$C/ca.pem" "$C/server.pem" "$C/server.key"
        [[ $2 == 1 ]] && printf 'require_certificate true\n'
      } >"$WORK/mosquitto.conf"
      chmod 644 "$WORK/mosquitto.conf"
      mosquitto -c "$WORK/mosquitto.conf" 2>"$WORK/broker.log" &
      ;;
    fluxmq)
      local slot=tls extra="client_auth: none"
      [[ $2 == 1 ]] && { slot=mtls; extra="ca_file: \"$C/ca.pem\""; }
      cat >"$WORK/edge.yaml" <<YAML
server:
  tcp:
    v3: { addr: "" }
    v5: { addr: "" }
    $slot: { addr: "127.0.0.1:$BPORT", cert_file: "$C/server.pem", key_file: "$C/server.key", $extra }
  health_enabled: false
YAML
      "$FLUX" --config "$WORK/edge.yaml" 2>"$WORK/broker.log" &
      ;;
  esac
  BPID=$!
  wait_listening "$BPORT" "$BPID" || { cat "$WORK/broker.log" >&2; exit 1; }
  sleep 0.5
}
stop() {
  kill -TERM "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
  BPID=""
}

echo "| broker | listener | connect -> CONNACK median | p90 | max | RSS per idle TLS connection |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for mutual in 0 1; do
    for broker in fluxmq mosquitto; do
      start "$broker" "$mutual"
      args=(tls --port "$BPORT" --broker-pid "$BPID" --cafile "$C/ca.pem"
        --connects "$CONNECTS" --conns "$CONNS" --label "$broker")
      [[ $mutual == 1 ]] && args+=(--cert "$C/client.pem" --key "$C/client.key")
      out=$("$LOADGEN" "${args[@]}" 2>"$WORK/human") || { cat "$WORK/human" >&2; stop; exit 1; }
      stop
      log "round $round $broker $([[ $mutual == 1 ]] && echo mTLS || echo TLS): $(cat "$WORK/human")"
      python3 - "$out" "$broker" "$mutual" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
name = "fluxmq-edge" if sys.argv[2] == "fluxmq" else "Mosquitto"
kind = "mTLS" if sys.argv[3] == "1" else "TLS"
ms = lambda k: f"{j[k] / 1000:.2f} ms"
per = j.get("broker_bytes_per_tls_conn")
print(f"| {name} | {kind} | {ms('connect_median_us')} | {ms('connect_p90_us')} | "
      f"{ms('connect_max_us')} | {per / 1024:.1f} KiB ({j['connected']} conns) |")
PY
    done
  done
done
