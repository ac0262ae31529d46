use std::path::PathBuf;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[cfg(feature = "engine")]
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record could not be decoded.
    #[error("corrupted record: {0}")]
    Corruption(String),
    /// The engine's writer thread has stopped (engine closing or a fatal write error).
    #[error("storage engine is closed")]
    Closed,
    /// A file-system error on the data directory.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {} is in use by another process (lock file {} is held)", .dir.display(), .dir.join(crate::datadir::LOCK_FILE).display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory belongs to another cluster or node.
    #[error("data directory {}: {message}", .dir.display())]
    IdentityMismatch {
        /// The data directory.
        dir: PathBuf,
        /// What does not match.
        message: String,
    },
    /// An invariant of the engine broke (a bug, not bad data on disk).
    #[error("internal storage error: {0}")]
    Internal(String),
    /// A caller passed something the engine cannot store.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with [`StorageError`].
pub type Result<T> = std::result::Result<T, StorageError>;
