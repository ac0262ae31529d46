//! Storage failures the store cannot answer through: a failed write of a
//! group (the WAL append or its fsync) and RocksDB background errors.
//!
//! After a failed WAL write or fsync RocksDB may still have the group in its
//! log and replay it on restart: answering "failed" could be a lie, and so
//! could "done". In RocksDB's background-error mode the database refuses
//! writes while reads go on, and a store that keeps answering health checks
//! would keep its regions. Like PostgreSQL after a failed fsync, the engine
//! then logs the reason and stops the process with
//! [`STORAGE_FAILURE_EXIT_CODE`], without answering the pending writers; a
//! restart recovers from the WAL and the clients learn the outcome by reading
//! (or by re-sending with the same request id, see
//! [`Engine::write_once`](crate::Engine::write_once)).

use std::sync::Arc;

use rocksdb::{ErrorKind, DB};

/// Exit status of a store stopped by a storage failure: 74, `EX_IOERR` of
/// `sysexits.h`.
pub const STORAGE_FAILURE_EXIT_CODE: i32 = 74;

/// A failed RocksDB write of a group.
#[derive(Debug, Clone)]
pub(crate) struct CommitError {
    /// RocksDB's kind of error.
    pub kind: ErrorKind,
    /// RocksDB's message.
    pub message: String,
}

impl From<rocksdb::Error> for CommitError {
    fn from(e: rocksdb::Error) -> Self {
        CommitError {
            kind: e.kind(),
            message: e.into_string(),
        }
    }
}

impl CommitError {
    /// Whether the failure leaves the outcome of the group unknown. Only
    /// RocksDB's checks of the arguments, made before anything is written,
    /// fail a write definitely; any other error (I/O, corruption, a
    /// background error, shutdown, ...) may come after the WAL append.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::InvalidArgument | ErrorKind::NotSupported
        )
    }
}

/// Stops the store.
pub(crate) type FatalFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Runs before a group commit; an error stands for a failed RocksDB write.
pub(crate) type CommitHook = Arc<dyn Fn() -> Result<(), CommitError> + Send + Sync>;

/// Reads how many background errors RocksDB has had since open.
pub(crate) type BackgroundErrorsFn = Arc<dyn Fn(&DB) -> Option<u64> + Send + Sync>;

/// The points where tests step in; [`Hooks::default`] is what the engine
/// does in production.
#[derive(Clone)]
pub(crate) struct Hooks {
    /// Stops the store; by default [`exit_on_failure`]. A hook that returns
    /// (in tests) leaves the writer thread stopped without having answered.
    pub fatal: FatalFn,
    /// Runs before every group commit (none by default); tests use it to
    /// fail a commit or hold the writer up.
    pub before_commit: Option<CommitHook>,
    /// Runs before the counter thread counts a request (none by default);
    /// tests use it to hold the count up.
    pub before_count: Option<Arc<dyn Fn() + Send + Sync>>,
    /// By default the `rocksdb.background-errors` property.
    pub background_errors: BackgroundErrorsFn,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            fatal: Arc::new(exit_on_failure),
            before_commit: None,
            before_count: None,
            background_errors: Arc::new(|db: &DB| {
                db.property_int_value("rocksdb.background-errors")
                    .ok()
                    .flatten()
            }),
        }
    }
}

/// Logs `reason` and exits the process with [`STORAGE_FAILURE_EXIT_CODE`].
pub(crate) fn exit_on_failure(reason: &str) {
    tracing::error!(
        reason,
        exit_code = STORAGE_FAILURE_EXIT_CODE,
        "storage failure: stopping the process; pending writes are neither confirmed nor refused, \
         a restart recovers them from the write-ahead log"
    );
    std::process::exit(STORAGE_FAILURE_EXIT_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_argument_errors_are_definite_failures() {
        let e = |kind| CommitError {
            kind,
            message: String::new(),
        };
        for kind in [ErrorKind::InvalidArgument, ErrorKind::NotSupported] {
            assert!(!e(kind.clone()).is_fatal(), "{kind:?}");
        }
        for kind in [
            ErrorKind::IOError,
            ErrorKind::Corruption,
            ErrorKind::ShutdownInProgress,
            ErrorKind::Busy,
            ErrorKind::Incomplete,
            ErrorKind::Unknown,
        ] {
            assert!(e(kind.clone()).is_fatal(), "{kind:?}");
        }
    }
}
