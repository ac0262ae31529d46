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
    /// The operation was called off or cut short (an import called off by
    /// its source, or whose stream ended early); nothing was applied.
    #[error("{0}")]
    Aborted(String),
    /// Fewer records arrived than were sent (an import's key count).
    #[error("{0}")]
    DataLoss(String),
    /// Another node's answer, passed on with its code and message (that
    /// node already kept its own internal details out of it).
    #[error("{}", .0.message())]
    Peer(Status),
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
            ServerError::Remote(_) => Code::Unavailable,
            ServerError::Aborted(_) => Code::Aborted,
            ServerError::DataLoss(_) => Code::DataLoss,
            ServerError::Peer(s) => s.code(),
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
        for e in [
            ServerError::Internal("move task: task 7 panicked with secret".into()),
            ServerError::Peer(Status::internal("secret")),
        ] {
            let s = Status::from(e);
            assert_eq!(s.code(), Code::Internal);
            assert!(!s.message().contains("secret"), "{}", s.message());
        }
        let s = Status::from(ServerError::Aborted("move 3 was called off".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Aborted, "move 3 was called off")
        );
        let s = Status::from(ServerError::Peer(Status::not_found("no region 9")));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no region 9"));
    }
}
