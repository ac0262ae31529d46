//! The Raft log and vote of a group, in the `raft` column family.
//!
//! Keys: `group_id (8 bytes BE) | kind (1 byte) [| index (8 bytes BE)]`,
//! kinds [`VOTE`], [`ENTRY`], [`PURGED`], [`COMMITTED`]. Every change goes
//! through the engine's writer thread, so it is one synced RocksDB write
//! batch, grouped with whatever else the writer commits at the same time
//! (the entries of other groups on the same store, for instance). An
//! append returns once its write is queued; its entries are read from
//! memory until they are written, and openraft hears that they are
//! durable, in append order, from a flush task of the group.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader};
use rdb_storage::{Engine, Queued, VersionedWrite, WriteOp};
use tokio::sync::mpsc;

use crate::{decode, encode, TypeConfig};

const VOTE: u8 = 1;
const ENTRY: u8 = 2;
const PURGED: u8 = 3;
const COMMITTED: u8 = 4;

fn key(group: u64, kind: u8, index: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    if let Some(i) = index {
        k.extend_from_slice(&i.to_be_bytes());
    }
    k
}

/// The writes that delete every log entry and the vote of `group`.
pub(crate) fn delete_group_ops(group: u64) -> Vec<WriteOp> {
    let start = group.to_be_bytes().to_vec();
    let end = match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    vec![WriteOp::DeleteRaftRange { start, end }]
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Entries appended and queued in the writer but maybe not written yet, by
/// index: reads see them at once (openraft replicates them while they are
/// being synced).
type Tail = Arc<Mutex<BTreeMap<u64, EntryOf<TypeConfig>>>>;

/// An append being synced: its queued write, the log ids it holds, and
/// openraft's callback.
struct Flush {
    queued: Queued,
    written: Vec<LogIdOf<TypeConfig>>,
    callback: IOFlushed<TypeConfig>,
}

/// The log store of one group.
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    group: u64,
    tail: Tail,
    /// To the task that waits for appends to be synced, in order.
    flushes: mpsc::UnboundedSender<Flush>,
}

/// Waits for each append's write, in append order; drops its entries from
/// the tail once they are readable from the engine, then tells openraft.
async fn flush_loop(mut rx: mpsc::UnboundedReceiver<Flush>, tail: Tail) {
    while let Some(f) = rx.recv().await {
        let res = f.queued.wait().await;
        if res.is_ok() {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            for id in &f.written {
                // A later truncation and append may have replaced it.
                if t.get(&id.index()).map(|e| &e.log_id) == Some(id) {
                    t.remove(&id.index());
                }
            }
        }
        f.callback.io_completed(res.map(|_| ()).map_err(io_err));
    }
}

