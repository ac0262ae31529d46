#!/usr/bin/env bash
# Checks (and on Debian/Ubuntu installs) what building FlareDB needs besides
# the Rust toolchain: a C++ compiler and libclang (the rocksdb crate compiles
# RocksDB from source and generates its bindings with bindgen), and protoc
# (the etcd-client crate, used by rdb-bench's etcd adapter, compiles etcd's
# protos with it; FlareDB's own protos need no protoc). The test suite also
# needs etcd (Debian's etcd-server): the rdb-bench smoke test drives a real
# etcd through the bench's etcd adapter.
set -euo pipefail

say() { printf 'setup-deps: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found. Install the Rust toolchain first: https://rustup.rs"
  exit 1
fi

have_libclang() {
  if [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1; then return 0; fi
  if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then return 0; fi
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/aarch64-linux-gnu/libclang*.so* >/dev/null 2>&1
}

have_cxx() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1
}

missing=()
have_libclang || missing+=(libclang-dev clang)
have_cxx || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || missing+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)

if [ ${#missing[@]} -eq 0 ]; then
  say "build dependencies present (C++ compiler, libclang, protoc, etcd)"
  exit 0
fi

say "missing: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get on this machine: install a C++ compiler, libclang and protoc (e.g. clang + libclang-dev + protobuf-compiler) and etcd (etcd-server) yourself, then re-run"
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    say "not root and no sudo: run 'apt-get install -y ${missing[*]}' as root, then re-run"
    exit 1
  fi
fi
say "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_libclang || { say "libclang still not found after installing; set LIBCLANG_PATH"; exit 1; }
have_cxx || { say "no C++ compiler after installing"; exit 1; }
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || { say "protoc still not found after installing; set PROTOC"; exit 1; }
command -v etcd >/dev/null 2>&1 || { say "etcd still not found after installing etcd-server"; exit 1; }
say "build dependencies installed"
