#!/usr/bin/env bash
# Starts a local FlareDB cluster (one PD and two stores on loopback), shows it
# working with rdb-cli, and keeps it running until Ctrl-C.
#
#   bash scripts/local-cluster.sh [--data-dir DIR] [--pd-port N] [--demo-only]
#
# Data goes under DIR (default: a new temporary directory, kept afterwards).
# --demo-only stops the cluster after the demo instead of waiting for Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=""
PD_PORT=2379
DEMO_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --pd-port) PD_PORT="$2"; shift 2 ;;
    --demo-only) DEMO_ONLY=1; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$DATA_DIR" ] || DATA_DIR="$(mktemp -d -t flaredb-XXXXXX)"
mkdir -p "$DATA_DIR"

bash scripts/setup-deps.sh
echo "local-cluster: building (the first build compiles RocksDB, about 10-20 minutes)" >&2
cargo build --workspace --bins --locked
BIN="${CARGO_TARGET_DIR:-target}/debug"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "local-cluster: stopped; data and logs are in $DATA_DIR" >&2
}
trap cleanup EXIT INT TERM

# start NAME READY_PREFIX CMD... : runs a daemon, waits for its ready line,
# sets ADDR to the address it serves on. (Not run in a subshell, so that
# PIDS keeps the daemon for cleanup.)
start() {
  local name="$1" prefix="$2"; shift 2
  local out="$DATA_DIR/$name.out"
  : > "$out"
  "$@" > "$out" 2> "$DATA_DIR/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 300); do
    if grep -q "^$prefix" "$out"; then
      ADDR=$(sed -n "s/^$prefix \([^ ]*\).*/\1/p" "$out" | head -n1)
      return 0
    fi
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "local-cluster: $name did not start; its log:" >&2
  cat "$DATA_DIR/$name.log" >&2
  exit 1
}

ADDR=""
start pd "rdb-pd listening on" "$BIN/rdb-pd" --listen "127.0.0.1:$PD_PORT" --data-dir "$DATA_DIR/pd"
PD="$ADDR"
start store1 "rdb-server listening on" "$BIN/rdb-server" --listen 127.0.0.1:0 --pd "$PD" --data-dir "$DATA_DIR/store1"
S1="$ADDR"
start store2 "rdb-server listening on" "$BIN/rdb-server" --listen 127.0.0.1:0 --pd "$PD" --data-dir "$DATA_DIR/store2"
S2="$ADDR"
echo "local-cluster: PD on $PD, stores on $S1 and $S2, data in $DATA_DIR"

CLI=("$BIN/rdb-cli" --pd "$PD")
run() { echo "\$ rdb-cli --pd $PD $*"; "${CLI[@]}" "$@" || echo "(exit code $?)"; }
run put greeting hello
run get greeting
run --json get greeting
run cas counter 1 --expect-absent
run cas counter 2 --expect-value 1
run put apple red
run put zebra striped
run split m
run regions
run stores
run scan ""
run tso --count 3

if [ "$DEMO_ONLY" = 1 ]; then
  echo "local-cluster: demo done"
  exit 0
fi
echo "local-cluster: running; try: $BIN/rdb-cli --pd $PD get greeting   (Ctrl-C stops)"
wait
