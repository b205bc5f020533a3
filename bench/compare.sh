#!/usr/bin/env bash
# bench/compare.sh — side-by-side benchmark of fluxmq-edge and Mosquitto on this machine.
# Builds fluxmq-bench (loadgen) and the broker in release, starts each broker fresh per run on
# free loopback ports with equivalent limits, runs every scenario against both back to back
# (order alternating per round), takes medians over the rounds and writes the table into
# BENCHMARKS.md between <!-- compare:begin --> and <!-- compare:end -->.
# Kills everything it started on exit. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/compare.sh [options]
  --rounds N          rounds per scenario and broker (default 3; 1 with --quick)
  --quick             short runs for a smoke test (< 2 minutes with one broker)
  --only LIST         comma-separated scenarios (default: all but the opt-in ones)
  --brokers LIST      fluxmq,mosquitto (default both); a broker left out shows "not run"
  --mqtt 3|5          protocol version for every scenario (default 3 = MQTT 3.1.1)
  --out FILE          markdown file to update (default BENCHMARKS.md at the repo root)
  --no-write          print the table only, leave the markdown file alone
  --keep              keep the work directory (broker logs, configs, raw JSON lines)
scenarios: qos0-1to1 qos1-1to1 fanout-100 fanin-100 distinct-10x10 shared-4 idle-5000
           stalled-sub   (opt-in: stalled-sub-qos1)
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=""
QUICK=0
ONLY=""
BROKERS="fluxmq,mosquitto"
MQTT=3
OUT="$ROOT/BENCHMARKS.md"
WRITE=1
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --brokers) BROKERS="$2"; shift 2 ;;
    --mqtt) MQTT="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --no-write) WRITE=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$ROUNDS" ]]; then
  if [[ $QUICK == 1 ]]; then ROUNDS=1; else ROUNDS=3; fi
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds must be a positive integer" >&2; exit 2; }
[[ "$MQTT" == 3 || "$MQTT" == 5 ]] || { echo "compare.sh: --mqtt must be 3 or 5" >&2; exit 2; }

ALL_SCENARIOS=(qos0-1to1 qos1-1to1 fanout-100 fanin-100 distinct-10x10 shared-4 idle-5000 stalled-sub)
OPT_IN_SCENARIOS=(stalled-sub-qos1)
if [[ -n "$ONLY" ]]; then
  IFS=',' read -r -a SCENARIOS <<<"$ONLY"
  for s in "${SCENARIOS[@]}"; do
    [[ " ${ALL_SCENARIOS[*]} ${OPT_IN_SCENARIOS[*]} " == *" $s "* ]] ||
      { echo "compare.sh: unknown scenario $s" >&2; usage >&2; exit 2; }
  done
else
  SCENARIOS=("${ALL_SCENARIOS[@]}")
fi
IFS=',' read -r -a WANTED <<<"$BROKERS"
for b in "${WANTED[@]}"; do
  [[ "$b" == fluxmq || "$b" == mosquitto ]] ||
    { echo "compare.sh: unknown broker $b (use fluxmq,mosquitto)" >&2; exit 2; }
done

WORK="$(mktemp -d /tmp/fluxmq-compare.XXXXXX)"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
STARTED=()

cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $KEEP == 1 ]]; then
    echo "compare.sh: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[compare] $*" >&2; }

# --- tools -------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1; then
  log "installing Mosquitto from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
if ! command -v perf >/dev/null 2>&1; then
  log "installing linux-perf (syscall counting); without it syscalls fall back to /proc io"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null) ||
    log "linux-perf not installed"
fi
command -v python3 >/dev/null || { echo "compare.sh: python3 is needed for the report" >&2; exit 1; }

# Brokers and the load generator need many descriptors (5,000 idle connections).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open-file limit: $(ulimit -n)"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
log "building fluxmq-bench (release)"
(cd "$ROOT" && cargo build --release -q -p fluxmq-bench)
LOADGEN="$TARGET/release/loadgen"

