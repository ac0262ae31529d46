#!/usr/bin/env bash
# Installs FlareDB on this host as systemd services and starts them.
#
#   sudo bash deploy/install.sh --host ADDR --pd PD_ADDR:2379[,...] [--with-pd
#        [--pd-name NAME --pd-initial-cluster NAME=ADDR,...]]
#        [--tls-dir DIR [--mutual-tls]] [--bin-dir DIR]
#
# --host        this host's address as the other hosts reach it
# --pd          the PD members' client addresses (HOST:2379), comma-separated
# --with-pd     also run rdb-pd on this host (on --host:2379)
# --pd-name     with --with-pd: this PD member's name (default pd1)
# --pd-initial-cluster
#               with --with-pd: every PD member as NAME=HOST:2379, the same
#               list on each PD host (a PD of three members); omitted: a PD
#               of one member
# --tls-dir     serve and connect over TLS with DIR/ca.pem, DIR/node.pem and
#               DIR/node.key (node.pem must name --host; see docs/operations.md)
# --mutual-tls  also require client certificates signed by ca.pem
# --bin-dir     where rdb-pd and rdb-server are (default: target/dist, from
#               `cargo build --profile dist --workspace --bins`)
#
# Creates the system user `flaredb`, copies the binaries to /usr/local/bin,
# the units to /etc/systemd/system, the TLS files to /etc/flaredb/tls, writes
# /etc/default/flaredb-{pd,server}, and runs `systemctl enable --now`. Data
# lives in /var/lib/flaredb; metrics are on 127.0.0.1:2381 (PD) and
# 127.0.0.1:20180 (store). Run it again to update binaries or settings (the
# services are restarted).
#
# Without --tls-dir the daemons listen on --host unencrypted and log a
# warning saying so: use that only on a network you trust.
set -euo pipefail

say() { printf 'install: %s\n' "$*" >&2; }
HOST="" PD="" WITH_PD=0 PD_NAME=pd1 PD_INITIAL="" BIN_DIR="${CARGO_TARGET_DIR:-target}/dist" TLS_DIR="" MUTUAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --pd) PD="$2"; shift 2 ;;
    --with-pd) WITH_PD=1; shift ;;
    --pd-name) PD_NAME="$2"; shift 2 ;;
    --pd-initial-cluster) PD_INITIAL="$2"; shift 2 ;;
    --bin-dir) BIN_DIR="$2"; shift 2 ;;
    --tls-dir) TLS_DIR="$2"; shift 2 ;;
    --mutual-tls) MUTUAL=1; shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown option $1 (see --help)"; exit 2 ;;
  esac
done
[ -n "$HOST" ] || { say "--host is required"; exit 2; }
[ -n "$PD" ] || { say "--pd is required"; exit 2; }
[ "$MUTUAL" -eq 0 ] || [ -n "$TLS_DIR" ] || { say "--mutual-tls needs --tls-dir"; exit 2; }
if [ -n "$TLS_DIR" ]; then
  for f in ca.pem node.pem node.key; do
    [ -r "$TLS_DIR/$f" ] || { say "$TLS_DIR/$f not found (see docs/operations.md, TLS)"; exit 2; }
  done
fi
[ "$(id -u)" -eq 0 ] || { say "run as root (sudo)"; exit 2; }
for b in rdb-pd rdb-server; do
  [ -x "$BIN_DIR/$b" ] || { say "$BIN_DIR/$b not found: cargo build --profile dist --workspace --bins, or --bin-dir"; exit 1; }
done
HERE="$(cd "$(dirname "$0")" && pwd)"

id -u flaredb >/dev/null 2>&1 || useradd --system --home-dir /var/lib/flaredb --shell /usr/sbin/nologin flaredb
install -m 0755 "$BIN_DIR/rdb-pd" "$BIN_DIR/rdb-server" /usr/local/bin/
install -m 0644 "$HERE/systemd/rdb-pd.service" "$HERE/systemd/rdb-server.service" /etc/systemd/system/

tls_env=""
if [ -n "$TLS_DIR" ]; then
  install -d -m 0750 -o root -g flaredb /etc/flaredb/tls
  install -m 0644 -o root -g flaredb "$TLS_DIR/ca.pem" "$TLS_DIR/node.pem" /etc/flaredb/tls/
  install -m 0640 -o root -g flaredb "$TLS_DIR/node.key" /etc/flaredb/tls/
  tls_env="FLAREDB_CA=/etc/flaredb/tls/ca.pem
FLAREDB_CERT=/etc/flaredb/tls/node.pem
FLAREDB_KEY=/etc/flaredb/tls/node.key
FLAREDB_REQUIRE_CLIENT_CERT=$([ "$MUTUAL" -eq 1 ] && echo true || echo false)"
fi

units=()
if [ "$WITH_PD" -eq 1 ]; then
  printf 'FLAREDB_PD_LISTEN=%s:2379\nFLAREDB_PD_NAME=%s\nFLAREDB_PD_INITIAL_CLUSTER=%s\n%s\n' \
    "$HOST" "$PD_NAME" "$PD_INITIAL" "$tls_env" > /etc/default/flaredb-pd
  units+=(rdb-pd)
fi
cat > /etc/default/flaredb-server <<CONF
FLAREDB_SERVER_LISTEN=$HOST:20160
FLAREDB_SERVER_ADVERTISE=$HOST:20160
FLAREDB_PD=$PD
$tls_env
CONF
units+=(rdb-server)

systemctl daemon-reload
systemctl enable "${units[@]}"
systemctl restart "${units[@]}"
say "started ${units[*]} on $HOST (PD $PD); status: systemctl status ${units[*]}; logs: journalctl -u rdb-server"
