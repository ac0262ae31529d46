use tonic::{Code, Status};

/// Errors of the Placement Driver. [`From<PdError> for Status`] is the one
/// place they map to gRPC status codes: every status PD answers with is made
/// there (an exhaustive match), and internal details only reach the log.
#[derive(Debug, thiserror::Error)]
pub enum PdError {
    /// PD's own storage failed.
    #[error(transparent)]
    Storage(#[from] rdb_storage::StorageError),
    /// The request was malformed; the message says what was wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The cluster has not been bootstrapped yet.
    #[error("cluster is not bootstrapped yet")]
    NotBootstrapped,
    /// Bootstrap was called on a bootstrapped cluster.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// The caller belongs to another cluster.
    #[error("request is for cluster {got} but this PD serves cluster {want}")]
    ClusterMismatch {
        /// The cluster id in the request.
        got: u64,
        /// This PD's cluster id.
        want: u64,
    },
    /// The store, region or key has no entry.
    #[error("{0}")]
    NotFound(String),
    /// A store that PD had to call failed or refused.
    #[error("{0}")]
    StoreFailed(String),
    /// A split was applied but moving its new half to another store failed;
    /// the split stands (retrying the same split would be refused).
    #[error("{0}")]
    MoveFailed(String),
    /// The operation cannot run in the cluster's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// PD cannot answer now (test builds: a failpoint that loses an answer).
    #[error("{0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupted metadata: {0}")]
    Corrupted(String),
}

impl From<PdError> for Status {
    fn from(e: PdError) -> Status {
        let code = match &e {
            PdError::Storage(_) | PdError::Corrupted(_) => Code::Internal,
            PdError::InvalidArgument(_) => Code::InvalidArgument,
            PdError::NotBootstrapped
            | PdError::FailedPrecondition(_)
            | PdError::ClusterMismatch { .. } => Code::FailedPrecondition,
            PdError::AlreadyBootstrapped => Code::AlreadyExists,
            PdError::NotFound(_) => Code::NotFound,
            PdError::StoreFailed(_) | PdError::Unavailable(_) => Code::Unavailable,
            PdError::MoveFailed(_) => Code::Aborted,
        };
        if code == Code::Internal {
            // Storage details stay in the log, not in answers to clients.
            tracing::error!(error = %e, "internal error");
            return Status::internal("internal error in PD storage (details in the PD log)");
        }
        Status::new(code, e.to_string())
    }
}

/// Result with [`PdError`].
pub type Result<T> = std::result::Result<T, PdError>;
