//! The engine: RocksDB plus the writer thread.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB};
use tokio::sync::oneshot;

use crate::codec::{decode_counter, MAX_COUNTER};
use crate::writer::{decode_versioned, Request, Writer, WriterStats};
use crate::{CasOutcome, Expected, OpResult, Result, StorageError, VersionedValue, WriteOp};

pub(crate) const CF_DATA: &str = "data";
pub(crate) const CF_META: &str = "meta";
pub(crate) const LAST_VERSION_KEY: &[u8] = b"\x00last_version";

/// Options of [`Engine::open`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// fsync the WAL before acknowledging a write (default `true`). With
    /// `false`, a process crash loses nothing but an OS crash or power loss
    /// can lose the last acknowledged writes.
    pub sync: bool,
    /// Most operations the writer commits in one group (default 4096).
    pub max_group_ops: usize,
    /// Capacity of the queue in front of the writer thread (default 8192 requests).
    pub queue_capacity: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            sync: true,
            max_group_ops: 4096,
            queue_capacity: 8192,
        }
    }
}

/// A key with its value and version, as returned by scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for keys-only scans).
    pub value: Vec<u8>,
    /// The version of the value.
    pub version: u64,
}

/// Options of [`Engine::scan`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Most entries to return; 0 means no limit.
    pub limit: usize,
    /// Return entries from the end of the range backwards.
    pub reverse: bool,
    /// Leave values empty.
    pub keys_only: bool,
    /// Stop before the entry that would take the key and value bytes (plus
    /// `overhead` per entry) past this; the first entry is always returned.
    /// 0 means no limit.
    pub max_bytes: usize,
    /// Bytes counted per entry besides its key and value (for `max_bytes`).
    pub overhead: usize,
}

struct Inner {
    db: Arc<DB>,
    stats: Arc<WriterStats>,
    tx: Mutex<Option<SyncSender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock() {
            if let Some(h) = w.take() {
                let _ = h.join();
            }
        }
    }
}

