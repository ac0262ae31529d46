//! Plumbing shared by the FlareDB daemons (`rdb-pd`, `rdb-server`).
//!
//! # Layout
//! - [`config`]: TOML config files (unknown keys and bad values refused by
//!   name), and the check that a documented default file matches the code.
//! - [`grpc`]: the tonic server every daemon runs (TLS, stream cap, request layer).
//! - [`metrics`]: the Prometheus registry of a daemon and the tower layer
//!   that counts and times every gRPC request, in a tracing span per request.
//! - [`process`]: logging (`--log-format`, `RUST_LOG`), shutdown signals,
//!   the readiness line.
//! - [`status`]: the HTTP status endpoint (`/metrics`).

pub mod config;
pub mod grpc;
pub mod metrics;
pub mod process;
pub mod status;
