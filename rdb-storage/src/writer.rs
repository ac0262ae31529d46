//! The writer thread: applies write requests in order and commits each group
//! of waiting requests as one RocksDB write batch (group commit).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use crate::codec::{decode_record, encode_record};
use crate::engine::{CF_DATA, CF_META, LAST_VERSION_KEY};
use crate::{Result, StorageError};

/// A value with the version the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedValue {
    /// The version of the write that stored this value.
    pub version: u64,
    /// The value bytes.
    pub value: Vec<u8>,
}

/// What a compare-and-swap expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The key does not exist.
    Absent,
    /// The key exists with exactly this version.
    Version(u64),
    /// The key exists with exactly this value.
    Value(Vec<u8>),
}

impl Expected {
    /// Whether `current` satisfies the expectation.
    pub fn matches(&self, current: Option<&VersionedValue>) -> bool {
        match (self, current) {
            (Expected::Absent, None) => true,
            (Expected::Version(v), Some(cur)) => cur.version == *v,
            (Expected::Value(v), Some(cur)) => &cur.value == v,
            _ => false,
        }
    }
}

/// One operation of an atomic write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Stores `value` under `key` with a new version.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` (a no-op if it does not exist).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Writes `new` (or deletes, if `new` is `None`) only if the key's current
    /// state matches `expected`.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The condition.
        expected: Expected,
        /// The new value, `None` to delete.
        new: Option<Vec<u8>>,
    },
    /// Removes every key in `[start, end)`; an empty `end` means no upper bound.
    DeleteRange {
        /// First key of the range.
        start: Vec<u8>,
        /// End of the range (exclusive), empty for unbounded.
        end: Vec<u8>,
    },
    /// Stores a record moved in from another store, keeping its version.
    Import {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The version it had on the source store.
        version: u64,
    },
    /// Stores a metadata entry (keys starting with 0x00 are reserved).
    PutMeta {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes a metadata entry.
    DeleteMeta {
        /// The key.
        key: Vec<u8>,
    },
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the condition held and the write was applied.
    pub succeeded: bool,
    /// The key's state the condition was checked against.
    pub current: Option<VersionedValue>,
    /// The version of the written value (`None` if nothing was written or the op deleted).
    pub new_version: Option<u64>,
}

/// The result of one [`WriteOp`], in the same position as the op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// `Put`: the new version.
    Put(u64),
    /// `Delete`: whether the key existed.
    Delete(bool),
    /// `Cas`: the outcome.
    Cas(CasOutcome),
    /// `DeleteRange`: how many keys were removed.
    DeleteRange(u64),
    /// `Import`, `PutMeta`, `DeleteMeta`.
    Done,
}

pub(crate) struct Request {
    pub ops: Vec<WriteOp>,
    pub reply: oneshot::Sender<Result<Vec<OpResult>>>,
}

/// State of a key inside the current group, not yet committed.
type Overlay = BTreeMap<Vec<u8>, Option<VersionedValue>>;

enum Mutation {
    Data(Vec<u8>, Option<VersionedValue>),
    Meta(Vec<u8>, Option<Vec<u8>>),
}

pub(crate) struct Writer {
    pub db: Arc<DB>,
    pub sync: bool,
    pub max_group_ops: usize,
    pub last_version: u64,
    pub stats: Arc<WriterStats>,
}

