use tonic::{Code, Status};

/// Errors of the store daemon. [`From<ServerError> for Status`] is the one
/// place they map to gRPC status codes. Routing problems are not errors of
/// this kind: they travel in the response's `region_error` field.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] rdb_storage::StorageError),
    /// The request was malformed; the message says what was wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with the store's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A call to PD or another store failed.
    #[error("{0}")]
    Remote(String),
    /// A blocking task could not finish.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServerError {
    pub(crate) fn remote(what: &str, s: &Status) -> Self {
        ServerError::Remote(format!("{what}: {} ({:?})", s.message(), s.code()))
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = match &e {
            ServerError::Storage(rdb_storage::StorageError::InvalidArgument(_))
            | ServerError::InvalidArgument(_) => Code::InvalidArgument,
            ServerError::Storage(_) | ServerError::Internal(_) => Code::Internal,
            ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServerError::Remote(_) => Code::Unavailable,
        };
        if code == Code::Internal {
            // Storage details stay in the log, not in answers to clients.
            tracing::error!(error = %e, "internal error");
            return Status::internal("internal error in store storage (details in the store log)");
        }
        Status::new(code, e.to_string())
    }
}

/// Result with [`ServerError`].
pub type Result<T> = std::result::Result<T, ServerError>;
