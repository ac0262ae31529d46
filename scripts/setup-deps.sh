#!/usr/bin/env bash
# Checks (and on Debian/Ubuntu installs) what building FlareDB needs besides
# the Rust toolchain, by trying it rather than by looking for binaries:
#
# - always: a C++ compiler that can compile and link a C++17 program, make,
#   and a libclang that can be found (the rocksdb crate compiles RocksDB
#   from source and generates its bindings with bindgen);
# - with --etcd (the etcd adapter of rdb-bench, its cargo feature `etcd`):
#   a protoc that can compile a file importing the well-known protos
#   (`google/protobuf/descriptor.proto`, shipped by libprotobuf-dev, which
#   apt-get leaves out of protobuf-compiler with --no-install-recommends) and
#   an etcd server to measure (etcd-server). FlareDB's own protos need no
#   protoc (they are compiled by the pure-Rust protox).
#
# Usage: scripts/setup-deps.sh [--etcd]
set -euo pipefail

say() { printf 'setup-deps: %s\n' "$*" >&2; }

ETCD=0
for a in "$@"; do
  case "$a" in
    --etcd) ETCD=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown option $a (see --help)"; exit 2 ;;
  esac
done

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo not found. Install the Rust toolchain first: https://rustup.rs"
  exit 1
fi

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

have_libclang() {
  if [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang*.so* >/dev/null 2>&1; then return 0; fi
  if command -v ldconfig >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then return 0; fi
  ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/aarch64-linux-gnu/libclang*.so* >/dev/null 2>&1
}

# bindgen parses RocksDB's C header with libclang, which needs the C
# standard headers (stddef.h ships with clang itself).
have_clang_headers() {
  command -v clang >/dev/null 2>&1 || return 1
  printf '#include <stddef.h>\n#include <stdint.h>\nint main(void){return 0;}\n' >"$SCRATCH/h.c"
  clang -fsyntax-only "$SCRATCH/h.c" >/dev/null 2>&1
}

# The compiler the cc crate picks (CXX, else c++) builds a C++17 program
# that uses the standard library, as RocksDB does.
have_cxx() {
  local cxx="${CXX:-c++}"
  command -v "$cxx" >/dev/null 2>&1 || return 1
  printf '#include <string>\n#include <thread>\nint main(){std::string s("ok");std::thread t([]{});t.join();return s.size()==2?0:1;}\n' >"$SCRATCH/t.cc"
  "$cxx" -std=c++17 -pthread -o "$SCRATCH/t" "$SCRATCH/t.cc" >/dev/null 2>&1 && "$SCRATCH/t"
}

# etcd-client's build compiles etcd's protos, which import the well-known types.
have_protoc() {
  local protoc="${PROTOC:-protoc}"
  command -v "$protoc" >/dev/null 2>&1 || return 1
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/empty.proto";\nmessage M { google.protobuf.FileDescriptorProto f = 1; google.protobuf.Empty e = 2; }\n' >"$SCRATCH/t.proto"
  "$protoc" -I"$SCRATCH" --descriptor_set_out="$SCRATCH/t.pb" "$SCRATCH/t.proto" >/dev/null 2>&1
}

check_all() {
  missing=()
  { have_libclang && have_clang_headers; } || missing+=(libclang-dev clang)
  have_cxx || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  if [ "$ETCD" = 1 ]; then
    have_protoc || missing+=(protobuf-compiler libprotobuf-dev)
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  fi
}

what="C++ compiler, libclang"
[ "$ETCD" = 1 ] && what="$what, protoc with the well-known protos, etcd"

check_all
if [ ${#missing[@]} -eq 0 ]; then
  say "build dependencies present and working ($what)"
  exit 0
fi

say "missing or not working: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get on this machine: install a C++ compiler, make and libclang (e.g. g++, make, clang, libclang-dev)"
  [ "$ETCD" = 1 ] && say "and protoc with the well-known protos plus etcd (e.g. protobuf-compiler, libprotobuf-dev, etcd-server)"
  say "yourself, then re-run"
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    say "not root and no sudo: run 'apt-get install -y --no-install-recommends ${missing[*]}' as root, then re-run"
    exit 1
  fi
fi
say "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

check_all
if [ ${#missing[@]} -ne 0 ]; then
  say "still missing or not working after installing: ${missing[*]}"
  say "(set LIBCLANG_PATH, CXX or PROTOC to point at working ones)"
  exit 1
fi
say "build dependencies installed and working ($what)"
