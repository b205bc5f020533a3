#!/usr/bin/env bash
# Release binaries of fluxmq-edge for every gateway target, without containers: Debian's
# cross gcc / rust-lld and rustup's targets, as set up in .cargo/config.toml. Builds each
# target with every protocol feature and with the minimal set (MQTT only), copies the
# binaries to target/gateway/<target>/<features>/fluxmq-edge, prints a size table, and
# checks the size budget: the stripped aarch64-musl binary with every feature must stay at
# or below 3.0 MiB. Exit status 1 when a build fails or the budget is exceeded.
#
#   cross/build-all.sh                       # every installed gateway target
#   TARGETS="aarch64-unknown-linux-musl" cross/build-all.sh
#
# The all-features build is done last, so target/<target>/release/fluxmq-edge is the full
# binary afterwards (cargo-deb --no-build packages that one).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_BUDGET=${SIZE_BUDGET:-3145728}   # 3.0 MiB
BUDGET_TARGET=aarch64-unknown-linux-musl
ALL_TARGETS="aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf armv7-unknown-linux-musleabihf"
installed=$(rustup target list --installed 2>/dev/null || true)
if [[ -z "${TARGETS:-}" ]]; then
  TARGETS=""
  for t in $ALL_TARGETS; do
    if grep -qx "$t" <<<"$installed"; then
      TARGETS+="$t "
    else
      echo "build-all: skipping $t: its standard library is not installed (rustup target add $t)" >&2
    fi
  done
fi

# binutils of the target (installed with the Debian cross gcc).
binutils_prefix() {
  case "$1" in
    aarch64-*) echo aarch64-linux-gnu- ;;
    armv7-*) echo arm-linux-gnueabihf- ;;
    *) echo "" ;;
  esac
}

status=0
rows=()
for t in $TARGETS; do
  for set in minimal all; do
    flags=(--all-features)
    [[ $set == minimal ]] && flags=(--no-default-features)
    start=$SECONDS
    if ! cargo build --release --locked --bin fluxmq-edge --target "$t" "${flags[@]}"; then
      echo "build-all: FAILED: $t ($set)" >&2
      status=1
      continue
    fi
    out="target/gateway/$t/$set"
    mkdir -p "$out"
    cp "target/$t/release/fluxmq-edge" "$out/fluxmq-edge"
    # The release profile strips already; strip again to measure what would ship even if
    # the profile changes.
    p=$(binutils_prefix "$t")
    "${p}strip" -o "$out/fluxmq-edge.stripped" "$out/fluxmq-edge"
    size=$(stat -c %s "$out/fluxmq-edge.stripped")
    if "${p}readelf" -l "$out/fluxmq-edge" | grep -q 'Requesting program interpreter'; then
      link=dynamic
    else
      link=static
    fi
    rows+=("$(awk -v t="$t" -v f="$set" -v n="$size" -v l="$link" -v s="$((SECONDS - start))" \
      'BEGIN { printf "%-32s %-8s %10d %8.2f MiB  %-8s %4ds", t, f, n, n / 1048576, l, s }')")
    if [[ $t == "$BUDGET_TARGET" && $set == all ]]; then
      if ((size > SIZE_BUDGET)); then
        echo "build-all: SIZE BUDGET EXCEEDED: $t with every feature is $size bytes stripped (budget $SIZE_BUDGET)" >&2
        status=1
      else
        echo "build-all: size budget OK: $t with every feature is $size bytes stripped (budget $SIZE_BUDGET)"
      fi
    fi
  done
done

printf '\n%-32s %-8s %10s %12s  %-8s %5s\n' target features bytes "stripped" linking build
for r in "${rows[@]}"; do echo "$r"; done
exit $status