/// The storage engine. Cheap to clone; all clones share one database.
///
/// Reads ([`get`](Engine::get), [`scan`](Engine::scan), ...) are blocking
/// RocksDB calls: call them from `spawn_blocking` or a dedicated thread when
/// on an async runtime. Writes go through the writer thread; [`write`](Engine::write)
/// is async and does not block the runtime.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.inner.db.path())
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) an engine in `path`.
    pub fn open(path: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_opts.increase_parallelism(2);
        db_opts.set_keep_log_file_num(5);
        // Reuse WAL files whose data has been flushed instead of creating new
        // ones: appends then overwrite already-allocated blocks, so the fsync
        // of each acknowledged write does not also commit a file-size change
        // to the file system journal (a second device flush on ext4/xfs).
        db_opts.set_recycle_log_file_num(4);
        // The meta column family takes a few bytes per write group and would
        // otherwise almost never fill its memtable and flush, keeping every
        // WAL file alive (slow restarts, nothing to recycle). Past this total
        // WAL size RocksDB flushes the column families holding the oldest WAL.
        db_opts.set_max_total_wal_size(128 << 20);
        let cfs = [CF_DATA, CF_META].map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = Arc::new(DB::open_cf_descriptors(&db_opts, path.as_ref(), cfs)?);
        let last_version = {
            let meta = db
                .cf_handle(CF_META)
                .ok_or_else(|| StorageError::Corruption("missing meta column family".into()))?;
            match db.get_cf(meta, LAST_VERSION_KEY)? {
                Some(raw) => decode_counter(&raw, "last_version", MAX_COUNTER)?,
                None => 0,
            }
        };
        let (tx, rx) = sync_channel(opts.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let writer = Writer {
            stats: stats.clone(),
            db: db.clone(),
            sync: opts.sync,
            max_group_ops: opts.max_group_ops.max(1),
            last_version,
        };
        let handle = std::thread::Builder::new()
            .name("rdb-storage-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::io("starting the writer thread", e))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                db,
                stats,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    fn submit(&self, ops: Vec<WriteOp>) -> Result<oneshot::Receiver<Result<Vec<OpResult>>>> {
        let (reply, rx) = oneshot::channel();
        let tx = self
            .inner
            .tx
            .lock()
            .map_err(|_| StorageError::Closed)?
            .clone()
            .ok_or(StorageError::Closed)?;
        tx.send(Request { ops, reply })
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }

    /// Applies `ops` atomically; returns one result per op, in order. The
    /// future resolves once the write is durable (see [`EngineOptions::sync`]).
    ///
    /// The call may block briefly if the writer's queue is full (back-pressure).
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        self.submit(ops)?.await.map_err(|_| StorageError::Closed)?
    }

    /// Blocking form of [`write`](Engine::write); must not be called on an async runtime thread.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        self.submit(ops)?
            .blocking_recv()
            .map_err(|_| StorageError::Closed)?
    }

    /// Stores one value; returns its version.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64> {
        match self.write(vec![WriteOp::Put { key, value }]).await?.pop() {
            Some(OpResult::Put(v)) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes one key; returns whether it existed.
    pub async fn delete(&self, key: Vec<u8>) -> Result<bool> {
        match self.write(vec![WriteOp::Delete { key }]).await?.pop() {
            Some(OpResult::Delete(b)) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    /// Compare-and-swap on one key (`new = None` deletes).
    pub async fn compare_and_swap(
        &self,
        key: Vec<u8>,
        expected: Expected,
        new: Option<Vec<u8>>,
    ) -> Result<CasOutcome> {
        match self
            .write(vec![WriteOp::Cas { key, expected, new }])
            .await?
            .pop()
        {
            Some(OpResult::Cas(o)) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// (write groups committed, write requests acknowledged) since open. With
    /// `sync`, each group is one WAL fsync: requests / groups is how many
    /// writers shared each fsync.
    pub fn write_stats(&self) -> (u64, u64) {
        let s = &self.inner.stats;
        (
            s.groups.load(Ordering::Relaxed),
            s.requests.load(Ordering::Relaxed),
        )
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<VersionedValue>> {
        get_from_db(&self.inner.db, key)
    }

    /// Reads many keys; one entry per key, `None` for missing keys.
    pub fn batch_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<VersionedValue>>> {
        let cf = data_cf(&self.inner.db)?;
        self.inner
            .db
            .batched_multi_get_cf(cf, keys.iter(), false)
            .into_iter()
            .map(|r| match r? {
                Some(raw) => decode_versioned(&raw).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Scans `[start, end)` in key order (or reverse); an empty `end` means
    /// the end of the key space.
    pub fn scan(&self, start: &[u8], end: &[u8], opts: ScanOptions) -> Result<Vec<Entry>> {
        Ok(self.scan_page(start, end, opts)?.0)
    }

    /// [`scan`](Engine::scan), also telling whether it stopped at
    /// `opts.limit` or `opts.max_bytes` (`true`: more entries may follow
    /// after the last one) rather than at the end of the range.
    pub fn scan_page(
        &self,
        start: &[u8],
        end: &[u8],
        opts: ScanOptions,
    ) -> Result<(Vec<Entry>, bool)> {
        let db = &self.inner.db;
        let cf = data_cf(db)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        if !end.is_empty() {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mode = if opts.reverse {
            IteratorMode::End
        } else {
            IteratorMode::From(start, Direction::Forward)
        };
        let limit = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let max_bytes = if opts.max_bytes == 0 {
            usize::MAX
        } else {
            opts.max_bytes
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in db.iterator_cf_opt(cf, ro, mode) {
            if out.len() >= limit {
                return Ok((out, true));
            }
            let (k, v) = item?;
            let (version, value) = crate::codec::decode_record(&v)?;
            let size = k.len() + opts.overhead + if opts.keys_only { 0 } else { value.len() };
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(size);
            out.push(Entry {
                key: k.to_vec(),
                value: if opts.keys_only {
                    Vec::new()
                } else {
                    value.to_vec()
                },
                version,
            });
        }
        Ok((out, false))
    }

    /// Reads a metadata entry.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = &self.inner.db;
        let cf = db
            .cf_handle(CF_META)
            .ok_or_else(|| StorageError::Corruption("missing meta column family".into()))?;
        Ok(db.get_cf(cf, key)?)
    }

    /// Lists metadata entries whose key starts with `prefix`, in key order.
    pub fn scan_meta(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = &self.inner.db;
        let cf = db
            .cf_handle(CF_META)
            .ok_or_else(|| StorageError::Corruption("missing meta column family".into()))?;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Approximate (number of keys, bytes) of user data, from RocksDB's estimates.
    pub fn approximate_stats(&self) -> (u64, u64) {
        let db = &self.inner.db;
        let Ok(cf) = data_cf(db) else { return (0, 0) };
        let prop = |name: &str| {
            db.property_int_value_cf(cf, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        (
            prop("rocksdb.estimate-num-keys"),
            prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables"),
        )
    }

    /// An integer RocksDB property (e.g. `rocksdb.estimate-pending-compaction-bytes`)
    /// summed over the data and meta column families; `None` when RocksDB
    /// does not know the property.
    pub fn int_property(&self, name: &str) -> Option<u64> {
        let db = &self.inner.db;
        let mut total = None;
        for cf in [CF_DATA, CF_META] {
            let Some(cf) = db.cf_handle(cf) else { continue };
            if let Ok(Some(v)) = db.property_int_value_cf(cf, name) {
                total = Some(total.unwrap_or(0) + v);
            }
        }
        total
    }

    /// Flushes memtables to SST files.
    pub fn flush(&self) -> Result<()> {
        let db = &self.inner.db;
        for name in [CF_DATA, CF_META] {
            if let Some(cf) = db.cf_handle(name) {
                db.flush_cf(cf)?;
            }
        }
        Ok(())
    }
}

fn unexpected(r: Option<OpResult>) -> StorageError {
    StorageError::Corruption(format!("writer returned an unexpected result {r:?}"))
}

fn data_cf(db: &DB) -> Result<&rocksdb::ColumnFamily> {
    db.cf_handle(CF_DATA)
        .ok_or_else(|| StorageError::Corruption("missing data column family".into()))
}

pub(crate) fn get_from_db(db: &DB, key: &[u8]) -> Result<Option<VersionedValue>> {
    match db.get_pinned_cf(data_cf(db)?, key)? {
        Some(raw) => decode_versioned(&raw).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn keys_in_range(db: &DB, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
    let cf = data_cf(db)?;
    let mut ro = ReadOptions::default();
    if !end.is_empty() {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(start, Direction::Forward)) {
        let (k, _) = item?;
        out.push(k.to_vec());
    }
    Ok(out)
}
