//! The state machine interface a group's user implements, and the adapter
//! that gives it to openraft.
//!
//! The adapter keeps, in the `meta` column family, the group's applied log
//! id and membership (written in the same batch as the commands they
//! cover) and its last snapshot (`raft/GROUP/...` keys).

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rdb_storage::{Engine, WriteOp};
use serde::{Deserialize, Serialize};

use crate::{decode, encode, Member, NodeId, TypeConfig};

/// What a group replicates. Commands and answers are bytes the
/// implementation encodes; apply must be deterministic (the same commands
/// in the same order give every member the same state and answers).
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed `command` at log `index`: updates the state in
    /// memory, pushes the changes that make it durable onto `batch` (written
    /// atomically with the applied index before the answer is given), and
    /// returns the answer for the proposer.
    fn apply(&self, index: u64, command: &[u8], batch: &mut Vec<WriteOp>) -> Vec<u8>;
    /// The whole state, encoded.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with `data` (from [`snapshot`](Self::snapshot)
    /// on another member), in memory and, through `batch`, on disk.
    fn restore(&self, data: &[u8], batch: &mut Vec<WriteOp>) -> Result<(), String>;
}

type StResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

/// openraft's view of a [`StateMachine`].
pub(crate) struct Adapter {
    engine: Engine,
    group: u64,
    machine: Arc<dyn StateMachine>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    snapshots_built: u64,
}

/// A snapshot taken when openraft asked for a builder (no apply runs then),
/// so its data matches its log id exactly.
pub(crate) struct Builder {
    engine: Engine,
    group: u64,
    stored: Stored,
}

fn meta_key(group: u64, what: &str) -> Vec<u8> {
    format!("raft/{group:016x}/{what}").into_bytes()
}

impl Adapter {
    pub(crate) fn open(
        engine: Engine,
        group: u64,
        machine: Arc<dyn StateMachine>,
    ) -> crate::Result<Adapter> {
        let read = |what: &str| -> crate::Result<Option<Vec<u8>>> {
            Ok(engine.get_meta(&meta_key(group, what))?)
        };
        let applied = match read("applied")? {
            Some(raw) => decode(&raw).map_err(crate::Error::Corrupted)?,
            None => None,
        };
        let membership = match read("membership")? {
            Some(raw) => decode(&raw).map_err(crate::Error::Corrupted)?,
            None => StoredMembership::default(),
        };
        Ok(Adapter {
            engine,
            group,
            machine,
            applied,
            membership,
            snapshots_built: 0,
        })
    }

    /// How many voters the last applied membership has.
    pub(crate) fn voters(&self) -> usize {
        self.membership.membership().voter_ids().count()
    }

    fn marks(&self, batch: &mut Vec<WriteOp>) -> StResult<()> {
        let applied = encode(&self.applied).map_err(|e| StorageIOError::write(&io_err(e)))?;
        let membership = encode(&self.membership).map_err(|e| StorageIOError::write(&io_err(e)))?;
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "applied"),
            value: applied,
        });
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "membership"),
            value: membership,
        });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> StResult<Snapshot<TypeConfig>> {
        let value =
            encode(&self.stored).map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: meta_key(self.group, "snapshot"),
                value,
            }])
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        Ok(Snapshot {
            meta: self.stored.meta.clone(),
            snapshot: Box::new(Cursor::new(self.stored.data.clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Adapter {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> StResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StResult<Vec<Vec<u8>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for e in entries {
            self.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => answers.push(Vec::new()),
                EntryPayload::Normal(cmd) => {
                    answers.push(self.machine.apply(e.log_id.index, &cmd, &mut batch))
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    answers.push(Vec::new());
                }
            }
        }
        self.marks(&mut batch)?;
        self.engine
            .write(batch)
            .await
            .map_err(|e| StorageIOError::write(&io_err(e)))?;
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.snapshots_built += 1;
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshots_built),
            None => format!("--{}", self.snapshots_built),
        };
        Builder {
            engine: self.engine.clone(),
            group: self.group,
            stored: Stored {
                meta: SnapshotMeta {
                    last_log_id: self.applied,
                    last_membership: self.membership.clone(),
                    snapshot_id,
                },
                data: self.machine.snapshot(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StResult<()> {
        let data = snapshot.into_inner();
        let sig = meta.signature();
        let mut batch = Vec::new();
        self.machine
            .restore(&data, &mut batch)
            .map_err(|e| StorageIOError::read_snapshot(Some(sig.clone()), &io_err(e)))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.marks(&mut batch)?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "snapshot"),
            value: encode(&stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &io_err(e)))?,
        });
        self.engine
            .write(batch)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &io_err(e)))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StResult<Option<Snapshot<TypeConfig>>> {
        let raw = self
            .engine
            .get_meta(&meta_key(self.group, "snapshot"))
            .map_err(|e| StorageIOError::read_snapshot(None, &io_err(e)))?;
        let Some(raw) = raw else { return Ok(None) };
        let stored: Stored =
            decode(&raw).map_err(|e| StorageIOError::read_snapshot(None, &io_err(e)))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
