//! The state machine interface a group's user implements, and the adapter
//! that gives it to openraft.
//!
//! The adapter keeps, in the `meta` column family, the group's applied log
//! id and membership (`raft/GROUP/...` keys), written in the same atomic
//! write as the entries they cover.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use rdb_storage::{Engine, WriteOp};

use crate::{decode, encode, Bytes, Member, NodeId, TypeConfig};

/// What a group replicates, applied in memory. Commands and answers are
/// bytes the implementation encodes; apply must be deterministic (the same
/// commands in the same order give every member the same state and
/// answers). For state that lives in the engine and is read while applying
/// (the regions' data), implement [`BatchMachine`] instead.
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

/// A membership, as an applied membership entry sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters and learners by id.
    pub members: BTreeMap<NodeId, Member>,
    /// The voters' ids (the rest of `members` are learners).
    pub voters: BTreeSet<NodeId>,
}

/// Where the answer to one entry goes: the proposer, when it waits on this
/// member (the leader that proposed it); nowhere otherwise.
pub struct Reply(Option<ApplyResponder<TypeConfig>>);

impl Reply {
    /// Sends `answer` to the proposer, if any. Quick and non-blocking: it
    /// may be called on the storage writer's thread.
    pub fn send(self, answer: Vec<u8>) {
        if let Some(r) = self.0 {
            r.send(Bytes(answer));
        }
    }

    /// A reply that goes nowhere (tests, entries nobody waits for).
    pub fn none() -> Reply {
        Reply(None)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Reply(proposer)"
        } else {
            "Reply(none)"
        })
    }
}

/// A snapshot's data, one chunk at a time (each at most about
/// [`CHUNK_BYTES`](crate::CHUNK_BYTES)): a machine's
/// [`snapshot`](BatchMachine::snapshot) produces them, its
/// [`restore`](BatchMachine::restore) consumes them, in the same order.
pub type Chunks = futures::stream::BoxStream<'static, Result<Vec<u8>, String>>;

/// A snapshot's data as openraft carries it.
pub enum SnapshotData {
    /// Chunks not read yet (the sender's, from its machine).
    Chunks(Chunks),
    /// A snapshot received whole and staged in this file (see
    /// `stage.rs`); installing it removes the file.
    Staged(PathBuf),
}

/// One committed entry, handed to [`BatchMachine::apply`].
#[derive(Debug)]
pub struct Entry {
    /// Its log index.
    pub index: u64,
    /// Its command; `None` for Raft's own entries (blank, membership).
    pub command: Option<Vec<u8>>,
    /// For a membership entry: the membership it sets.
    pub membership: Option<Membership>,
    /// The writes that record this entry as applied (applied log id,
    /// membership): the machine writes them in the same atomic write as
    /// the entry's own changes, so that after a crash an entry is either
    /// applied and recorded as such, or neither.
    pub marks: Vec<WriteOp>,
    /// Where its answer goes, once it is written.
    pub reply: Reply,
}

/// What a group replicates, for machines that write their own changes
/// (and read the engine while they apply). Their writes need not be
/// synced: the group's log is synced, and every snapshot is built by a
/// synced write before the log behind it is dropped.
#[tonic::async_trait]
pub trait BatchMachine: Send + Sync + 'static {
    /// Applies committed entries, in order. Each entry's changes and its
    /// marks are written atomically, in entry order, before this returns;
    /// each entry's answer is sent through its [`Reply`] once the entry is
    /// written (it may be sent before this returns, from wherever the write
    /// completes: the answer is on its way one task hop sooner). An error
    /// stops the group (the replies not sent tell their proposers that the
    /// outcome is unknown).
    async fn apply(&self, entries: Vec<Entry>) -> Result<(), String>;
    /// The whole state as of the last applied entry, as chunks; called
    /// only when a member needs a snapshot (no apply runs while it is
    /// called, so the state it captures is exactly the applied one; the
    /// chunks may be read later, while applies go on).
    async fn snapshot(&self) -> Result<Chunks, String>;
    /// Replaces the whole state with the one `chunks` describe (from
    /// [`snapshot`](Self::snapshot) on another member), writing chunk by
    /// chunk, and writes `marks` in its last write, synced, once every
    /// chunk is written. A restore cut short by a crash runs again from the
    /// start when the group starts: it must first remove what an earlier
    /// partial run may have written.
    async fn restore(&self, chunks: Chunks, marks: Vec<WriteOp>) -> Result<(), String>;
}

