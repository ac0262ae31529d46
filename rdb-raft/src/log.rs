//! The Raft log and vote of a group, in the `raft` column family.
//!
//! Keys: `group_id (8 bytes BE) | kind (1 byte) [| index (8 bytes BE)]`,
//! kinds [`VOTE`], [`ENTRY`], [`PURGED`] (and `4`, the committed log id
//! that earlier versions saved, no longer read or written). Every change goes
//! through the engine's writer thread, so it is one synced RocksDB write
//! batch, grouped with whatever else the writer commits at the same time
//! (the entries of other groups on the same store, for instance). An
//! append returns once its write is queued; its entries are read from
//! memory until they are written, and openraft hears that they are
//! durable, in append order, from the writer thread itself.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader};
use rdb_storage::{Engine, VersionedWrite, WriteOp};

use crate::{decode, encode, TypeConfig};

const VOTE: u8 = 1;
const ENTRY: u8 = 2;
const PURGED: u8 = 3;

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

/// The writes that give a new member of `group` the group's first log
/// entry, `first` (see [`crate::seed_ops`]), unless it already has Raft
/// state (a vote: it ran before): then none.
pub(crate) fn seed_ops(
    engine: &Engine,
    group: u64,
    first: &EntryOf<TypeConfig>,
) -> crate::Result<Vec<WriteOp>> {
    if engine.get_raft(&key(group, VOTE, None))?.is_some() {
        return Ok(Vec::new());
    }
    let value = encode(first).map_err(|e| crate::Error::Config(e.to_string()))?;
    Ok(vec![WriteOp::PutRaft {
        key: key(group, ENTRY, Some(first.log_id.index())),
        value,
    }])
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Entries appended and queued in the writer but maybe not written yet, by
/// index: reads see them at once (openraft replicates them while they are
/// being synced).
type Tail = Arc<Mutex<BTreeMap<u64, EntryOf<TypeConfig>>>>;

/// The log store of one group.
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    group: u64,
    tail: Tail,
}

impl LogStore {
    /// The log of `group` in `engine`.
    pub fn new(engine: Engine, group: u64) -> LogStore {
        LogStore {
            engine,
            group,
            tail: Arc::default(),
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
        // The tail first: an entry leaves it only once it is readable from
        // the engine, so read in this order nothing falls between the two
        // (the writer thread may write and drop entries meanwhile).
        let tail: Vec<EntryOf<TypeConfig>> = self
            .tail()
            .range(start..end)
            .map(|(_, e)| e.clone())
            .collect();
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
        for e in tail {
            out.insert(e.log_id.index(), e);
        }
        Ok(out.into_values().collect())
    }

    async fn write(&self, ops: Vec<WriteOp>) -> io::Result<()> {
        self.engine.write(ops).await.map(|_| ()).map_err(io_err)
    }

    /// The most voters of any membership in the log after index `applied`
    /// (0 when there is none): a membership appended but not applied yet.
    pub(crate) fn most_voters_after(&self, applied: u64) -> io::Result<usize> {
        Ok(self
            .entries(applied.saturating_add(1), u64::MAX)?
            .iter()
            .filter_map(|e| match &e.payload {
                openraft::EntryPayload::Membership(m) => Some(m.voter_ids().count()),
                openraft::EntryPayload::Blank | openraft::EntryPayload::Normal(_) => None,
            })
            .max()
            .unwrap_or(0))
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
        // The tail before the engine, as in `entries`.
        let newest = self.tail().values().next_back().map(|e| e.log_id);
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
        let last = match newest {
            Some(n) if last.as_ref().is_none_or(|l| l.index() < n.index()) => Some(n),
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

    // `save_committed` and `read_committed` keep openraft's defaults (not
    // saved): both machines behind this log persist their applied log id
    // with what they apply, so a restarted member never reverts to an
    // older state, and only a leader that has applied the first entry of
    // its term serves. Saving it cost a writer round trip in series before
    // every apply (and, synced, a second fsync); ids saved by earlier
    // versions (kind 4) are ignored.

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let mut new = Vec::new();
        #[cfg(feature = "failpoints")]
        let mut membership = false;
        for e in entries {
            #[cfg(feature = "failpoints")]
            {
                membership |= openraft::entry::RaftEntry::get_membership(&e).is_some();
            }
            ops.push(WriteOp::PutRaft {
                key: key(self.group, ENTRY, Some(e.log_id.index())),
                value: encode(&e).map_err(io_err)?,
            });
            written.push(e.log_id);
            new.push(e);
        }
        // Readable at once from the tail; returns once the write is queued
        // (the writer keeps the order of everything queued), so openraft
        // replicates the entries while they are synced here. The writer
        // thread itself tells openraft when they are durable (in append
        // order), once it has dropped them from the tail (they are readable
        // from the engine then).
        {
            let mut t = self.tail();
            for e in new {
                t.insert(e.log_id.index(), e);
            }
        }
        let tail = self.tail.clone();
        let done = move |res: rdb_storage::Result<Vec<rdb_storage::OpResult>>| {
            if res.is_ok() {
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                for id in &written {
                    // A later truncation and append may have replaced it.
                    if t.get(&id.index()).map(|e| &e.log_id) == Some(id) {
                        t.remove(&id.index());
                    }
                }
            }
            let res = res.map(|_| ()).map_err(io_err);
            // Test builds only: a membership change reported durable this
            // many milliseconds late (it is committed and applied late, so
            // a new learner's snapshot is taken before it).
            #[cfg(feature = "failpoints")]
            if let Some(ms) = membership
                .then(|| fail::eval("membership-flush-delay", |a| a?.parse::<u64>().ok()))
                .flatten()
                .flatten()
            {
                tracing::warn!(ms, "failpoint membership-flush-delay: delaying");
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    callback.io_completed(res);
                });
                return;
            }
            callback.io_completed(res);
        };
        let write = VersionedWrite {
            ops,
            sync: true,
            ..Default::default()
        };
        self.engine.enqueue_then(write, done).await.map_err(io_err)
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
