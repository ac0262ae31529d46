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
    /// A non-idempotent request (compare-and-swap) was sent but the
    /// connection failed before the answer: it may or may not have been applied.
    #[error(
        "outcome unknown, the connection to {address} failed after the request was sent: {message}"
    )]
    Undetermined {
        /// The store address.
        address: String,
        /// The error.
        message: String,
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

pub(crate) fn is_transport(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        // A status built here from a failed HTTP/2 connection (it carries
        // the error as its source; a server's INTERNAL answer does not):
        // e.g. a plaintext client talking to a TLS server.
        Code::Internal => std::error::Error::source(s).is_some(),
        _ => false,
    }
}

/// Whether the request surely never reached the server (connection refused or not established).
pub(crate) fn never_sent(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == Code::Unavailable && (m.contains("connect") || m.contains("refused"))
}
