//! Plumbing shared by the FlareDB daemons (`rdb-pd`, `rdb-server`).
//!
//! # Layout
//! - [`config`]: TOML config files (unknown keys and bad values refused by
//!   name), and the check that a documented default file matches the code.
//! - [`grpc`]: the tonic server every daemon runs (TLS, stream cap, request layer).
//! - [`limits`]: the configurable request caps (`[limits]`), each at most
//!   the API limit of the same name in `rdb_proto::limits`.
//! - [`metrics`]: the Prometheus registry of a daemon and the tower layer
//!   that counts and times every gRPC request, in a tracing span per request.
//! - [`net`]: the listener (`TCP_NODELAY`), the standard services (gRPC
//!   health, reflection), graceful shutdown, the warning for plaintext on a
//!   reachable address.
//! - [`process`]: logging (`--log-format`, `RUST_LOG`), shutdown signals,
//!   the readiness line.
//! - [`status`]: the HTTP status endpoint (`/metrics`).
//! - [`tls`]: the server side of TLS: the `[security]` section, and the
//!   material a node serves with and calls its peers with (the client side,
//!   `ClientTls`, is in `rdb_proto::tls`).

pub mod config;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod process;
pub mod status;
pub mod tls;
