#!/usr/bin/env bash
# End-to-end test of a cross-built broker: runs the ARM binary under qemu-user with a board
# profile and a site file on loopback, then native mosquitto clients publish and subscribe
# through it (MQTT 3.1.1 and 5, QoS 0/1/2, retained, a multi-segment payload), checks
# /health and /metrics, and stops it with SIGTERM. Also prints the idle RSS of the broker
# under qemu against an emulator baseline (a trivial static C program under the same qemu):
# only the difference means anything (qemu-user's RSS includes the emulator and its
# translated code).
#
#   cross/e2e-qemu.sh aarch64-unknown-linux-musl [binary]
#   cross/e2e-qemu.sh armv7-unknown-linux-gnueabihf
#
# Needs: qemu-user-static, mosquitto-clients, the target's cross gcc (for the baseline).
# Exit status 1 on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-aarch64-unknown-linux-musl}
bin=${2:-target/$target/release/fluxmq-edge}
case "$target" in
  aarch64-unknown-linux-musl) qemu=(qemu-aarch64-static); cc=aarch64-linux-gnu-gcc; board=rpi-zero-2w ;;
  aarch64-unknown-linux-gnu) qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu); cc=aarch64-linux-gnu-gcc; board=rpi-zero-2w ;;
  armv7-unknown-linux-gnueabihf) qemu=(qemu-arm-static -L /usr/arm-linux-gnueabihf); cc=arm-linux-gnueabihf-gcc; board=armv7-64m ;;
  armv7-unknown-linux-musleabihf) qemu=(qemu-arm-static); cc=arm-linux-gnueabihf-gcc; board=armv7-64m ;;
  *) echo "e2e: unknown target $target" >&2; exit 2 ;;
