#!/usr/bin/env bash
# Starts a local FlareDB cluster (PD and stores on loopback), shows it
# working with rdb-cli, and keeps it running until Ctrl-C.
#
#   bash scripts/local-cluster.sh [--data-dir DIR] [--pd-port N]
#                                 [--pd-members 1|3|5] [--stores N]
#                                 [--replicas N] [--demo-only]
#
# Data goes under DIR (default: a new temporary directory, kept afterwards).
# --pd-members 3 starts a PD of three members (ports N, N+100, N+200) that
# keeps serving when any one of them stops; default 1. --stores: how many
# stores (default 3). --replicas: replicas of every region (PD's
# --max-replicas; default 3, at most --stores), placed by PD's replica
# checker once the stores have joined. Each store runs the machine's cores
# divided by --stores worker threads (at least 1; rdb-server
# --worker-threads), its share of the machine. --demo-only stops the
# cluster after the demo instead of waiting for Ctrl-C. --pd-port 0 (one
# PD member only): a free port. FLAREDB_BIN_DIR: run the binaries there
# instead of building them (scripts/test.sh runs the demo that way).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=""
PD_PORT=2379
DEMO_ONLY=0
PD_MEMBERS=1
STORES=3
REPLICAS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --pd-port) PD_PORT="$2"; shift 2 ;;
    --pd-members) PD_MEMBERS="$2"; shift 2 ;;
    --stores) STORES="$2"; shift 2 ;;
    --replicas) REPLICAS="$2"; shift 2 ;;
    --demo-only) DEMO_ONLY=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "local-cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$PD_MEMBERS" in 1|3|5) ;; *) echo "local-cluster.sh: --pd-members must be 1, 3 or 5" >&2; exit 2 ;; esac
case "$PD_PORT" in ''|*[!0-9]*) echo "local-cluster.sh: --pd-port must be a port number" >&2; exit 2 ;; esac
if [ "$PD_PORT" = 0 ] && [ "$PD_MEMBERS" != 1 ]; then
  echo "local-cluster.sh: --pd-port 0 needs --pd-members 1 (members name each other's ports)" >&2; exit 2
fi
case "$STORES" in ''|*[!0-9]*|0) echo "local-cluster.sh: --stores must be a positive number" >&2; exit 2 ;; esac
[ -n "$REPLICAS" ] || REPLICAS=$(( STORES < 3 ? STORES : 3 ))
case "$REPLICAS" in ''|*[!0-9]*|0) echo "local-cluster.sh: --replicas must be a positive number" >&2; exit 2 ;; esac
if [ "$REPLICAS" -gt "$STORES" ]; then
  echo "local-cluster.sh: --replicas $REPLICAS is more than --stores $STORES" >&2; exit 2
fi
[ -n "$DATA_DIR" ] || DATA_DIR="$(mktemp -d -t flaredb-XXXXXX)"
mkdir -p "$DATA_DIR"

if [ -n "${FLAREDB_BIN_DIR:-}" ]; then
  BIN="$FLAREDB_BIN_DIR"
else
  bash scripts/setup-deps.sh
  echo "local-cluster: building (the first build compiles RocksDB, about 10-20 minutes)" >&2
  cargo build --workspace --bins --locked
  BIN="${CARGO_TARGET_DIR:-target}/debug"
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "local-cluster: stopped; data and logs are in $DATA_DIR" >&2
}
trap cleanup EXIT INT TERM

# launch NAME CMD... : runs a daemon in the background. (Not in a subshell,
# so that PIDS keeps the daemon for cleanup.)
launch() {
  local name="$1"; shift
  : > "$DATA_DIR/$name.out"
  "$@" > "$DATA_DIR/$name.out" 2> "$DATA_DIR/$name.log" &
  PIDS+=($!)
}

