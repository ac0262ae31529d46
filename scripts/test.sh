#!/usr/bin/env bash
# The whole FlareDB test suite: installs/checks build dependencies, builds the
# daemons and the CLI (the integration tests run them as real processes),
# then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
echo "test.sh: building binaries (the first build compiles RocksDB from C++ source, about 10-20 minutes)" >&2
cargo build --workspace --bins --locked
cargo test --workspace --locked