declare -A NOT_RUN=()
FLUX="$TARGET/release/fluxmq-edge"
RUN_BROKERS=()
for b in fluxmq mosquitto; do
  if [[ " ${WANTED[*]} " != *" $b "* ]]; then
    NOT_RUN[$b]="not requested"
    continue
  fi
  if [[ $b == fluxmq ]]; then
    log "building fluxmq-edge (release)"
    if ! (cd "$ROOT" && cargo build --release -q -p fluxmq-edge --bin fluxmq-edge) >"$WORK/fluxmq-build.log" 2>&1; then
      log "fluxmq-edge does not build; its column says 'not run' (see --keep for the log)"
      tail -5 "$WORK/fluxmq-build.log" >&2 || true
      NOT_RUN[$b]="build failed"
      continue
    fi
  fi
  RUN_BROKERS+=("$b")
done
[[ ${#RUN_BROKERS[@]} -gt 0 ]] || { echo "compare.sh: no broker to run" >&2; exit 1; }

MOSQ_VERSION="$( (mosquitto -h 2>&1 || true) | head -1)"
FLUX_VERSION="not run (${NOT_RUN[fluxmq]:-})"
if [[ -x "$FLUX" && -z "${NOT_RUN[fluxmq]:-}" ]]; then
  FLUX_VERSION="$("$FLUX" --version 2>&1 | head -1 || true)"
  [[ -n "$FLUX_VERSION" ]] || FLUX_VERSION="unknown (--version printed nothing)"
fi

# --- brokers -----------------------------------------------------------------------------
free_ports() { # N -> N distinct free loopback ports, below the ephemeral range so that the
  # load generator's own client sockets (and their TIME_WAIT) can never hold them.
  python3 - "$1" <<'EOF'
import random, socket, sys
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
socks = []
while len(socks) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, max(lo, 10001))))
        socks.append(s)
    except OSError:
        s.close()
ports = [s.getsockname()[1] for s in socks]
for s in socks:  # released before anyone reads the numbers (bound, never listening: no TIME_WAIT)
    s.close()
print(" ".join(map(str, ports)))
EOF
}

wait_listening() { # PORT PID
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

BPID=""
BPORT=""
start_broker() { # NAME TAG
  local name=$1 dir="$WORK/$2"
  mkdir -p "$dir"
  case $name in
    mosquitto)
      read -r BPORT < <(free_ports 1)
      # Limits comparable to fluxmq-edge's defaults: 1000 queued messages per session, no
      # byte or memory cap, TCP_NODELAY on (fluxmq-edge sets it on every connection).
      cat >"$dir/mosquitto.conf" <<EOF
listener $BPORT 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
max_connections -1
max_inflight_messages 20
max_queued_messages 1000
max_queued_bytes 0
memory_limit 0
set_tcp_nodelay true
EOF
      chmod 644 "$dir/mosquitto.conf"
      mosquitto -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
      BPID=$!
      ;;
    fluxmq)
      local p3 p5 ph
      read -r p3 p5 ph < <(free_ports 3)
      cat >"$dir/fluxmq.yaml" <<EOF
server:
  tcp:
    v3:
      addr: "127.0.0.1:$p3"
    v5:
      addr: "127.0.0.1:$p5"
  health_addr: "127.0.0.1:$ph"
EOF
      "$FLUX" --config "$dir/fluxmq.yaml" >"$dir/broker.log" 2>&1 &
      BPID=$!
      if [[ $MQTT == 5 ]]; then BPORT=$p5; else BPORT=$p3; fi
      ;;
  esac
  STARTED+=("$BPID")
  if ! wait_listening "$BPORT" "$BPID"; then
    log "$name did not start listening on 127.0.0.1:$BPORT; last log lines:"
    tail -5 "$dir/broker.log" >&2 || true
    stop_broker
    mv "$dir/broker.log" "$dir/broker-failed-$RANDOM.log" 2>/dev/null || true
    return 1
  fi
  sleep 0.3 # let it finish starting before the baseline samples
}

stop_broker() {
  [[ -n "$BPID" ]] || return 0
  kill -TERM "$BPID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
  local keep=() pid
  for pid in "${STARTED[@]}"; do [[ $pid == "$BPID" ]] || keep+=("$pid"); done
  STARTED=("${keep[@]+"${keep[@]}"}")
  BPID=""
}

# --- scenarios ---------------------------------------------------------------------------
if [[ $QUICK == 1 ]]; then DUR=2; STALLED=200000; SETTLE=1; else DUR=10; STALLED=2000000; SETTLE=2; fi