impl LogStore {
    /// The log of `group` in `engine` (starts its flush task: call within
    /// a tokio runtime).
    pub fn new(engine: Engine, group: u64) -> LogStore {
        let tail: Tail = Arc::default();
        let (flushes, rx) = mpsc::unbounded_channel();
        tokio::spawn(flush_loop(rx, tail.clone()));
        LogStore {
            engine,
            group,
            tail,
            flushes,
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, EntryOf<TypeConfig>>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a vote was ever saved (the member ran before).
    pub fn has_vote(&self) -> crate::Result<bool> {
        Ok(self
            .engine
            .get_raft(&key(self.group, VOTE, None))?
            .is_some())
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(&self, kind: u8) -> io::Result<Option<T>> {
        let raw = self
            .engine
            .get_raft(&key(self.group, kind, None))
            .map_err(io_err)?;
        raw.map(|r| decode(&r).map_err(io_err)).transpose()
    }

    async fn put<T: serde::Serialize>(&self, kind: u8, v: &T) -> io::Result<()> {
        let value = encode(v).map_err(io_err)?;
        self.engine
            .write(vec![WriteOp::PutRaft {
                key: key(self.group, kind, None),
                value,
            }])
            .await
            .map_err(io_err)?;
        Ok(())
    }

    fn entries(&self, start: u64, end: u64) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let rows = self
            .engine
            .scan_raft(
                &key(self.group, ENTRY, Some(start)),
                &key(self.group, ENTRY, Some(end)),
                false,
                usize::MAX,
            )
            .map_err(io_err)?;
        let mut out: BTreeMap<u64, EntryOf<TypeConfig>> = BTreeMap::new();
        for (_, v) in &rows {
            let e: EntryOf<TypeConfig> = decode(v).map_err(io_err)?;
            out.insert(e.log_id.index(), e);
        }
        // Entries not written yet (or being written) are newer than the
        // engine's.
        for (i, e) in self.tail().range(start..end) {
            out.insert(*i, e.clone());
        }
        Ok(out.into_values().collect())
    }

    async fn write(&self, ops: Vec<WriteOp>) -> io::Result<()> {
        self.engine.write(ops).await.map(|_| ()).map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(start, end)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.get(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last = self
            .engine
            .scan_raft(
                &key(self.group, ENTRY, Some(0)),
                &key(self.group, ENTRY, Some(u64::MAX)),
                true,
                1,
            )
            .map_err(io_err)?;
        let last = match last.first() {
            Some((_, v)) => Some(decode::<EntryOf<TypeConfig>>(v).map_err(io_err)?.log_id),
            None => None,
        };
        let last = match self.tail().values().next_back() {
            Some(e) if last.as_ref().is_none_or(|l| l.index() < e.log_id.index()) => Some(e.log_id),
            _ => last,
        };
        let purged: Option<LogIdOf<TypeConfig>> = self.get(PURGED)?;
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.put(VOTE, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Not synced: openraft saves it on every commit, only to apply
        // faster after a restart; a stale one (lost in a crash) is safe, as
        // is none. Syncing it put a second fsync in series on every write.
        let value = encode(&committed).map_err(io_err)?;
        self.engine
            .enqueue_versioned(VersionedWrite {
                ops: vec![WriteOp::PutRaft {
                    key: key(self.group, COMMITTED, None),
                    value,
                }],
                sync: false,
                ..Default::default()
            })
            .await
            .map_err(io_err)?
            .wait()
            .await
            .map(|_| ())
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        Ok(self
            .get::<Option<LogIdOf<TypeConfig>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let mut new = Vec::new();
        for e in entries {
            ops.push(WriteOp::PutRaft {
                key: key(self.group, ENTRY, Some(e.log_id.index())),
                value: encode(&e).map_err(io_err)?,
            });
            written.push(e.log_id);
            new.push(e);
        }
        // Readable at once from the tail; returns once the write is queued
        // (the writer keeps the order of everything queued), so openraft
        // replicates the entries while they are synced here. The callback
        // runs when they are durable.
        {
            let mut t = self.tail();
            for e in new {
                t.insert(e.log_id.index(), e);
            }
        }
        let queued = self
            .engine
            .enqueue_versioned(VersionedWrite {
                ops,
                sync: true,
                ..Default::default()
            })
            .await
            .map_err(io_err)?;
        self.flushes
            .send(Flush {
                queued,
                written,
                callback,
            })
            .map_err(|_| io_err("the log's flush task stopped"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let from = last.map_or(0, |l| l.index() + 1);
        self.tail().retain(|i, _| *i < from);
        self.write(vec![WriteOp::DeleteRaftRange {
            start: key(self.group, ENTRY, Some(from)),
            end: key(self.group, ENTRY + 1, None),
        }])
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        let upto = log_id.index();
        self.tail().retain(|i, _| *i > upto);
        // The purge mark and the deletion in one batch.
        self.write(vec![
            WriteOp::PutRaft {
                key: key(self.group, PURGED, None),
                value: encode(&log_id).map_err(io_err)?,
            },
            WriteOp::DeleteRaftRange {
                start: key(self.group, ENTRY, Some(0)),
                end: key(self.group, ENTRY, Some(upto + 1)),
            },
        ])
        .await
    }
}
