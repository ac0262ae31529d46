//! The store's error type, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

/// Errors of the store daemon. [`From<ServerError> for Status`] is the one
/// place they map to gRPC status codes (an exhaustive match): every status
/// the store answers with is made there, and internal details only reach
/// the log. Routing problems are not errors of
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
    /// A call to PD or another store failed, or this store cannot answer
    /// now.
    #[error("{0}")]
    Remote(String),
    /// A write was proposed to the region's Raft group but its outcome is
    /// unknown (the group lost its leader or stopped meanwhile): it may
    /// still be applied. Re-send it with the same request id.
    #[error("{0}")]
    Unavailable(String),
    /// A blocking task could not finish, or storage answered unexpectedly:
    /// logged, never sent to clients.
    #[error("internal: {0}")]
    Internal(String),
}

impl ServerError {
    pub(crate) fn remote(what: &str, s: &Status) -> Self {
        ServerError::Remote(format!("{what}: {} ({:?})", s.message(), s.code()))
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            ServerError::Storage(rdb_storage::StorageError::InvalidArgument(_))
            | ServerError::InvalidArgument(_) => Code::InvalidArgument,
            ServerError::Storage(_) | ServerError::Internal(_) => Code::Internal,
            ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServerError::Remote(_) | ServerError::Unavailable(_) => Code::Unavailable,
        }
    }

    /// The message a client may see: storage and task details of an
    /// internal error stay in the log.
    pub fn client_message(&self) -> String {
        if self.code() == Code::Internal {
            "internal error in the store (details in the store log)".to_string()
        } else {
            self.to_string()
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.client_message())
    }
}

/// Result with [`ServerError`].
pub type Result<T> = std::result::Result<T, ServerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_in_the_log() {
        let s = Status::from(ServerError::Internal(
            "blocking task 7 panicked with secret".into(),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"), "{}", s.message());
        let s = Status::from(ServerError::Unavailable("outcome unknown".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "outcome unknown")
        );
    }
}
