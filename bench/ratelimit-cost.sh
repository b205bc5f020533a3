#!/usr/bin/env bash
# bench/ratelimit-cost.sh — the rate limiter's cost on the publish path over real sockets:
# fluxmq-edge with `ratelimit` off, then on but never reached (message rate 1e9/s, burst
# 2^32-1; connection and subscribe limits at their defaults), alternating in one run, each
# a fresh broker measured by `loadgen` (1->1, MQTT 3.1.1). Prints msgs/s and broker CPU per
# message for every run, then the medians. The in-process `cargo bench --bench hotpath --
# ratelimit` is the precise figure; this is the end-to-end cross-check.
#
#   bench/ratelimit-cost.sh                      # 3 rounds x 5 s, QoS 0
#   ROUNDS=5 DURATION=10 QOS=1 bench/ratelimit-cost.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
QOS=${QOS:-0}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d /tmp/fluxmq-rlcost.XXXXXX)"
BPID=""
cleanup() {
  [[ -n "$BPID" ]] && kill "$BPID" 2>/dev/null && wait "$BPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p fluxmq-bench && cargo build --release -q -p fluxmq-edge --bin fluxmq-edge)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

run_one() { # mode (off|on) -> prints "msgs_per_s broker_cpu_us_per_msg"
  local mode=$1 p3 ph
  p3=$(free_port)
  ph=$(free_port)
  {
    echo "server:"
    echo "  tcp: { v3: { addr: \"127.0.0.1:$p3\" }, v5: { addr: \"\" } }"
    echo "  health_addr: \"127.0.0.1:$ph\""
    if [[ $mode == on ]]; then
      echo "ratelimit: { enabled: true, message: { rate: 1000000000, burst: 4294967295 } }"
    fi
  } >"$WORK/edge.yaml"
  "$TARGET/release/fluxmq-edge" --config "$WORK/edge.yaml" >"$WORK/broker-$mode.log" 2>&1 &
  BPID=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p3") 2>/dev/null && break
    sleep 0.05
  done
  "$TARGET/release/loadgen" --port "$p3" --broker-pid "$BPID" --pattern 1to1 --qos "$QOS" \
    --duration "$DURATION" --label "ratelimit-$mode" 2>/dev/null |
    python3 -c 'import json,sys; j=json.loads(sys.stdin.readline()); print(round(j["msgs_per_s"]), j.get("broker_cpu_us_per_msg"), j.get("loss_pct", j.get("loss_percent", "")))'
  kill "$BPID" && wait "$BPID" 2>/dev/null || true
  BPID=""
}

declare -A RATES CPUS
echo "round mode msgs/s broker_cpu_us/msg loss"
for r in $(seq "$ROUNDS"); do
  for mode in off on; do
    read -r rate cpu loss < <(run_one "$mode")
    echo "$r $mode $rate $cpu $loss"
    RATES[$mode]+="$rate "
    CPUS[$mode]+="$cpu "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for mode in off on; do
  echo "median $mode: $(echo "${RATES[$mode]}" | median) msgs/s, $(echo "${CPUS[$mode]}" | median) us/msg broker CPU"
done
