use rdb_proto::tls::ClientTls;
use tonic::{Code, Status};

/// Errors returned by the FlareDB client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request was refused as malformed (by the client or the server);
    /// the message says what was wrong. Retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No PD endpoint answered.
    #[error("PD unreachable ({endpoints}): {message}")]
    PdUnavailable {
        /// The endpoints tried.
        endpoints: String,
        /// The last error.
        message: String,
    },
    /// The store serving a key did not answer within the retry budget.
    #[error("store {address} unreachable: {message}")]
    StoreUnavailable {
        /// The store address.
        address: String,
        /// The last error.
        message: String,
    },
    /// Routing kept failing (region errors) until the retry budget ran out.
    #[error("request still misrouted after {attempts} attempts: {message}")]
    RegionUnavailable {
        /// Attempts made.
        attempts: u32,
        /// The last region error.
        message: String,
    },
    /// A write was sent but its outcome could not be learned: the connection
    /// failed after sending, and re-sending the same request (same request
    /// id, so the store would not apply it twice) got no answer within the
    /// budget, or met a region that changed meanwhile. It was applied once or
    /// not at all; read the key to find out.
    #[error(
        "outcome unknown, the connection to {address} failed after the write was sent: {message}"
    )]
    Undetermined {
        /// The store address.
        address: String,
        /// The error.
        message: String,
    },
    /// A PD endpoint belongs to another cluster than the one this client
    /// first connected to (the endpoints list mixes two clusters).
    #[error(
        "PD {address} serves cluster {got}, but this client is bound to cluster {want} (first answered by {pinned_by}): check the PD endpoints"
    )]
    ClusterMismatch {
        /// The endpoint that answered with another cluster id.
        address: String,
        /// Its cluster id.
        got: u64,
        /// The cluster id the client is bound to.
        want: u64,
        /// The endpoint that first answered, binding the client to `want`.
        pinned_by: String,
    },
    /// The cluster has no region yet: no store bootstrapped it within the
    /// call's time budget (start a store with `rdb-server --pd ...`).
    #[error(
        "the cluster is not bootstrapped yet: waited {waited:?} for a store to join PD and create the first region (start one with rdb-server --pd ...)"
    )]
    NotBootstrapped {
        /// How long the call waited.
        waited: std::time::Duration,
    },
    /// Something was not found (a store, a region).
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other gRPC error.
    #[error("{code:?}: {message}")]
    Rpc {
        /// The gRPC status code.
        code: Code,
        /// The status message.
        message: String,
    },
}

impl Error {
    /// The server refused the request as a whole before doing anything
    /// (`INVALID_ARGUMENT`, or `RESOURCE_EXHAUSTED` for an over-size
    /// message): nothing in it was applied.
    pub(crate) fn refused_whole_request(&self) -> bool {
        matches!(
            self,
            Error::InvalidArgument(_)
                | Error::Rpc {
                    code: Code::ResourceExhausted,
                    ..
                }
        )
    }

    pub(crate) fn from_status(s: &Status) -> Error {
        match s.code() {
            Code::InvalidArgument => Error::InvalidArgument(s.message().to_string()),
            Code::NotFound => Error::NotFound(s.message().to_string()),
            code => Error::Rpc {
                code,
                message: s.message().to_string(),
            },
        }
    }

    /// Whether the error means a server could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::PdUnavailable { .. }
                | Error::StoreUnavailable { .. }
                | Error::Undetermined { .. }
        )
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Whether a status says the server could not be reached (worth a retry elsewhere or later).
/// A status's message with the chain of errors under it (a transport
/// failure's real cause: refused connection, unknown certificate issuer,
/// handshake failure), and a hint when TLS is the likely cause.
pub(crate) fn describe(s: &Status, tls: Option<&ClientTls>) -> String {
    let mut out = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    let lower = out.to_ascii_lowercase();
    // How a peer that hung up mid-handshake or mid-preface shows up.
    let dropped = [
        "connection reset",
        "broken pipe",
        "connection closed",
        "protocol error",
        "frame with invalid size",
        "eof",
        "end of file",
    ]
    .iter()
    .any(|m| lower.contains(m));
    match tls {
        None if dropped => out.push_str(
            " (if the cluster uses TLS, give the CA certificate: --ca / ClientConfig::tls)",
        ),
        Some(t) if !t.has_client_cert() && (dropped || lower.contains("certificaterequired")) => {
            out.push_str(
                " (if the cluster requires client certificates, give one: --cert and --key / \
             ClientTls::from_pem_files)",
            )
        }
        // The server refuses a client certificate with an alert, or just
        // closes the connection (which side notices first is a race).
        Some(t) if t.has_client_cert() && (dropped || lower.contains("alert")) => out.push_str(
            " (the server refused the TLS handshake or closed the connection: is the client \
             certificate signed by the cluster's CA?)",
        ),
        Some(_) if lower.contains("peer certificate") => out.push_str(
            " (TLS: the server's certificate must be signed by the given CA and name the \
             address dialed)",
        ),
        _ => {}
    }
    out
}

