//! FlareDB storage engine: RocksDB with versioned values, compare-and-swap
//! and group commit.
//!
//! # Model
//! Every stored key has a value and a `version` (u64). Versions come from one
//! store-wide counter (`last_version`, kept in the `meta` column family and
//! written in the same RocksDB write batch as the data it versions). Every
//! write takes the next value of that counter, so a key's new version is
//! strictly greater than any version the key ever had, also after it was
//! deleted and created again: compare-and-swap on version has no ABA problem.
//! Data moved in from another store ([`WriteOp::Import`]) raises the counter
//! to at least the highest imported version, which keeps the rule true across
//! region moves.
//!
//! # Writes
//! All writes go through one writer thread ([`Engine::write`]). It takes every
//! request that is waiting, applies them in order against an in-memory overlay
//! (so a later request in the same group sees the earlier ones), and commits
//! the whole group as one RocksDB `WriteBatch`, with one WAL fsync when
//! [`EngineOptions::sync`] is on (the default). Each request's operations are
//! therefore atomic, and a compare-and-swap is atomic against every other
//! write. A request is acknowledged only after its group is durable.
//!
//! The queue in front of the writer holds [`EngineOptions::queue_capacity`]
//! requests. When it is full, [`Engine::write`] waits asynchronously for a
//! place: the runtime thread it runs on goes on serving reads and other
//! tasks.
//!
//! With `sync = false` (the "fast" mode) writes go to the WAL without fsync: a
//! process crash loses nothing, but a machine crash or power loss can lose the
//! last writes.
//!
//! # Range deletion
//! [`WriteOp::DeleteRange`] and [`WriteOp::ClearRange`] write one RocksDB
//! range tombstone (`DeleteRange` in the write batch), whatever the number of
//! keys: neither memory nor the writer's time grows with the range. (An
//! unbounded range ends at the last key there is, which gets a point
//! tombstone: RocksDB needs an end key.) The writer's overlay records the
//! deleted range, so later requests of the group see it deleted and earlier
//! puts of the group inside it are deleted too. Versions stay right: a key
//! created again after a range deletion takes the next value of the
//! store-wide counter, above every version it had.
//!
//! `DeleteRange` answers with the exact number of keys it removed. The
//! writer does not count: when such a request arrives it takes a RocksDB
//! snapshot, hands iterators over it to the counter thread and goes on with
//! other requests. When the count comes back the request joins the next
//! group and is corrected there for each key whose state may differ from the
//! snapshot (keys the writer committed in the range since the snapshot, keys
//! written earlier in the group): time proportional to the writes made while
//! counting, not to the range. A range deletion committed meanwhile over an
//! overlapping range makes the count stale, and it is taken again. The
//! request is applied, and its count is exact, at its commit point; requests
//! that arrived later may be committed before it. `ClearRange` counts
//! nothing and is applied at once (internal clean-ups);
//! [`Engine::reclaim_range`] also drops the SST files inside the range.
//!
//! # Exactly-once writes
//! A client that re-sends a write after an unknown outcome (a timeout, a
//! broken connection) passes the same [`RequestId`] to
//! [`Engine::write_once`]. The writer looks the id up in the `dedup` column
//! family (and among the requests of the current group): if it is there, the
//! answer is the stored results and nothing is applied again; if not, the ops
//! are applied and `id -> (apply time, results)` is written in the same
//! RocksDB write batch as the data, so a crash never keeps one without the
//! other. The record's format is in [`codec`].
//!
//! Records are kept for at least [`EngineOptions::dedup_window`] (default 10
//! minutes) after they were applied: a record inside the window is always
//! found. Older ones are dropped by a compaction filter on the `dedup`
//! column family, which compares the stored apply time with the wall clock;
//! the housekeeper thread compacts the column family every half window, so a
//! record lives at most about 1.5 windows (compaction runs in RocksDB's
//! background threads, never on the writer thread, and no scan of the table
//! is needed). Until it is compacted away an older record still answers.
//!
//! What the client must guarantee: ids are unique (a random `client` per
//! process, `seq` never reused), and an id is never re-sent later than half
//! the window after its first send. The other half is the margin for the
//! request's own time in flight and for wall clocks that step.
//!
//! # Storage failures
//! If the write of a group fails (the WAL append or its fsync), RocksDB may
//! still replay the group on restart, so neither "done" nor "failed" would be
//! a true answer; and in RocksDB's background-error mode the store refuses
//! writes while it would still answer health checks. In both cases the
//! engine logs the reason with `tracing::error!` and exits the process with
//! status [`fatal::STORAGE_FAILURE_EXIT_CODE`] (74, `EX_IOERR`), like
//! PostgreSQL after a failed fsync. The pending writers get no answer (their
//! connections drop: an unknown outcome, which the client resolves by
//! reading or by re-sending with the same request id after the restart).
//! Only a write RocksDB refuses before writing anything (invalid argument,
//! not supported) is answered as a failure. The housekeeper thread checks
//! RocksDB's `rocksdb.background-errors` property every 500 ms.
//!
//! # Layout on disk
//! See [`codec`] for the record formats. Column families: `data` (user keys,
//! raw bytes, records as values), `meta` (engine and daemon metadata) and
//! `dedup` (exactly-once records, keyed by [`RequestId::to_key`]).
//!
//! # Layout of the crate
//! - `engine`: [`Engine`], opening RocksDB, reads, the threads.
//! - `writer`: the writer thread (group commit, overlay, range deletion
//!   counts, exactly-once look-ups) and the counter thread.
//! - `op`: [`WriteOp`], [`OpResult`] and [`RequestId`], plain data.
//! - [`codec`]: the stored records; [`check`]: their properties.
//! - [`fatal`]: what a storage failure does.
//! - `housekeeper`: background-error checks and expiry of exactly-once records.
//! - `datadir`: the data directory's lock and `IDENTITY` file.
//!
//! # Features
//! `engine` (on by default) is the RocksDB engine. Without it the crate is
//! only its pure parts, among them [`codec`], the data directory
//! ([`DataDir`], whose `IDENTITY` file [`Identity::parse`] reads) and
//! [`check`]: the properties of every stored record, checked by the fuzz
//! targets in `fuzz/` and by the test `tests/records.rs`.

pub mod check;
pub mod codec;
mod datadir;
#[cfg(feature = "engine")]
mod engine;
mod error;
#[cfg(feature = "engine")]
pub mod fatal;
#[cfg(feature = "engine")]
mod housekeeper;
mod op;
#[cfg(feature = "engine")]
mod writer;

pub use datadir::{DataDir, Identity};
#[cfg(feature = "engine")]
pub use engine::{
    now_ms, Engine, EngineOptions, Entry, ExportChunk, Queued, RecordBucket, ScanOptions,
    SplitCheck, VersionedWrite,
};
pub use error::{Result, StorageError};
pub use op::{
    dedup_bucket_prefix, dedup_bucket_start, dedup_scope_prefix, is_bucketed_dedup_key,
    versions_taken, CasOutcome, Expected, OpResult, RequestId, VersionedValue, WriteOp,
    REQUEST_ID_LEN,
};