/// Counters of the writer thread, for measuring group commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// RocksDB write batches committed (one WAL fsync each when syncing).
    pub groups: AtomicU64,
    /// Write requests acknowledged.
    pub requests: AtomicU64,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut ops = first.ops.len();
            let mut group = vec![first];
            while ops < self.max_group_ops {
                match rx.try_recv() {
                    Ok(req) => {
                        ops += req.ops.len();
                        group.push(req);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.commit_group(group);
        }
        tracing::debug!("storage writer thread stopped");
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let mut overlay = Overlay::new();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::with_capacity(group.len());
        let start_version = self.last_version;
        for req in group {
            let mut local = Overlay::new();
            let mut muts = Vec::new();
            let saved_version = self.last_version;
            match self.apply_request(&req.ops, &overlay, &mut local, &mut muts) {
                Ok(results) => {
                    if let Err(e) = self.stage(&mut batch, muts) {
                        self.last_version = saved_version;
                        let _ = req.reply.send(Err(e));
                        continue;
                    }
                    overlay.extend(local);
                    replies.push((req.reply, Ok(results)));
                }
                Err(e) => {
                    self.last_version = saved_version;
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if replies.is_empty() {
            return;
        }
        if self.last_version != start_version {
            match self.db.cf_handle(CF_META) {
                Some(meta) => batch.put_cf(meta, LAST_VERSION_KEY, self.last_version.to_be_bytes()),
                None => {
                    for (reply, _) in replies {
                        let _ = reply.send(Err(StorageError::Corruption(
                            "missing meta column family".into(),
                        )));
                    }
                    return;
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        match self.db.write_opt(batch, &wo) {
            Ok(()) => {
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .requests
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                for (reply, res) in replies {
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                let msg = e.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(StorageError::Corruption(format!(
                        "write failed: {msg}"
                    ))));
                }
            }
        }
    }

    fn stage(&self, batch: &mut WriteBatch, muts: Vec<Mutation>) -> Result<()> {
        let data = self
            .db
            .cf_handle(CF_DATA)
            .ok_or_else(|| StorageError::Corruption("missing data column family".into()))?;
        let meta = self
            .db
            .cf_handle(CF_META)
            .ok_or_else(|| StorageError::Corruption("missing meta column family".into()))?;
        for m in muts {
            match m {
                Mutation::Data(k, Some(v)) => {
                    batch.put_cf(data, &k, encode_record(v.version, &v.value))
                }
                Mutation::Data(k, None) => batch.delete_cf(data, &k),
                Mutation::Meta(k, Some(v)) => batch.put_cf(meta, &k, &v),
                Mutation::Meta(k, None) => batch.delete_cf(meta, &k),
            }
        }
        Ok(())
    }

    fn read(
        &self,
        key: &[u8],
        overlay: &Overlay,
        local: &Overlay,
    ) -> Result<Option<VersionedValue>> {
        if let Some(v) = local.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = overlay.get(key) {
            return Ok(v.clone());
        }
        crate::engine::get_from_db(&self.db, key)
    }

    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    fn set(
        &self,
        key: Vec<u8>,
        val: Option<VersionedValue>,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) {
        muts.push(Mutation::Data(key.clone(), val.clone()));
        local.insert(key, val);
    }

    fn apply_request(
        &mut self,
        ops: &[WriteOp],
        overlay: &Overlay,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) -> Result<Vec<OpResult>> {
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let res = match op {
                WriteOp::Put { key, value } => {
                    check_key(key)?;
                    let version = self.next_version();
                    self.set(
                        key.clone(),
                        Some(VersionedValue {
                            version,
                            value: value.clone(),
                        }),
                        local,
                        muts,
                    );
                    OpResult::Put(version)
                }
                WriteOp::Delete { key } => {
                    check_key(key)?;
                    let existed = self.read(key, overlay, local)?.is_some();
                    if existed {
                        self.set(key.clone(), None, local, muts);
                    }
                    OpResult::Delete(existed)
                }
                WriteOp::Cas { key, expected, new } => {
                    check_key(key)?;
                    let current = self.read(key, overlay, local)?;
                    let succeeded = expected.matches(current.as_ref());
                    let mut new_version = None;
                    if succeeded {
                        match new {
                            Some(value) => {
                                let version = self.next_version();
                                new_version = Some(version);
                                self.set(
                                    key.clone(),
                                    Some(VersionedValue {
                                        version,
                                        value: value.clone(),
                                    }),
                                    local,
                                    muts,
                                );
                            }
                            None if current.is_some() => self.set(key.clone(), None, local, muts),
                            None => {}
                        }
                    }
                    OpResult::Cas(CasOutcome {
                        succeeded,
                        current,
                        new_version,
                    })
                }
                WriteOp::DeleteRange { start, end } => {
                    if !end.is_empty() && end < start {
                        return Err(StorageError::InvalidArgument(
                            "range end is before range start".into(),
                        ));
                    }
                    let mut keys = crate::engine::keys_in_range(&self.db, start, end)?;
                    let upper = if end.is_empty() {
                        Bound::Unbounded
                    } else {
                        Bound::Excluded(end.clone())
                    };
                    let range = (Bound::Included(start.clone()), upper);
                    for (k, v) in overlay.range(range.clone()).chain(local.range(range)) {
                        if v.is_some() {
                            keys.push(k.clone());
                        }
                    }
                    keys.sort();
                    keys.dedup();
                    let mut deleted = 0;
                    for k in keys {
                        if self.read(&k, overlay, local)?.is_some() {
                            deleted += 1;
                            self.set(k, None, local, muts);
                        }
                    }
                    OpResult::DeleteRange(deleted)
                }
                WriteOp::Import {
                    key,
                    value,
                    version,
                } => {
                    check_key(key)?;
                    if *version > crate::codec::MAX_COUNTER {
                        return Err(StorageError::InvalidArgument(format!(
                            "imported version {version} is above the maximum of {}",
                            crate::codec::MAX_COUNTER
                        )));
                    }
                    self.last_version = self.last_version.max(*version);
                    self.set(
                        key.clone(),
                        Some(VersionedValue {
                            version: *version,
                            value: value.clone(),
                        }),
                        local,
                        muts,
                    );
                    OpResult::Done
                }
                WriteOp::PutMeta { key, value } => {
                    check_meta_key(key)?;
                    muts.push(Mutation::Meta(key.clone(), Some(value.clone())));
                    OpResult::Done
                }
                WriteOp::DeleteMeta { key } => {
                    check_meta_key(key)?;
                    muts.push(Mutation::Meta(key.clone(), None));
                    OpResult::Done
                }
            };
            results.push(res);
        }
        Ok(results)
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::InvalidArgument(
            "key must not be empty".into(),
        ));
    }
    Ok(())
}

fn check_meta_key(key: &[u8]) -> Result<()> {
    match key.first() {
        None => Err(StorageError::InvalidArgument(
            "meta key must not be empty".into(),
        )),
        Some(0) => Err(StorageError::InvalidArgument(
            "meta keys starting with 0x00 are reserved".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// Decodes a raw data record into a [`VersionedValue`].
pub(crate) fn decode_versioned(raw: &[u8]) -> Result<VersionedValue> {
    let (version, value) = decode_record(raw)?;
    Ok(VersionedValue {
        version,
        value: value.to_vec(),
    })
}