/// What the client does after one attempt failed with a gRPC status: the one
/// table of retryable errors (every code is listed; a new one must be placed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request surely never reached the server: the connection could not
    /// be established (refused, unreachable, TLS handshake failed). Safe to
    /// send again anywhere.
    NeverSent,
    /// The connection failed or timed out after the request may have been
    /// sent: a read can be sent again; a write may have been applied.
    Unreachable,
    /// The server answered with an error: returned to the caller.
    Answered,
}

/// Classifies a failed attempt (see [`Failure`]).
pub(crate) fn classify(s: &Status) -> Failure {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            if connect_failed(s) {
                Failure::NeverSent
            } else {
                Failure::Unreachable
            }
        }
        // A status built here from a failed HTTP/2 connection (it carries
        // the error as its source; a server's INTERNAL answer does not):
        // e.g. a plaintext client talking to a TLS server.
        Code::Internal if std::error::Error::source(s).is_some() => {
            if connect_failed(s) {
                Failure::NeverSent
            } else {
                Failure::Unreachable
            }
        }
        Code::Internal
        | Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => Failure::Answered,
    }
}

/// Whether the status says the server could not be reached (worth a retry
/// elsewhere or later).
pub(crate) fn is_transport(s: &Status) -> bool {
    classify(s) != Failure::Answered
}

/// Whether the status comes from a connection that was never established:
/// its chain of causes holds an I/O error of a kind that only connecting
/// produces (refused, no route). Anything else (a connect timeout
/// included) counts as "may have been sent", which is always safe: a write
/// is then re-sent with its request id rather than routed afresh.
fn connect_failed(s: &Status) -> bool {
    use std::io::ErrorKind;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::kv_client::KvClient;
    use rdb_proto::v1::GetRequest;
    use std::time::Duration;

    /// A Get to `addr` through the client's own channel: plain (PD, a
    /// coalescing client's stores) or batched (a store of a client that
    /// does not coalesce).
    async fn get_status(addr: std::net::SocketAddr, batched: bool) -> Status {
        let cfg = crate::ClientConfig {
            connect_timeout: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let addr = addr.to_string();
        let ch = if batched {
            crate::pd::store_channel(&addr, &cfg)
        } else {
            crate::pd::channel(&addr, &cfg)
        }
        .expect("channel");
        KvClient::new(ch)
            .get(GetRequest::default())
            .await
            .expect_err("nothing serves gRPC there")
    }

    #[tokio::test]
    async fn a_refused_connection_was_never_sent() {
        for batched in [false, true] {
            let addr = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            let s = get_status(addr, batched).await;
            assert_eq!(classify(&s), Failure::NeverSent, "batched={batched}: {s:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_cut_after_the_request_may_have_been_applied() {
        for batched in [false, true] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let (mut conn, _) = l.accept().await.unwrap();
                // Read the client's preface and request, then hang up unanswered.
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while got < 60 {
                    match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => got += n,
                        _ => break,
                    }
                }
                got
            });
            let s = get_status(addr, batched).await;
            assert!(
                server.await.unwrap() >= 60,
                "batched={batched}: the request reached the server"
            );
            assert_eq!(
                classify(&s),
                Failure::Unreachable,
                "batched={batched}: {s:?}"
            );
        }
    }

    #[test]
    fn a_server_answer_is_not_retried() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
        ] {
            assert_eq!(classify(&Status::new(code, "x")), Failure::Answered);
        }
        assert_eq!(classify(&Status::internal("x")), Failure::Answered);
        assert_eq!(classify(&Status::unavailable("x")), Failure::Unreachable);
    }
}