/// A [`StateMachine`] as a [`BatchMachine`]: a batch of entries is applied
/// in memory and written as one atomic write.
pub(crate) struct InMemory {
    pub engine: Engine,
    pub machine: Arc<dyn StateMachine>,
}

#[tonic::async_trait]
impl BatchMachine for InMemory {
    async fn apply(&self, entries: Vec<Entry>) -> Result<(), String> {
        let mut batch = Vec::new();
        let mut answers = Vec::with_capacity(entries.len());
        for e in entries {
            answers.push((
                e.reply,
                match &e.command {
                    Some(cmd) => self.machine.apply(e.index, cmd, &mut batch),
                    None => Vec::new(),
                },
            ));
            batch.extend(e.marks);
        }
        self.engine.write(batch).await.map_err(|e| e.to_string())?;
        for (reply, answer) in answers {
            reply.send(answer);
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Chunks, String> {
        // The whole state in one chunk: these machines are small (PD's).
        let data = self.machine.snapshot();
        Ok(futures::stream::once(async move { Ok(data) }).boxed())
    }

    async fn restore(&self, mut chunks: Chunks, marks: Vec<WriteOp>) -> Result<(), String> {
        let mut data = Vec::new();
        while let Some(chunk) = chunks.next().await {
            data.extend(chunk?);
        }
        let mut batch = Vec::new();
        self.machine.restore(&data, &mut batch)?;
        batch.extend(marks);
        self.engine.write(batch).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// openraft's view of a [`BatchMachine`].
///
/// Snapshots are taken when a member needs one, not when openraft builds
/// one: building records nothing but the log id (openraft then purges the
/// log behind it), and [`get_current_snapshot`](RaftStateMachine::get_current_snapshot)
/// answers the state as of the last applied entry, which is at or past
/// every snapshot built. So a group never holds a copy of its state just
/// in case a member falls behind.
pub struct Adapter {
    engine: Engine,
    group: u64,
    /// Where received snapshots are staged.
    staging: PathBuf,
    machine: Arc<dyn BatchMachine>,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    /// Set once openraft has loaded its state: before that, snapshot
    /// requests come from the loading (which reads only their log id),
    /// and are answered without the data.
    started: Arc<AtomicBool>,
}

/// A snapshot's log id, taken when openraft asked for a builder (no apply
/// runs then).
pub struct Builder {
    engine: Engine,
    group: u64,
    meta: SnapshotMetaOf<TypeConfig>,
}

fn meta_key(group: u64, what: &str) -> Vec<u8> {
    format!("raft/{group:016x}/{what}").into_bytes()
}

/// The writes that delete the applied mark and membership of `group`.
pub(crate) fn delete_group_ops(group: u64) -> Vec<WriteOp> {
    ["applied", "membership", "snapshot", "installing"]
        .iter()
        .map(|what| WriteOp::DeleteMeta {
            key: meta_key(group, what),
        })
        .collect()
}

impl Adapter {
    pub(crate) fn open(
        engine: &Engine,
        group: u64,
        machine: Arc<dyn BatchMachine>,
        started: Arc<AtomicBool>,
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
            engine: engine.clone(),
            group,
            staging: staging_dir(engine),
            machine,
            applied,
            membership,
            started,
        })
    }

    /// Finishes a snapshot install that a crash cut short (the staged file
    /// it came from is named in the `installing` mark), then removes every
    /// other staged file of the group (left by a crash after an install,
    /// or by a transfer that broke). Call before the group starts.
    pub(crate) async fn resume_install(&mut self) -> crate::Result<()> {
        let key = meta_key(self.group, "installing");
        if let Some(raw) = self.engine.get_meta(&key)? {
            let path = PathBuf::from(String::from_utf8_lossy(&raw).into_owned());
            tracing::warn!(group = self.group, file = %path.display(),
                "a snapshot install was cut short: installing it again");
            let meta = crate::stage::read_meta(&path).await.map_err(|e| {
                crate::Error::Corrupted(format!(
                    "group {}: the snapshot install cut short cannot resume from {}: {e}",
                    self.group,
                    path.display()
                ))
            })?;
            self.install_staged(&meta, &path)
                .await
                .map_err(|e| crate::Error::Stopped(e.to_string()))?;
        }
        for stale in crate::stage::staged_files(&self.staging, self.group) {
            let _ = std::fs::remove_file(stale);
        }
        Ok(())
    }

    /// Installs the staged snapshot at `path`: names the file in the
    /// `installing` mark (synced) first, restores from it, removes the mark
    /// with the restore's last write, then the file.
    async fn install_staged(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        path: &std::path::Path,
    ) -> io::Result<()> {
        let key = meta_key(self.group, "installing");
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: key.clone(),
                value: path.to_string_lossy().into_owned().into_bytes(),
            }])
            .await
            .map_err(io_err)?;
        let chunks = crate::stage::read_chunks(path).await?;
        self.install(meta, chunks, vec![WriteOp::DeleteMeta { key }])
            .await?;
        let _ = tokio::fs::remove_file(path).await;
        Ok(())
    }

    async fn install(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        chunks: Chunks,
        mut marks: Vec<WriteOp>,
    ) -> io::Result<()> {
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        marks.push(self.applied_mark()?);
        marks.push(self.membership_mark()?);
        self.machine.restore(chunks, marks).await.map_err(io_err)
    }

    /// How many voters the last applied membership has.
    pub(crate) fn voters(&self) -> usize {
        self.membership.membership().voter_ids().count()
    }

    /// The index of the last applied entry (0: none).
    pub(crate) fn applied_index(&self) -> u64 {
        self.applied.as_ref().map_or(0, |l| l.index())
    }

    fn applied_mark(&self) -> io::Result<WriteOp> {
        Ok(WriteOp::PutMeta {
            key: meta_key(self.group, "applied"),
            value: encode(&self.applied).map_err(io_err)?,
        })
    }

    fn membership_mark(&self) -> io::Result<WriteOp> {
        Ok(WriteOp::PutMeta {
            key: meta_key(self.group, "membership"),
            value: encode(&self.membership).map_err(io_err)?,
        })
    }

    fn snapshot_meta(&self) -> SnapshotMetaOf<TypeConfig> {
        SnapshotMetaOf::<TypeConfig> {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
        }
    }
}

