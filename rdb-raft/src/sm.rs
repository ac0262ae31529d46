//! The state machine interface a group's user implements, and the adapter
//! that gives it to openraft.
//!
//! The adapter keeps, in the `meta` column family, the group's applied log
//! id and membership (written in the same batch as the commands they
//! cover) and its last snapshot (`raft/GROUP/...` keys).

use std::io::{self, Cursor};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use rdb_storage::{Engine, WriteOp};
use serde::{Deserialize, Serialize};

use crate::{decode, encode, Bytes, TypeConfig};

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

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

#[derive(Serialize, Deserialize, Clone)]
struct Stored {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// openraft's view of a [`StateMachine`].
pub struct Adapter {
    engine: Engine,
    group: u64,
    machine: Arc<dyn StateMachine>,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    /// Snapshots built since start (for the log).
    snapshots_built: u64,
}

/// A snapshot taken when openraft asked for a builder (no apply runs then),
/// so its data matches its log id exactly.
pub struct Builder {
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

    fn marks(&self, batch: &mut Vec<WriteOp>) -> io::Result<()> {
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "applied"),
            value: encode(&self.applied).map_err(io_err)?,
        });
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "membership"),
            value: encode(&self.membership).map_err(io_err)?,
        });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>> {
        let value = encode(&self.stored).map_err(io_err)?;
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: meta_key(self.group, "snapshot"),
                value,
            }])
            .await
            .map_err(io_err)?;
        Ok(SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta: self.stored.meta.clone(),
            snapshot: Cursor::new(self.stored.data.clone()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Adapter {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        while let Some((e, responder)) = entries.try_next().await? {
            let answer = match e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(cmd) => {
                    self.machine.apply(e.log_id.index(), &cmd.0, &mut batch)
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    Vec::new()
                }
            };
            self.applied = Some(e.log_id);
            answers.push((responder, answer));
        }
        self.marks(&mut batch)?;
        // The answers go out once the batch they describe is written.
        self.engine.write(batch).await.map_err(io_err)?;
        for (responder, answer) in answers {
            if let Some(r) = responder {
                r.send(Bytes(answer));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.snapshots_built += 1;
        Builder {
            engine: self.engine.clone(),
            group: self.group,
            stored: Stored {
                meta: SnapshotMetaOf::<TypeConfig> {
                    last_log_id: self.applied,
                    last_membership: self.membership.clone(),
                },
                data: self.machine.snapshot(),
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Cursor<Vec<u8>>,
    ) -> io::Result<()> {
        let data = snapshot.into_inner();
        let mut batch = Vec::new();
        self.machine.restore(&data, &mut batch).map_err(io_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.marks(&mut batch)?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        batch.push(WriteOp::PutMeta {
            key: meta_key(self.group, "snapshot"),
            value: encode(&stored).map_err(io_err)?,
        });
        self.engine.write(batch).await.map_err(io_err)?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>>> {
        let raw = self
            .engine
            .get_meta(&meta_key(self.group, "snapshot"))
            .map_err(io_err)?;
        let Some(raw) = raw else { return Ok(None) };
        let stored: Stored = decode(&raw).map_err(io_err)?;
        Ok(Some(SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta: stored.meta,
            snapshot: Cursor::new(stored.data),
        }))
    }
}
