//! FlareDB integration tests, one binary: each module starts real `rdb-pd` and
//! `rdb-server` processes on loopback ports (see `flaredb_tests`). One binary
//! links once; run one area with `cargo test -p flaredb-tests --test it -- MODULE::`.

mod availability;
mod bench;
mod bootstrap;
mod chaos;
mod cli;
mod config;
mod connect;
mod consistency;
mod durability;
mod exactly_once;
mod garbage;
mod health;
mod kv;
mod large_values;
mod limits;
mod observability;
mod pd_ha;
mod replication;
mod scheduling;
mod security;
mod split;
mod tso;
mod upgrade;
