//! The housekeeper thread: watches for RocksDB background errors and
//! removes expired exactly-once records.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::DB;

use crate::engine::compact_dedup;
use crate::fatal::Hooks;

/// How often the housekeeper looks for background errors.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until `stop` is closed (the engine is dropped) or the store failed.
pub(crate) fn run(db: Arc<DB>, hooks: Hooks, dedup_window: Duration, stop: Receiver<()>) {
    // A record expires a window after it was applied; compacting every half
    // window removes it at most 1.5 windows after.
    let compact_every = (dedup_window / 2).max(Duration::from_secs(1));
    let mut last_compaction = Instant::now();
    loop {
        match stop.recv_timeout(CHECK_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(n) = (hooks.background_errors)(&db).filter(|&n| n > 0) {
            (hooks.fatal)(&format!(
                "RocksDB had {n} background error(s) (a failed flush or compaction; \
                 see the LOG file of the database)"
            ));
            return;
        }
        if last_compaction.elapsed() >= compact_every {
            if let Err(e) = compact_dedup(&db) {
                tracing::warn!(error = %e, "compaction of exactly-once records failed");
            }
            last_compaction = Instant::now();
        }
    }
}
