//! The engine: RocksDB plus the writer thread.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB,
};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{decode_counter, decode_dedup_time, MAX_COUNTER};
use crate::fatal::Hooks;
use crate::writer::{decode_versioned, Msg, Reply, Request, Writer, WriterStats};
use crate::{
    CasOutcome, Expected, OpResult, RequestId, Result, StorageError, VersionedValue, WriteOp,
};

pub(crate) const CF_DATA: &str = "data";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_DEDUP: &str = "dedup";
/// Raft logs and votes (`rdb-raft`).
pub(crate) const CF_RAFT: &str = "raft";
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
    /// Capacity of the queue in front of the writer thread (default 8192
    /// requests). A writer that finds it full waits (asynchronously in
    /// [`Engine::write`]) for a free place.
    pub queue_capacity: usize,
    /// How long the record of an exactly-once request is kept at least
    /// (default 10 minutes); see [`Engine::write_once`].
    pub dedup_window: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            sync: true,
            max_group_ops: 4096,
            queue_capacity: 8192,
            dedup_window: Duration::from_secs(600),
        }
    }
}

/// What [`Engine::split_check`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SplitCheck {
    /// Keys read (all of the range's, unless it stopped early).
    pub keys: u64,
    /// Bytes of keys and stored values read.
    pub bytes: u64,
    /// The first key of the right half, when the range is large enough to
    /// split.
    pub split_key: Option<Vec<u8>>,
}

/// A piece of an export (see [`Engine::export`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportChunk {
    /// Data entries, in key order.
    pub pairs: Vec<Entry>,
    /// Exactly-once records (key, value), in key order, after every pair.
    pub dedup: Vec<(Vec<u8>, Vec<u8>)>,
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
    /// The writer's queue; `None` only while dropping.
    tx: Option<mpsc::Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    /// Closed on drop: stops the housekeeper.
    stop_housekeeper: Option<std::sync::mpsc::Sender<()>>,
    housekeeper: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        self.stop_housekeeper.take();
        for h in [self.writer.take(), self.housekeeper.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

/// The storage engine. Cheap to clone; all clones share one database.
///
/// Reads ([`get`](Engine::get), [`scan`](Engine::scan), ...) are blocking
/// RocksDB calls: call them from `spawn_blocking` or a dedicated thread when
/// on an async runtime. Writes go through the writer thread; [`write`](Engine::write)
/// is async and does not block the runtime, also when the writer's queue is
/// full (it then waits for a free place).
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

/// A write for [`Engine::enqueue_versioned`].
#[derive(Debug, Default)]
pub struct VersionedWrite {
    /// The exactly-once id, if any.
    pub id: Option<RequestId>,
    /// Where the id's record is looked up and kept: `None`, under the
    /// id's scoped key, stamped with the writer's clock and dropped by
    /// compaction a window later by that clock (records of format-0
    /// entries); `Some`, in the scope's time buckets, decided by the log
    /// alone (see [`RecordBucket`]).
    pub bucket: Option<RecordBucket>,
    /// The operations, applied atomically.
    pub ops: Vec<WriteOp>,
    /// Bookkeeping applied with `ops` in the same batch, and applied even
    /// when `ops` are not: when the request id was already applied (its
    /// recorded answer is returned) or when `ops` are refused as invalid.
    /// A replicated state machine puts here what every replica must write
    /// for every entry, whatever the entry's outcome (the region's version
    /// counter, the entry's applied mark). With `always` set, a request that
    /// fails for any other reason than invalid input (a RocksDB read error,
    /// a refused batch) stops the process through the fatal hook instead of
    /// being refused: a replica must never skip an entry its peers applied.
    /// Versions are not taken by these ops (metadata and Raft records only).
    pub always: Vec<WriteOp>,
    /// The first of the request's own version numbers (`None`: the
    /// store-wide counter).
    pub first_version: Option<u64>,
    /// The scope of the id's record (a region id; 0: none).
    pub scope: u64,
    /// Whether the answer waits for the write to be synced (with the
    /// engine's `sync` on). `false` for writes whose durable record is
    /// elsewhere (a Raft group's applied entries: its synced log is the
    /// record; the next synced write makes them durable too, the WAL being
    /// sequential).
    pub sync: bool,
}

/// Where a replicated write's exactly-once record lives: the record's
/// time (the region clock after its entry: the highest entry time the
/// region applied) and that time's bucket. The id is a duplicate if a
/// record of it is in this bucket or the one before (or under its scoped
/// key, a record from before buckets); the new record goes in this
/// bucket. Older buckets are deleted by the region's replicas
/// ([`WriteOp::ClearDedup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordBucket {
    /// The record's time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Its bucket.
    pub bucket: u64,
}