/// The membership an entry sets, in this crate's terms.
pub(crate) fn membership_of(m: &openraft::Membership<NodeId, Member>) -> Membership {
    Membership {
        members: m.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        voters: m.voter_ids().collect(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        // A synced write: the machine may write its entries without
        // syncing (its log is their durable record); openraft drops the log
        // up to this snapshot once it is built, so everything applied up to
        // here must be durable first (the WAL is sequential: this sync
        // covers every earlier write).
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: meta_key(self.group, "snapshot"),
                value: encode(&self.meta).map_err(io_err)?,
            }])
            .await
            .map_err(io_err)?;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: self.meta.clone(),
            snapshot: SnapshotData::Chunks(futures::stream::empty().boxed()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Adapter {
    type SnapshotData = SnapshotData;
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
        while let Some((e, responder)) = entries.try_next().await? {
            let (command, membership) = match e.payload {
                EntryPayload::Blank => (None, None),
                EntryPayload::Normal(cmd) => (Some(cmd.0), None),
                EntryPayload::Membership(m) => {
                    let ours = membership_of(&m);
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    (None, Some(ours))
                }
            };
            self.applied = Some(e.log_id);
            let mut marks = vec![self.applied_mark()?];
            if membership.is_some() {
                marks.push(self.membership_mark()?);
            }
            batch.push(Entry {
                index: e.log_id.index(),
                command,
                membership,
                marks,
                reply: Reply(responder),
            });
        }
        self.machine.apply(batch).await.map_err(io_err)?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            engine: self.engine.clone(),
            group: self.group,
            meta: self.snapshot_meta(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        match snapshot {
            SnapshotData::Staged(path) => self.install_staged(meta, &path).await,
            SnapshotData::Chunks(chunks) => self.install(meta, chunks, Vec::new()).await,
        }
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        if self.applied.is_none() {
            return Ok(None);
        }
        let meta = self.snapshot_meta();
        let data = if self.started.load(Ordering::Acquire) {
            self.machine.snapshot().await.map_err(io_err)?
        } else {
            futures::stream::empty().boxed()
        };
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::Chunks(data),
        }))
    }
}

/// Where the snapshots a store receives are staged: a directory inside the
/// engine's.
pub(crate) fn staging_dir(engine: &Engine) -> PathBuf {
    engine.path().join("raft-snapshots")
}