# wait_ready NAME READY_PREFIX PID: waits for the daemon's ready line, sets
# ADDR to the address it serves on.
wait_ready() {
  local name="$1" prefix="$2" pid="$3" out="$DATA_DIR/$1.out"
  for _ in $(seq 1 600); do
    if grep -q "^$prefix" "$out"; then
      ADDR=$(sed -n "s/^$prefix \([^ ]*\).*/\1/p" "$out" | head -n1)
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "local-cluster: $name did not start; its log:" >&2
  cat "$DATA_DIR/$name.log" >&2
  exit 1
}

start() {
  local name="$1" prefix="$2"; shift 2
  launch "$name" "$@"
  wait_ready "$name" "$prefix" "${PIDS[-1]}"
}

ADDR=""
# The PD members start together: each is ready once they have elected a leader.
INITIAL=""
for i in $(seq 1 "$PD_MEMBERS"); do
  INITIAL="$INITIAL${INITIAL:+,}pd$i=127.0.0.1:$((PD_PORT + 100 * (i - 1)))"
done
PD_PIDS=()
for i in $(seq 1 "$PD_MEMBERS"); do
  member=(--name "pd$i")
  [ "$PD_MEMBERS" = 1 ] || member+=(--initial-cluster "$INITIAL")
  launch "pd$i" "$BIN/rdb-pd" --listen "127.0.0.1:$((PD_PORT + 100 * (i - 1)))" \
    --data-dir "$DATA_DIR/pd$i" --max-replicas "$REPLICAS" "${member[@]}"
  PD_PIDS+=("${PIDS[-1]}")
done
PD=""
for i in $(seq 1 "$PD_MEMBERS"); do
  wait_ready "pd$i" "rdb-pd listening on" "${PD_PIDS[$((i - 1))]}"
  PD="$PD${PD:+,}$ADDR"
done
STORE_ADDRS=""
# The stores share this machine: each gets its share of the cores.
WORKERS=$(( $(nproc) / STORES ))
[ "$WORKERS" -ge 1 ] || WORKERS=1
for i in $(seq 1 "$STORES"); do
  start "store$i" "rdb-server listening on" "$BIN/rdb-server" --listen 127.0.0.1:0 --pd "$PD" \
    --data-dir "$DATA_DIR/store$i" --worker-threads "$WORKERS"
  STORE_ADDRS="$STORE_ADDRS${STORE_ADDRS:+, }$ADDR"
done
echo "local-cluster: PD on $PD, stores on $STORE_ADDRS, data in $DATA_DIR"

CLI=("$BIN/rdb-cli" --pd "$PD")
FAILED=0
run() { echo "\$ rdb-cli --pd $PD $*"; "${CLI[@]}" "$@" || { echo "(exit code $?)"; FAILED=1; }; }
run put greeting hello
if [ "$REPLICAS" -gt 1 ]; then
  # The first region starts with one replica, on the store that
  # bootstrapped it; PD's replica checker adds the others (a split later
  # keeps them for both halves). `regions` prints
  # ID START END EPOCH SIZE KEYS PEERS(id@store,...) LEADER; "(l)" marks a
  # learner. The peers are found by their form, not their column.
  echo "local-cluster: waiting for PD to place $REPLICAS replicas" >&2
  for i in $(seq 1 300); do
    [ "$("${CLI[@]}" regions | awk 'NR == 2 { v = 0; for (f = 1; f <= NF; f++) if ($f ~ /^[0-9]+@[0-9]+/) { n = split($f, p, ","); for (i = 1; i <= n; i++) if (p[i] !~ /[(]l[)]/) v++; break }; print v }')" -ge "$REPLICAS" ] && break
    [ "$i" -eq 300 ] && { echo "local-cluster: PD did not place $REPLICAS replicas in 60 s" >&2; exit 1; }
    sleep 0.2
  done
fi
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
run pd members

if [ "$DEMO_ONLY" = 1 ]; then
  [ "$FAILED" = 0 ] || { echo "local-cluster: demo done, but a command above failed" >&2; exit 1; }
  echo "local-cluster: demo done"
  exit 0
fi
echo "local-cluster: running; try: $BIN/rdb-cli --pd $PD get greeting   (Ctrl-C stops)"
wait