/// A write request in the writer's queue (see [`Engine::enqueue_versioned`]).
#[derive(Debug)]
pub struct Queued(oneshot::Receiver<Result<Vec<OpResult>>>);

impl Queued {
    /// The request's results, once it is applied (and durable).
    pub async fn wait(self) -> Result<Vec<OpResult>> {
        self.0.await.map_err(|_| StorageError::Closed)?
    }
}

impl Engine {
    /// Opens (or creates) an engine in `path`.
    pub fn open(path: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        Engine::open_with(path.as_ref(), opts, Hooks::default())
    }

    pub(crate) fn open_with(path: &Path, opts: EngineOptions, hooks: Hooks) -> Result<Engine> {
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
        let cf_opts = || {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // A bloom filter per SST file (10 bits a key, about 1% false
            // positives): a lookup skips the files that cannot hold its key
            // without reading their index and data blocks. Every write with
            // a request id looks up an id that is almost never there (the
            // dedup column family), and point reads meet several level-0
            // files. Files written before the filter was set have none and
            // are read as before.
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&table);
            o
        };
        // Exactly-once records older than the window are dropped by
        // compaction (the housekeeper compacts the column family every half
        // window).
        let mut dedup_opts = cf_opts();
        let window_ms = u64::try_from(opts.dedup_window.as_millis()).unwrap_or(u64::MAX);
        dedup_opts.set_compaction_filter(
            "flaredb-dedup-window",
            move |_: u32, key: &[u8], value: &[u8]| {
                // Records kept by time bucket are deleted by their region's
                // replicas, by the log (`WriteOp::ClearDedup`), never by a
                // store's clock.
                if crate::op::is_bucketed_dedup_key(key) {
                    return Decision::Keep;
                }
                match decode_dedup_time(value) {
                    Ok(applied) if now_ms().saturating_sub(applied) > window_ms => Decision::Remove,
                    // Undecodable records stay: a lookup reports them as corruption.
                    _ => Decision::Keep,
                }
            },
        );
        let cfs = [
            ColumnFamilyDescriptor::new(CF_DATA, cf_opts()),
            ColumnFamilyDescriptor::new(CF_META, cf_opts()),
            ColumnFamilyDescriptor::new(CF_DEDUP, dedup_opts),
            ColumnFamilyDescriptor::new(CF_RAFT, cf_opts()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&db_opts, path, cfs)?);
        let last_version = {
            let meta = db
                .cf_handle(CF_META)
                .ok_or_else(|| StorageError::Corruption("missing meta column family".into()))?;
            match db.get_cf(meta, LAST_VERSION_KEY)? {
                Some(raw) => decode_counter(&raw, "last_version", MAX_COUNTER)?,
                None => 0,
            }
        };
        let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let writer = Writer {
            stats: stats.clone(),
            db: db.clone(),
            sync: opts.sync,
            max_group_ops: opts.max_group_ops.max(1),
            last_version,
            hooks: hooks.clone(),
            back: tx.downgrade(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StorageError::io(format!("starting the {name} thread"), e))
        };
        let writer = spawn("rdb-storage-writer", Box::new(move || writer.run(rx)))?;
        let (stop_housekeeper, stop) = std::sync::mpsc::channel();
        let window = opts.dedup_window;
        let hk_db = db.clone();
        let housekeeper = spawn(
            "rdb-storage-housekeeper",
            Box::new(move || crate::housekeeper::run(hk_db, hooks, window, stop)),
        )?;
        Ok(Engine {
            inner: Arc::new(Inner {
                db,
                stats,
                tx: Some(tx),
                writer: Some(writer),
                stop_housekeeper: Some(stop_housekeeper),
                housekeeper: Some(housekeeper),
            }),
        })
    }

    fn sender(&self) -> Result<&mpsc::Sender<Msg>> {
        self.inner.tx.as_ref().ok_or(StorageError::Closed)
    }

    async fn submit(&self, id: Option<RequestId>, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        self.submit_with(id, ops, None).await
    }

    async fn submit_with(
        &self,
        id: Option<RequestId>,
        ops: Vec<WriteOp>,
        first_version: Option<u64>,
    ) -> Result<Vec<OpResult>> {
        // Waits (without blocking the thread) while the queue is full.
        self.enqueue_versioned(VersionedWrite {
            id,
            bucket: None,
            ops,
            always: Vec::new(),
            first_version,
            scope: 0,
            sync: true,
        })
        .await?
        .wait()
        .await
    }

    /// Applies `ops` atomically; returns one result per op, in order. The
    /// future resolves once the write is durable (see [`EngineOptions::sync`]).
    ///
    /// When the writer's queue is full the future waits for a place
    /// (back-pressure); the thread it runs on stays free for other tasks.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        self.submit(None, ops).await
    }

    /// Applies `ops` at most once for `id`: if a request with this id was
    /// applied within the dedup window ([`EngineOptions::dedup_window`]),
    /// returns that request's results and applies nothing; otherwise
    /// applies `ops` like [`write`](Engine::write) and records `id` with
    /// the results in the same RocksDB write batch. See the crate docs,
    /// "Exactly-once writes", for what the client must guarantee.
    pub async fn write_once(&self, id: RequestId, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        self.submit(Some(id), ops).await
    }

    /// Applies `ops` like [`write_once`](Engine::write_once) (or
    /// [`write`](Engine::write) without `id`), with versions numbered by the
    /// caller instead of the store-wide counter: `first_version`,
    /// `first_version + 1`, ..., one per `Put` and per `Cas` with a new
    /// value, in op order, taken whether or not the CAS succeeds. The
    /// numbers a request uses thus depend only on its ops, never on the
    /// data: a replicated state machine gives every replica the same
    /// versions (see `specs/006-replication/spec.md`, section 5). Versions
    /// must stay in `1..=MAX_COUNTER`.
    pub async fn write_versioned(
        &self,
        id: Option<RequestId>,
        ops: Vec<WriteOp>,
        first_version: u64,
    ) -> Result<Vec<OpResult>> {
        self.submit_with(id, ops, Some(first_version)).await
    }

    /// Queues a [`write_versioned`](Engine::write_versioned) request and
    /// returns once it is in the writer's queue: requests queued one after
    /// the other are applied in that order (except those with a counted
    /// `DeleteRange`, which wait for their count: await such a request
    /// before queueing the next when the order matters), and requests
    /// queued together share one RocksDB write batch and its sync.
    ///
    /// `scope` (a region id; 0: none) keys the request id's record under
    /// [`dedup_scope_prefix`](crate::dedup_scope_prefix)`(scope)`, so that
    /// the records of one region can be listed ([`Engine::scan_dedup`]).
    pub async fn enqueue_versioned(&self, w: VersionedWrite) -> Result<Queued> {
        let (tx, rx) = oneshot::channel();
        self.queue(w, Reply::Channel(tx)).await?;
        Ok(Queued(rx))
    }

    /// Queues a request as [`enqueue_versioned`](Engine::enqueue_versioned)
    /// does, and has the writer thread call `done` with its answer once it
    /// is applied (and durable): callbacks run in the order their requests
    /// were queued, on the writer thread, so they must be quick and never
    /// block (send on a channel, set a flag). This saves the hop through a
    /// waiting task where the answer only has to be passed on (a Raft log
    /// append telling Raft that it is durable).
    pub async fn enqueue_then(
        &self,
        w: VersionedWrite,
        done: impl FnOnce(Result<Vec<OpResult>>) + Send + 'static,
    ) -> Result<()> {
        self.queue(w, Reply::Call(Box::new(done))).await
    }

    async fn queue(&self, w: VersionedWrite, reply: Reply) -> Result<()> {
        self.sender()?
            .send(Msg::Write(Request {
                id: w.id,
                bucket: w.bucket,
                ops: w.ops,
                always: w.always,
                reply,
                first_version: w.first_version,
                scope: w.scope,
                sync: w.sync,
            }))
            .await
            .map_err(|_| StorageError::Closed)
    }

    /// The highest version the store-wide counter handed out (versions of
    /// [`write_versioned`](Engine::write_versioned) requests are not counted).
    pub fn last_store_version(&self) -> Result<u64> {
        let Some(raw) = self.get_meta(LAST_VERSION_KEY)? else {
            return Ok(0);
        };
        decode_counter(&raw, "last_version", MAX_COUNTER)
    }

    /// Blocking form of [`write`](Engine::write); must not be called on an async runtime thread.
    pub fn write_blocking(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Msg::Write(Request {
                id: None,
                bucket: None,
                ops,
                always: Vec::new(),
                reply: Reply::Channel(reply),
                first_version: None,
                scope: 0,
                sync: true,
            }))
            .map_err(|_| StorageError::Closed)?;
        rx.blocking_recv().map_err(|_| StorageError::Closed)?
    }

    /// Deletes every key in `[start, end)` (empty `end`: unbounded) and
    /// gives its disk space back soon, for data nobody reads any more (a
    /// region that moved away, the leftovers of an interrupted import).
    ///
    /// A range tombstone is written first; then RocksDB drops the SST files
    /// wholly inside the range (`DeleteFilesInRange`, which ignores
    /// snapshots and can let older versions of keys in other files show
    /// through), and a second tombstone covers whatever did. Reads of the
    /// range between the steps may see such old versions: callers make sure
    /// nobody reads it. Counts nothing.
    pub async fn reclaim_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<()> {
        let clear = || {
            vec![WriteOp::ClearRange {
                start: start.clone(),
                end: end.clone(),
            }]
        };
        self.write(clear()).await?;
        let db = self.inner.db.clone();
        let (s, e) = (start.clone(), end.clone());
        tokio::task::spawn_blocking(move || delete_files_in_range(&db, &s, &e))
            .await
            .map_err(|e| {
                StorageError::io("deleting files in a range", std::io::Error::other(e))
            })??;
        self.write(clear()).await?;
        Ok(())
    }

    /// Removes the exactly-once records older than the dedup window now
    /// (the engine does it on its own every half window).
    pub fn expire_request_records(&self) -> Result<()> {
        compact_dedup(&self.inner.db)
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

    /// Reads one key if that needs no I/O: the answer comes from the
    /// memtables and the block cache only. `Ok(None)` means RocksDB would
    /// have had to read a file (call [`get`](Engine::get) off the runtime
    /// for that); `Ok(Some(answer))` is the same answer `get` gives. Cheap
    /// enough to call on an async runtime thread.
    pub fn get_cached(&self, key: &[u8]) -> Result<Option<Option<VersionedValue>>> {
        let db = &self.inner.db;
        let Some(raw) = from_memory(db.get_pinned_cf_opt(data_cf(db)?, key, &memory_only()))?
        else {
            return Ok(None);
        };
        Ok(Some(raw.map(|r| decode_versioned(&r)).transpose()?))
    }

    /// [`batch_get`](Engine::batch_get) if that needs no I/O (see
    /// [`get_cached`](Engine::get_cached)); `Ok(None)` when some key's
    /// answer would need a file read.
    pub fn batch_get_cached(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<Option<Vec<Option<VersionedValue>>>> {
        let db = &self.inner.db;
        let mut out = Vec::with_capacity(keys.len());
        for r in db.batched_multi_get_cf_opt(data_cf(db)?, keys.iter(), false, &memory_only()) {
            let Some(raw) = from_memory(r)? else {
                return Ok(None);
            };
            out.push(raw.map(|r| decode_versioned(&r)).transpose()?);
        }
        Ok(Some(out))
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

    /// The directory of the engine's RocksDB.
    pub fn path(&self) -> std::path::PathBuf {
        self.inner.db.path().to_path_buf()
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
        self.scan_prefix(CF_META, prefix)
    }

    /// The entries of column family `cf` whose key starts with `prefix`.
    fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = &self.inner.db;
        let handle = db
            .cf_handle(cf)
            .ok_or_else(|| StorageError::Corruption(format!("missing {cf} column family")))?;
        let mut out = Vec::new();
        for item in db.iterator_cf(handle, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Reads, from one consistent view of the engine taken before this
    /// returns, every data entry in `[start, end)` (empty `end`: unbounded)
    /// and then every exactly-once record whose key starts with one of
    /// `dedup_prefixes` (in their order), in chunks of about `chunk_bytes` (at least one entry
    /// each; at least one chunk, maybe empty). A thread of its own reads
    /// them, at most two chunks ahead of the receiver; dropping the
    /// receiver stops it and releases the view. For a region's snapshot:
    /// memory stays bounded by the chunk size whatever the region's size.
    pub fn export(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        dedup_prefixes: Vec<Vec<u8>>,
        chunk_bytes: usize,
    ) -> Result<mpsc::Receiver<Result<ExportChunk>>> {
        let db = self.inner.db.clone();
        let (tx, rx) = mpsc::channel(1);
        let (taken_tx, taken_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rdb-storage-export".into())
            .spawn(move || {
                let view = db.snapshot();
                let _ = taken_tx.send(());
                let sent = export_from(&db, &view, &start, &end, &dedup_prefixes, chunk_bytes, &tx);
                if let Err(e) = sent {
                    let _ = tx.blocking_send(Err(e));
                }
            })
            .map_err(|e| StorageError::Internal(format!("cannot start an export thread: {e}")))?;
        taken_rx
            .recv()
            .map_err(|_| StorageError::Internal("the export thread stopped at once".into()))?;
        Ok(rx)
    }

    /// The exactly-once records whose key starts with `prefix`, in key
    /// order (with [`dedup_scope_prefix`](crate::dedup_scope_prefix): one
    /// region's records, for its snapshot).
    pub fn scan_dedup(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.scan_prefix(CF_DEDUP, prefix)
    }

    /// Reads an entry of the `raft` column family.
    pub fn get_raft(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = &self.inner.db;
        let cf = db.cf_handle(CF_RAFT).ok_or_else(|| missing(CF_RAFT))?;
        Ok(db.get_cf(cf, key)?)
    }

    /// Entries of the `raft` column family in `[start, end)`, in key order
    /// (the last one first if `reverse`), at most `limit`.
    pub fn scan_raft(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = &self.inner.db;
        let cf = db.cf_handle(CF_RAFT).ok_or_else(|| missing(CF_RAFT))?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(start.to_vec());
        opts.set_iterate_upper_bound(end.to_vec());
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        let mut out = Vec::new();
        for item in db.iterator_cf_opt(cf, opts, mode).take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Where to split `[start, end)` (empty `end`: unbounded) of the data,
    /// if it is large: reads the entries in key order (from a consistent
    /// view), adding up keys and bytes (key and stored value), and notes
    /// the first key at which the running totals have reached `split_bytes`
    /// or `split_keys`; it stops once they reach half as much again. The
    /// noted key is the split key only if the range holds that much (so
    /// the right half keeps at least a third), as TiKV's split checker
    /// does. Blocking: call it from a blocking thread.
    pub fn split_check(
        &self,
        start: &[u8],
        end: &[u8],
        split_bytes: u64,
        split_keys: u64,
    ) -> Result<SplitCheck> {
        let db = &self.inner.db;
        let cf = data_cf(db)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(start.to_vec());
        if !end.is_empty() {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        opts.fill_cache(false);
        let (stop_bytes, stop_keys) = (split_bytes + split_bytes / 2, split_keys + split_keys / 2);
        let mut check = SplitCheck::default();
        let mut candidate = None;
        let mut reached = false;
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::Start) {
            let (k, v) = item?;
            if reached && candidate.is_none() {
                candidate = Some(k.to_vec());
            }
            check.keys += 1;
            check.bytes += (k.len() + v.len()) as u64;
            reached = reached || check.bytes >= split_bytes || check.keys >= split_keys;
            if check.bytes >= stop_bytes || check.keys >= stop_keys {
                check.split_key = candidate;
                break;
            }
        }
        Ok(check)
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
    /// summed over the column families; `None` when RocksDB
    /// does not know the property.
    pub fn int_property(&self, name: &str) -> Option<u64> {
        let db = &self.inner.db;
        let mut total = None;
        for cf in [CF_DATA, CF_META, CF_DEDUP, CF_RAFT] {
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
        for name in [CF_DATA, CF_META, CF_DEDUP, CF_RAFT] {
            if let Some(cf) = db.cf_handle(name) {
                db.flush_cf(cf)?;
            }
        }
        Ok(())
    }
}

/// Read options that answer from the memtables and the block cache only.
fn memory_only() -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_read_tier(rocksdb::ReadTier::BlockCache);
    ro
}

/// The result of a [`memory_only`] read: `None` when it would have needed
/// a file read (RocksDB's `Incomplete`).
fn from_memory<T>(r: std::result::Result<T, rocksdb::Error>) -> Result<Option<T>> {
    match r {
        Ok(x) => Ok(Some(x)),
        Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unexpected(r: Option<OpResult>) -> StorageError {
    StorageError::Internal(format!("writer returned an unexpected result {r:?}"))
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

/// The last key of `[start, end)` (empty `end`: unbounded) in the data column family.
pub(crate) fn last_key_in(db: &DB, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(start.to_vec());
    if !end.is_empty() {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    let mut it = db.raw_iterator_cf_opt(data_cf(db)?, ro);
    it.seek_to_last();
    let last = it.key().map(<[u8]>::to_vec);
    it.status()?;
    Ok(last)
}

/// Drops the SST files of the data column family that hold only keys of
/// `[start, end)`. RocksDB's bounds are inclusive, so the files are taken up
/// to the last key of the range that exists, never up to `end` (the first
/// key of the next region).
fn delete_files_in_range(db: &DB, start: &[u8], end: &[u8]) -> Result<()> {
    if let Some(last) = last_key_in(db, start, end)? {
        db.delete_file_in_range_cf(data_cf(db)?, start, &last)?;
    }
    Ok(())
}

/// Compacts the `dedup` column family, whose compaction filter drops the
/// records older than the window.
pub(crate) fn compact_dedup(db: &DB) -> Result<()> {
    let cf = db
        .cf_handle(CF_DEDUP)
        .ok_or_else(|| StorageError::Corruption("missing dedup column family".into()))?;
    db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    Ok(())
}

/// Wall-clock time in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;

fn missing(cf: &str) -> StorageError {
    StorageError::Corruption(format!("missing {cf} column family"))
}

/// [`Engine::export`]'s reading, under `view`; stops early (`Ok`) once the
/// receiver is gone.
fn export_from(
    db: &DB,
    view: &rocksdb::SnapshotWithThreadMode<'_, DB>,
    start: &[u8],
    end: &[u8],
    dedup_prefixes: &[Vec<u8>],
    chunk_bytes: usize,
    tx: &mpsc::Sender<Result<ExportChunk>>,
) -> Result<()> {
    let mut chunk = ExportChunk::default();
    let mut bytes = 0usize;
    let mut sent_any = false;
    // Sends the chunk if it is full (or `last`); false once nobody listens.
    let mut flush = |chunk: &mut ExportChunk, bytes: &mut usize, last: bool| -> bool {
        if (*bytes < chunk_bytes && !last)
            || (last && sent_any && chunk.pairs.is_empty() && chunk.dedup.is_empty())
        {
            return true;
        }
        sent_any = true;
        *bytes = 0;
        tx.blocking_send(Ok(std::mem::take(chunk))).is_ok()
    };
    let mut ro = ReadOptions::default();
    ro.set_snapshot(view);
    ro.set_iterate_lower_bound(start.to_vec());
    if !end.is_empty() {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    for item in db.iterator_cf_opt(
        data_cf(db)?,
        ro,
        IteratorMode::From(start, Direction::Forward),
    ) {
        let (k, v) = item?;
        let (version, value) = crate::codec::decode_record(&v)?;
        bytes = bytes.saturating_add(k.len() + value.len() + 16);
        chunk.pairs.push(Entry {
            key: k.to_vec(),
            value: value.to_vec(),
            version,
        });
        if !flush(&mut chunk, &mut bytes, false) {
            return Ok(());
        }
    }
    let dedup = db
        .cf_handle(CF_DEDUP)
        .ok_or_else(|| StorageError::Corruption(format!("missing {CF_DEDUP} column family")))?;
    for dedup_prefix in dedup_prefixes {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(view);
        for item in db.iterator_cf_opt(
            dedup,
            ro,
            IteratorMode::From(dedup_prefix, Direction::Forward),
        ) {
            let (k, v) = item?;
            if !k.starts_with(dedup_prefix) {
                break;
            }
            bytes = bytes.saturating_add(k.len() + v.len());
            chunk.dedup.push((k.to_vec(), v.to_vec()));
            if !flush(&mut chunk, &mut bytes, false) {
                return Ok(());
            }
        }
    }
    flush(&mut chunk, &mut bytes, true);
    Ok(())
}
