#!/usr/bin/env bash
# The whole FlareDB test suite: installs/checks build dependencies, checks
# formatting and lints (when rustfmt and clippy are installed), builds the
# daemons and the CLI (the integration tests run them as real processes),
# then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh --etcd
# Disk: a cold run writes about 3 GB under the target directory (RocksDB's
# objects, the daemons and some 40 test binaries). Incremental compilation
# would add as much again in caches that a one-off run never reads back, so
# it is off here unless the caller sets CARGO_INCREMENTAL.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
mkdir -p "$TARGET_DIR"
FREE_KB=$(df -Pk "$TARGET_DIR" | awk 'NR==2 {print $4}')
echo "test.sh: $((FREE_KB / 1024)) MiB free where $TARGET_DIR is" >&2
if [ "${FREE_KB:-0}" -lt $((4 * 1024 * 1024)) ]; then
  echo "test.sh: warning: less than 4 GiB free; a cold build may run out of disk" >&2
fi
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "test.sh: rustfmt not installed, skipping the format check (rustup component add rustfmt)" >&2
fi
# The integration tests start the real daemons, and some of them inject faults
# through failpoints: the daemons are built with their test-only `failpoints`
# feature. `cargo test` gets the same features, so it never rebuilds
# target/debug/rdb-server or rdb-pd without them. One test measures a real
# etcd: rdb-bench's etcd adapter and the test crate's switch for that test.
FEATURES=rdb-server/failpoints,rdb-pd/failpoints,rdb-bench/etcd,flaredb-tests/etcd
echo "test.sh: building (the first build compiles RocksDB from C++ source, about 10-20 minutes)" >&2
cargo build --workspace --bins --locked --features "$FEATURES"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked --features "$FEATURES" -- -D warnings
  # The daemons as released: no failpoints.
  cargo clippy -p rdb-server -p rdb-pd --locked -- -D warnings
else
  echo "test.sh: clippy not installed, skipping lints (rustup component add clippy)" >&2
fi
# The storage codecs without RocksDB, as the fuzz targets (fuzz/) build them.
cargo check -p rdb-storage --no-default-features --locked
# rdb-bench as a plain build has it: without the etcd adapter (no protoc).
cargo check -p rdb-bench --all-targets --locked
cargo test --workspace --locked --features "$FEATURES"
# The README's first command as a user runs it, on the binaries built above:
# PD and three stores, three replicas placed by PD, the rdb-cli demo. A
# failing command fails the run (its data and logs are kept).
DEMO_DIR=$(mktemp -d -t flaredb-demo-XXXXXX)
FLAREDB_BIN_DIR="$TARGET_DIR/debug" bash scripts/local-cluster.sh --demo-only --pd-port 0 --data-dir "$DEMO_DIR"
rm -rf "$DEMO_DIR"