scenario_args() {
  case $1 in
    qos0-1to1) echo "run --pattern 1to1 --qos 0 --payload 16 --duration $DUR" ;;
    qos1-1to1) echo "run --pattern 1to1 --qos 1 --payload 16 --duration $DUR" ;;
    # Window 50 per subscriber: 5,000 / 500 deliveries in flight instead of 50,000 / 5,000.
    fanout-100) echo "run --pattern fanout --pubs 1 --subs 100 --qos 0 --payload 16 --window 50 --duration $DUR" ;;
    fanin-100) echo "run --pattern fanin --pubs 100 --subs 1 --qos 0 --payload 16 --duration $DUR" ;;
    distinct-10x10) echo "run --pattern distinct --pubs 10 --subs 10 --qos 0 --payload 16 --window 50 --duration $DUR" ;;
    shared-4) echo "run --pattern shared --pubs 1 --subs 4 --qos 0 --payload 16 --duration $DUR" ;;
    idle-5000) echo "idle-conns --conns 5000 --settle $SETTLE" ;;
    stalled-sub) echo "stalled-sub --messages $STALLED --payload 256 --qos 0" ;;
    stalled-sub-qos1) echo "stalled-sub --messages $STALLED --payload 256 --qos 1" ;;
  esac
}

record() { # SCENARIO BROKER ROUND JSON
  printf '{"scenario":"%s","broker":"%s","round":%d,"result":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

T0=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
  order=("${RUN_BROKERS[@]}")
  if ((round % 2 == 0)); then
    order=()
    for ((i = ${#RUN_BROKERS[@]} - 1; i >= 0; i--)); do order+=("${RUN_BROKERS[i]}"); done
  fi
  for sc in "${SCENARIOS[@]}"; do
    for b in "${order[@]}"; do
      tag="r$round-$sc-$b"
      started=0
      for _ in 1 2 3; do
        if start_broker "$b" "$tag"; then started=1; break; fi
      done
      if [[ $started == 0 ]]; then
        record "$sc" "$b" "$round" '{"error":"broker did not start"}'
        continue
      fi
      limit=180
      [[ $sc == stalled-sub* ]] && limit=900
      read -r -a lg_args <<<"$(scenario_args "$sc")"
      set +e
      timeout "$limit" "$LOADGEN" "${lg_args[@]}" --mqtt "$MQTT" --port "$BPORT" \
        --broker-pid "$BPID" --label "$tag" >"$WORK/$tag/out.json" 2>"$WORK/$tag/out.txt"
      rc=$?
      set -e
      line="$(tail -1 "$WORK/$tag/out.json" 2>/dev/null || true)"
      if [[ "$line" != \{* ]]; then
        line="{\"error\":\"loadgen exited $rc without a result\"}"
      fi
      if ! kill -0 "$BPID" 2>/dev/null; then
        log "$b exited during $sc (round $round)"
        line="${line%\}},\"broker_died\":true}"
      fi
      record "$sc" "$b" "$round" "$line"
      log "round $round/$ROUNDS $sc $b: $(tail -1 "$WORK/$tag/out.txt" 2>/dev/null)"
      stop_broker
    done
  done
done
log "all runs done in $((SECONDS - T0)) s"

# --- report ------------------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
[[ -n "$CPU_MODEL" ]] || CPU_MODEL="$(uname -m)"
args=(--results "$RESULTS" --rounds "$ROUNDS" --mqtt "$MQTT"
  --machine "$(nproc) cores, $CPU_MODEL, $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
  --kernel "$(uname -sr)"
  --mosquitto-version "$MOSQ_VERSION" --fluxmq-version "$FLUX_VERSION"
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')"
  --not-run "fluxmq=${NOT_RUN[fluxmq]:-},mosquitto=${NOT_RUN[mosquitto]:-}")
[[ $QUICK == 1 ]] && args+=(--quick)
if [[ $WRITE == 1 ]]; then args+=(--out "$OUT"); fi
python3 "$ROOT/bench/compare_report.py" "${args[@]}"
[[ $KEEP == 1 ]] && cp "$RESULTS" "$WORK/results-final.jsonl"
exit 0
