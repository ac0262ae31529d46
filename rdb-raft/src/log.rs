//! The Raft log and vote of a group, in the `raft` column family.
//!
//! Keys: `group_id (8 bytes BE) | kind (1 byte) [| index (8 bytes BE)]`,
//! kinds [`VOTE`], [`ENTRY`], [`PURGED`], [`COMMITTED`]. Every change goes
//! through the engine's writer thread, so it is one synced RocksDB write
//! batch, grouped with whatever else the writer commits at the same time
//! (the entries of other groups on the same store, for instance).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rdb_storage::{Engine, WriteOp};

use crate::{decode, encode, NodeId, TypeConfig};

const VOTE: u8 = 1;
const ENTRY: u8 = 2;
const PURGED: u8 = 3;
const COMMITTED: u8 = 4;

type StResult<T> = Result<T, StorageError<NodeId>>;

fn key(group: u64, kind: u8, index: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    if let Some(i) = index {
        k.extend_from_slice(&i.to_be_bytes());
    }
    k
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The log store of one group.
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    group: u64,
}

impl LogStore {
    /// The log of `group` in `engine`.
    pub fn new(engine: Engine, group: u64) -> LogStore {
        LogStore { engine, group }
    }

    /// Whether a vote was ever saved (the member ran before).
    pub fn has_vote(&self) -> crate::Result<bool> {
        Ok(self
            .engine
            .get_raft(&key(self.group, VOTE, None))?
            .is_some())
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(&self, kind: u8) -> StResult<Option<T>> {
        let raw = self
            .engine
            .get_raft(&key(self.group, kind, None))
            .map_err(|e| StorageIOError::read(&io_err(e)))?;
        raw.map(|r| decode(&r).map_err(|e| StorageIOError::read(&io_err(e)).into()))
            .transpose()
    }

    async fn put<T: serde::Serialize>(&self, kind: u8, v: &T) -> StResult<()> {
        let value = encode(v).map_err(|e| StorageIOError::write(&io_err(e)))?;
        self.engine
            .write(vec![WriteOp::PutRaft {
                key: key(self.group, kind, None),
                value,
            }])
            .await
            .map_err(|e| StorageIOError::write(&io_err(e)))?;
        Ok(())
    }

    fn entries(&self, start: u64, end: u64, limit: usize) -> StResult<Vec<Entry<TypeConfig>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let rows = self
            .engine
            .scan_raft(
                &key(self.group, ENTRY, Some(start)),
                &key(self.group, ENTRY, Some(end)),
                false,
                limit,
            )
            .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
        rows.iter()
            .map(|(_, v)| decode(v).map_err(|e| StorageIOError::read_logs(&io_err(e)).into()))
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StResult<Vec<Entry<TypeConfig>>> {
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
        self.entries(start, end, usize::MAX)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StResult<LogState<TypeConfig>> {
        let last = self
            .engine
            .scan_raft(
                &key(self.group, ENTRY, Some(0)),
                &key(self.group, ENTRY, Some(u64::MAX)),
                true,
                1,
            )
            .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
        let last = match last.first() {
            Some((_, v)) => Some(
                decode::<Entry<TypeConfig>>(v)
                    .map_err(|e| StorageIOError::read_logs(&io_err(e)))?
                    .log_id,
            ),
            None => None,
        };
        let purged: Option<LogId<NodeId>> = self.get(PURGED)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StResult<()> {
        self.put(VOTE, vote)
            .await
            .map_err(|_| StorageIOError::write_vote(&io_err("saving the vote")).into())
    }

    async fn read_vote(&mut self) -> StResult<Option<Vote<NodeId>>> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StResult<()> {
        self.put(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> StResult<Option<LogId<NodeId>>> {
        Ok(self.get::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        for e in entries {
            let value = encode(&e).map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
            ops.push(WriteOp::PutRaft {
                key: key(self.group, ENTRY, Some(e.log_id.index)),
                value,
            });
        }
        // Waits until the writer thread has synced the batch: openraft may
        // read the entries back (to replicate them) as soon as this returns,
        // and reads see only what the writer has committed.
        let res = self.engine.write(ops).await;
        callback.log_io_completed(res.as_ref().map(|_| ()).map_err(io_err));
        res.map(|_| ())
            .map_err(|e| StorageIOError::write_logs(&io_err(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        self.engine
            .write(vec![WriteOp::DeleteRaftRange {
                start: key(self.group, ENTRY, Some(log_id.index)),
                end: key(self.group, ENTRY + 1, None),
            }])
            .await
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StResult<()> {
        let value = encode(&log_id).map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        // The purge mark and the deletion in one batch.
        self.engine
            .write(vec![
                WriteOp::PutRaft {
                    key: key(self.group, PURGED, None),
                    value,
                },
                WriteOp::DeleteRaftRange {
                    start: key(self.group, ENTRY, Some(0)),
                    end: key(self.group, ENTRY, Some(log_id.index + 1)),
                },
            ])
            .await
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        Ok(())
    }
}
