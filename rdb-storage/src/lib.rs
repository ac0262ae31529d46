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
//! With `sync = false` (the "fast" mode) writes go to the WAL without fsync: a
//! process crash loses nothing, but a machine crash or power loss can lose the
//! last writes.
//!
//! # Layout on disk
//! See [`codec`] for the record format. Column families: `data` (user keys,
//! raw bytes, records as values) and `meta` (engine and daemon metadata).
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
mod writer;

pub use datadir::{DataDir, Identity};
#[cfg(feature = "engine")]
pub use engine::{Engine, EngineOptions, Entry, ScanOptions};
pub use error::{Result, StorageError};
#[cfg(feature = "engine")]
pub use writer::{CasOutcome, Expected, OpResult, VersionedValue, WriteOp};