esac
board=${BOARD:-$board}
# Idle connections opened to measure the per-connection RSS: below the board's per-listener cap.
idle_conns=${IDLE_CONNS:-$([[ $board == armv7-64m ]] && echo 30 || echo 100)}
[[ -x $bin ]] || { echo "e2e: $bin missing (cross/build-all.sh builds it)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "e2e [$target]: FAIL: $*" >&2
  echo "--- broker log:" >&2
  cat "$work/log" >&2 || true
  exit 1
}
log() { echo "e2e [$target]: $*"; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- emulator baseline: a trivial static program under the same qemu ----------------------
printf '#include <unistd.h>\nint main(void) { sleep(30); return 0; }\n' >"$work/idle.c"
baseline=""
if "$cc" -static -O2 -o "$work/idle" "$work/idle.c" 2>/dev/null; then
  "${qemu[0]}" "$work/idle" &
  bpid=$!
  sleep 2
  baseline=$(rss_kib "$bpid")
  kill "$bpid" 2>/dev/null || true
  wait "$bpid" 2>/dev/null || true
fi

# ---- start the broker: board profile + a site file on loopback, ports picked by the OS -----
cat >"$work/site.yaml" <<'EOF'
server:
  tcp:
    v3: { addr: "127.0.0.1:0" }
    v5: { addr: "127.0.0.1:0" }
  health_enabled: true
  health_addr: "127.0.0.1:0"
log: { level: info, format: text }
EOF
cfg=(--config "boards/$board.yaml" --config "$work/site.yaml")
"${qemu[@]}" "$bin" --check-config "${cfg[@]}" >/dev/null 2>"$work/check" ||
  { cat "$work/check" >&2; fail "--check-config refused boards/$board.yaml"; }
t0=$SECONDS
"${qemu[@]}" "$bin" "${cfg[@]}" >"$work/log" 2>&1 &
pid=$!
port() { sed -n "s/.*$1.* on \(http:\/\/\)\{0,1\}127\.0\.0\.1:\([0-9]*\).*/\2/p" "$work/log" | head -1; }
for _ in $(seq 1 200); do
  p3=$(port 'server.tcp.v3: MQTT listening'); p5=$(port 'server.tcp.v5: MQTT listening')
  ph=$(port 'server.health_addr: health and metrics')
  [[ -n $p3 && -n $p5 && -n $ph ]] && break
  kill -0 "$pid" 2>/dev/null || fail "broker exited at start"
  sleep 0.1
done
[[ -n $p3 && -n $p5 && -n $ph ]] || fail "listeners not up after 20 s"
log "broker up in $((SECONDS - t0)) s under ${qemu[0]} (board $board): v3 :$p3, v5 :$p5, health :$ph"
grep -q 'memory budget, worst case' "$work/log" || fail "no memory budget in the start-up log"

http_get() { # path -> response on stdout
  exec 3<>"/dev/tcp/127.0.0.1/$ph"
  printf 'GET %s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n' "$1" >&3
  timeout 10 cat <&3 || true
  exec 3<&-
}
metric() { http_get /metrics | awk -v m="fluxmq_edge_$1" '$1 == m { print $2 }'; }

# ---- idle RSS ----------------------------------------------------------------------------
sleep 2
idle=$(rss_kib "$pid")
if [[ -n $baseline ]]; then
  log "RSS: qemu baseline ${baseline} KiB, broker idle ${idle} KiB, difference $((idle - baseline)) KiB"
else
  log "RSS: broker idle ${idle} KiB (no baseline: $cc missing)"
fi

http_get /health | grep -q '"status":"healthy"' || fail "/health"

# ---- publish / subscribe through the broker ----------------------------------------------
mosquitto_sub -h 127.0.0.1 -p "$p3" -V mqttv311 -i e2e-sub -q 2 -t 'e2e/#' -v -C 4 -W 60 \
  >"$work/sub.out" 2>"$work/sub.err" &
spid=$!
for _ in $(seq 1 100); do
  [[ $(metric subscriptions) == 1 ]] && break
  sleep 0.2
done
[[ $(metric subscriptions) == 1 ]] || fail "subscription not registered"
big=$(head -c 2400 /dev/urandom | base64 -w0) # 3200 bytes: more than one TCP segment
mosquitto_pub -h 127.0.0.1 -p "$p3" -V mqttv311 -q 0 -t e2e/a -m one
mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -q 1 -t e2e/b -m two
mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -q 2 -t e2e/c -m three
mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -q 1 -t e2e/big -m "$big"
wait "$spid" || fail "subscriber: $(cat "$work/sub.err")"
printf 'e2e/a one\ne2e/b two\ne2e/c three\ne2e/big %s\n' "$big" >"$work/want"
diff -u "$work/want" "$work/sub.out" >"$work/diff" || fail "deliveries differ: $(head -c 600 "$work/diff")"
log "4 messages (v3 QoS 0, v5 QoS 1 and 2, 3200-byte payload) delivered in order"

mosquitto_pub -h 127.0.0.1 -p "$p5" -V mqttv5 -q 1 -r -t e2e/retained -m kept
got=$(mosquitto_sub -h 127.0.0.1 -p "$p3" -V mqttv311 -t e2e/retained -C 1 -W 20)
[[ $got == kept ]] || fail "retained: got '$got'"
log "retained message delivered to a later subscriber"

received=$(metric messages_received_total)
[[ ${received:-0} -ge 5 ]] || fail "messages_received_total is '${received}', expected >= 5"

# ---- idle connections: the per-connection cost under qemu ----------------------------------
connect_packet() { # client id (<= 9 chars) -> an MQTT 3.1.1 CONNECT, keep-alive 600 s
  local id=$1 n=${#1}
  printf "\\x10\\x$(printf %02x $((12 + n)))\\x00\\x04MQTT\\x04\\x02\\x02\\x58\\x00\\x$(printf %02x "$n")%s" "$id"
}
fds=()
for i in $(seq 1 "$idle_conns"); do
  exec {fd}<>"/dev/tcp/127.0.0.1/$p3"
  connect_packet "idle$i" >&"$fd"
  fds+=("$fd")
done
for _ in $(seq 1 100); do
  [[ $(metric sessions_connected) == "$idle_conns" ]] && break
  sleep 0.2
done
[[ $(metric sessions_connected) == "$idle_conns" ]] ||
  fail "$idle_conns idle clients: $(metric sessions_connected) connected"
sleep 1
conns=$(rss_kib "$pid")
log "RSS with $idle_conns idle MQTT connections: ${conns} KiB (+$(((conns - idle) * 1024 / idle_conns)) B per connection over idle)"
for fd in "${fds[@]}"; do exec {fd}<&-; done

# ---- clean shutdown ----------------------------------------------------------------------
kill -TERM "$pid"
code=0
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "still running 10 s after SIGTERM"
wait "$pid" || code=$?
pid=""
[[ $code == 0 ]] || fail "exit status $code after SIGTERM"
grep -q 'stopped' "$work/log" || fail "no 'stopped' in the log"
log "OK (SIGTERM: clean exit)"
