//! The writer thread: applies write requests in order and commits each group
//! of waiting requests as one RocksDB write batch (group commit).
//!
//! A request with a counted [`WriteOp::DeleteRange`] is not applied when it
//! arrives. The writer takes a RocksDB snapshot, hands iterators over it to
//! the counter thread, and goes on with other requests; when the count comes
//! back, the request joins the next group. The count is then corrected, in
//! time bounded by what was written meanwhile (not by the size of the range),
//! for the keys the writer changed since the snapshot: the writer records
//! every key it commits inside a range being counted. A range deletion that
//! overlaps a range being counted makes that count stale; it is done again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, DBRawIteratorWithThreadMode, ReadOptions, SnapshotWithThreadMode, WriteBatch,
    WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{decode_dedup, decode_record, encode_dedup, encode_record};
use crate::engine::{now_ms, CF_DATA, CF_DEDUP, CF_META, CF_RAFT, LAST_VERSION_KEY};
use crate::fatal::{CommitError, Hooks};
use crate::{CasOutcome, OpResult, RequestId, Result, StorageError, VersionedValue, WriteOp};

/// A function the writer thread calls with a request's answer.
pub(crate) type Callback = Box<dyn FnOnce(Result<Vec<OpResult>>) + Send>;

/// Where the writer sends its answer to one request.
pub(crate) enum Reply {
    /// To a waiting task.
    Channel(oneshot::Sender<Result<Vec<OpResult>>>),
    /// Called in the writer thread, in the order the requests were queued
    /// (see [`Engine::enqueue_then`](crate::Engine::enqueue_then)).
    Call(Callback),
}

impl Reply {
    /// Delivers the answer (a caller that stopped waiting is ignored).
    pub(crate) fn send(self, res: Result<Vec<OpResult>>) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(res);
            }
            Reply::Call(f) => f(res),
        }
    }
}

pub(crate) struct Request {
    /// The exactly-once id, if the caller gave one.
    pub id: Option<RequestId>,
    /// Where the id's record lives (see
    /// [`VersionedWrite::bucket`](crate::VersionedWrite::bucket)).
    pub bucket: Option<crate::RecordBucket>,
    pub ops: Vec<WriteOp>,
    /// Applied even when `ops` are not (see
    /// [`VersionedWrite::always`](crate::VersionedWrite::always)).
    pub always: Vec<WriteOp>,
    /// Where the request's versions come from: `None`, the store-wide
    /// counter; `Some(n)`, `n, n + 1, ...`, one per `Put` and per `Cas`
    /// with a new value, in op order, whether or not the CAS succeeds (see
    /// [`Engine::write_versioned`](crate::Engine::write_versioned)).
    pub first_version: Option<u64>,
    /// The scope of the request id's record (a region id; 0: none).
    pub scope: u64,
    /// Whether the request must be durable when answered (with the
    /// engine's `sync` on). A group is synced if any of its requests is.
    pub sync: bool,
    pub reply: Reply,
}

/// What the writer thread receives.
pub(crate) enum Msg {
    /// A write request from a caller.
    Write(Request),
    /// The counter thread finished the counts of a deferred request: one
    /// per counted `DeleteRange` op, in order.
    Counted { job: u64, counts: Result<Vec<u64>> },
}

/// State of keys inside the current group (or request), not yet committed.
#[derive(Default)]
struct Overlay {
    /// The latest state of each key written.
    points: BTreeMap<Vec<u8>, Option<VersionedValue>>,
    /// Ranges deleted, `[start, end)` (empty `end`: unbounded). A key of
    /// `points` inside one of them was written after the deletion (the
    /// deletion set the earlier ones to `None`).
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Overlay {
    /// The state of `key` in this overlay, `None` if the overlay does not
    /// know the key.
    fn get(&self, key: &[u8]) -> Option<Option<&VersionedValue>> {
        if let Some(v) = self.points.get(key) {
            return Some(v.as_ref());
        }
        self.deletes(key).then_some(None)
    }

    /// Whether a range deletion of this overlay covers `key`.
    fn deletes(&self, key: &[u8]) -> bool {
        self.ranges.iter().any(|(s, e)| in_range(key, s, e))
    }

    /// Whether a range deletion of this overlay overlaps `[start, end)`.
    fn deletes_in(&self, start: &[u8], end: &[u8]) -> bool {
        self.ranges
            .iter()
            .any(|(s, e)| ranges_overlap(s, e, start, end))
    }

    fn set(&mut self, key: Vec<u8>, val: Option<VersionedValue>) {
        self.points.insert(key, val);
    }

    fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        for (_, v) in self.points.range_mut::<[u8], _>(bounds(&start, &end)) {
            *v = None;
        }
        self.ranges.push((start, end));
    }

    /// Applies `later` (everything in it happened after everything here).
    fn merge(&mut self, later: Overlay) {
        for (s, e) in later.ranges {
            self.delete_range(s, e);
        }
        self.points.extend(later.points);
    }

    /// The written keys in `[start, end)`.
    fn keys_in<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.points
            .range::<[u8], _>(bounds(start, end))
            .map(|(k, _)| k.as_slice())
    }
}

fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end)
    };
    (Bound::Included(start), upper)
}

/// Whether `key` is in `[start, end)` (empty `end`: unbounded).
fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Whether `[s1, e1)` and `[s2, e2)` share a key (empty end: unbounded).
fn ranges_overlap(s1: &[u8], e1: &[u8], s2: &[u8], e2: &[u8]) -> bool {
    (e2.is_empty() || s1 < e2) && (e1.is_empty() || s2 < e1)
}

enum Mutation {
    Data(Vec<u8>, Option<VersionedValue>),
    /// A range tombstone over `[start, end)` of the data column family
    /// (`start < end`).
    DataRange(Vec<u8>, Vec<u8>),
    Meta(Vec<u8>, Option<Vec<u8>>),
    /// The exactly-once record of a request: its key and encoded results.
    Dedup(Vec<u8>, Vec<u8>),
    /// A range tombstone over `[start, end)` of the dedup column family.
    DedupRange(Vec<u8>, Vec<u8>),
    /// An entry of the raft column family.
    Raft(Vec<u8>, Vec<u8>),
    /// A range tombstone over `[start, end)` of the raft column family.
    RaftRange(Vec<u8>, Vec<u8>),
}

/// Why a request was not applied in this group.
enum Apply {
    /// The request is refused; nothing of it is applied.
    Refused(StorageError),
    /// A range deletion earlier in the group overlaps one of its counted
    /// ranges: count again and apply in a later group.
    Recount,
}

impl From<StorageError> for Apply {
    fn from(e: StorageError) -> Self {
        Apply::Refused(e)
    }
}

type Snapshot<'db> = SnapshotWithThreadMode<'db, DB>;

/// A request ready to be applied, with its counts if it was deferred.
struct Ready<'db> {
    req: Request,
    count: Option<Counted<'db>>,
}

/// The counts of a deferred request and what they were taken on.
struct Counted<'db> {
    /// What the counts were taken on.
    snapshot: Snapshot<'db>,
    /// Keys in the request's counted ranges in `snapshot`, one per counted
    /// `DeleteRange` op (minus keys of earlier range deletions of the request).
    counts: Vec<u64>,
    /// Keys in those ranges the writer committed since `snapshot`.
    touched: BTreeSet<Vec<u8>>,
}

/// A deferred request whose counts are being taken.
struct Job<'db> {
    req: Request,
    snapshot: Snapshot<'db>,
    /// The counted ranges of the request.
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys in `ranges` the writer committed since `snapshot`.
    touched: BTreeSet<Vec<u8>>,
    /// A range deletion overlapping `ranges` was committed since `snapshot`.
    stale: bool,
}

/// What the counter thread counts: the keys of one range in a snapshot.
struct CountRange<'db> {
    iter: DBRawIteratorWithThreadMode<'db, DB>,
    start: Vec<u8>,
    /// Earlier range deletions of the same request: their keys are not counted.
    earlier: Vec<(Vec<u8>, Vec<u8>)>,
}

struct CountJob<'db> {
    job: u64,
    ranges: Vec<CountRange<'db>>,
}

/// The deferred requests of the writer thread.
struct Deferred<'db> {
    db: &'db DB,
    jobs: HashMap<u64, Job<'db>>,
    /// To the counter thread; `None` once the writer stops.
    tx: Option<std::sync::mpsc::Sender<CountJob<'db>>>,
    next: u64,
}

/// Whether a request must be counted before it is applied.
fn needs_count(req: &Request) -> bool {
    req.ops
        .iter()
        .any(|op| matches!(op, WriteOp::DeleteRange { .. }))
}

impl<'db> Deferred<'db> {
    /// Takes a snapshot and sends the request's ranges to the counter.
    fn start(&mut self, req: Request) {
        let Ok(cf) = data_cf(self.db) else {
            req.reply.send(Err(missing_cf(CF_DATA)));
            return;
        };
        if let Err(e) = check_ranges(&req.ops) {
            req.reply.send(Err(e));
            return;
        }
        let snapshot = self.db.snapshot();
        let mut earlier: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut ranges = Vec::new();
        let mut counts = Vec::new();
        for op in &req.ops {
            let Some((start, end)) = op.deleted_range() else {
                continue;
            };
            if matches!(op, WriteOp::DeleteRange { .. }) {
                let mut ro = ReadOptions::default();
                ro.set_snapshot(&snapshot);
                if !end.is_empty() {
                    ro.set_iterate_upper_bound(end.to_vec());
                }
                counts.push(CountRange {
                    iter: self.db.raw_iterator_cf_opt(cf, ro),
                    start: start.to_vec(),
                    earlier: earlier.clone(),
                });
                ranges.push((start.to_vec(), end.to_vec()));
            }
            earlier.push((start.to_vec(), end.to_vec()));
        }
        let job = self.next;
        self.next += 1;
        let sent = match &self.tx {
            Some(tx) => tx.send(CountJob {
                job,
                ranges: counts,
            }),
            None => return,
        };
        if sent.is_err() {
            req.reply.send(Err(StorageError::Closed));
            return;
        }
        self.jobs.insert(
            job,
            Job {
                req,
                snapshot,
                ranges,
                touched: BTreeSet::new(),
                stale: false,
            },
        );
    }

    /// The counts of `job` came back: the request is ready, refused, or
    /// counted again.
    fn finish(&mut self, job: u64, counts: Result<Vec<u64>>) -> Option<Ready<'db>> {
        let j = self.jobs.remove(&job)?;
        match counts {
            // Nothing of the request was applied: a definite refusal.
            Err(e) => {
                j.req.reply.send(Err(e));
                None
            }
            Ok(_) if j.stale => {
                self.start(j.req);
                None
            }
            Ok(counts) => Some(Ready {
                req: j.req,
                count: Some(Counted {
                    snapshot: j.snapshot,
                    counts,
                    touched: j.touched,
                }),
            }),
        }
    }

    /// Records what a committed group wrote into the ranges being counted.
    fn track(&mut self, written: &[Mutation]) {
        for j in self.jobs.values_mut() {
            for m in written {
                match m {
                    Mutation::Data(k, _) => {
                        if j.ranges.iter().any(|(s, e)| in_range(k, s, e)) {
                            j.touched.insert(k.clone());
                        }
                    }
                    Mutation::DataRange(s, e) => {
                        if j.ranges.iter().any(|(js, je)| ranges_overlap(s, e, js, je)) {
                            j.stale = true;
                        }
                    }
                    Mutation::Meta(..)
                    | Mutation::Dedup(..)
                    | Mutation::DedupRange(..)
                    | Mutation::Raft(..)
                    | Mutation::RaftRange(..) => {}
                }
            }
        }
    }
}

/// The counter thread: counts the keys of each range of each job and sends
/// the counts back to the writer.
fn count_loop(
    rx: std::sync::mpsc::Receiver<CountJob<'_>>,
    back: mpsc::WeakSender<Msg>,
    hooks: Hooks,
) {
    while let Ok(CountJob { job, ranges }) = rx.recv() {
        if let Some(hook) = &hooks.before_count {
            hook();
        }
        // The iterators are consumed (dropped) here, before the writer can
        // release the snapshot they read.
        let counts = ranges.into_iter().map(count_range).collect();
        // No sender left: the engine is closing and nobody waits for the answer.
        let Some(tx) = back.upgrade() else { continue };
        let _ = tx.blocking_send(Msg::Counted { job, counts });
    }
}

fn count_range(mut r: CountRange<'_>) -> Result<u64> {
    let mut n = 0u64;
    r.iter.seek(&r.start);
    while r.iter.valid() {
        if let Some(k) = r.iter.key() {
            if !r.earlier.iter().any(|(s, e)| in_range(k, s, e)) {
                n += 1;
            }
        }
        r.iter.next();
    }
    r.iter.status()?;
    Ok(n)
}

pub(crate) struct Writer {
    pub db: Arc<DB>,
    pub sync: bool,
    pub max_group_ops: usize,
    pub last_version: u64,
    pub stats: Arc<WriterStats>,
    pub hooks: Hooks,
    /// For the counter thread: its way back into the writer's queue, which
    /// does not keep the queue open once the engine has dropped its sender.
    pub back: mpsc::WeakSender<Msg>,
}

/// Counters of the writer thread, for measuring group commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// RocksDB write batches committed (one WAL fsync each when syncing).
    pub groups: AtomicU64,
    /// Write requests acknowledged.
    pub requests: AtomicU64,
}

/// Whether the writer goes on after a group.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// The store failed (see [`crate::fatal`]): answer nothing more.
    Stop,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let db = self.db.clone();
        let db: &DB = &db;
        std::thread::scope(|scope| {
            let (tx, job_rx) = std::sync::mpsc::channel();
            let back = self.back.clone();
            let hooks = self.hooks.clone();
            let counter = match std::thread::Builder::new()
                .name("rdb-storage-counter".into())
                .spawn_scoped(scope, move || count_loop(job_rx, back, hooks))
            {
                Ok(h) => h,
                Err(e) => {
                    (self.hooks.fatal)(&format!("cannot start the counter thread: {e}"));
                    return;
                }
            };
            let mut deferred = Deferred {
                db,
                jobs: HashMap::new(),
                tx: Some(tx),
                next: 0,
            };
            while let Some(first) = rx.blocking_recv() {
                let mut group = Vec::new();
                let mut ops = 0;
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    let ready = match msg {
                        Msg::Write(req) if needs_count(&req) => {
                            deferred.start(req);
                            None
                        }
                        Msg::Write(req) => Some(Ready { req, count: None }),
                        Msg::Counted { job, counts } => deferred.finish(job, counts),
                    };
                    if let Some(r) = ready {
                        ops += r.req.ops.len();
                        group.push(r);
                    }
                    if ops < self.max_group_ops {
                        next = rx.try_recv().ok();
                    }
                }
                if !group.is_empty() && self.commit_group(group, &mut deferred) == Flow::Stop {
                    break;
                }
            }
            // The counter stops once its queue is closed; the snapshots of
            // the jobs are released only after it has stopped.
            deferred.tx = None;
            let _ = counter.join();
            drop(deferred);
        });
        tracing::debug!("storage writer thread stopped");
    }

    fn commit_group<'db>(&mut self, group: Vec<Ready<'db>>, deferred: &mut Deferred<'db>) -> Flow {
        let mut overlay = Overlay::default();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::with_capacity(group.len());
        let mut written = Vec::new();
        // Results of the exactly-once requests applied in this group.
        let mut applied: HashMap<(u64, RequestId), Vec<OpResult>> = HashMap::new();
        let mut recount = Vec::new();
        let start_version = self.last_version;
        let applied_ms = now_ms();
        let sync = group.iter().any(|r| r.req.sync);
        // A group with replicated requests is never refused as a whole:
        // their peers apply them.
        let replicated = group.iter().any(|r| !r.req.always.is_empty());
        for Ready { req, count } in group {
            let mut local = Overlay::default();
            let mut muts = Vec::new();
            let saved_version = self.last_version;
            let outcome = self
                .apply_ready(
                    &req,
                    count.as_ref(),
                    &applied,
                    applied_ms,
                    &overlay,
                    &mut local,
                    &mut muts,
                )
                .and_then(|done| {
                    self.stage(&mut batch, &muts)?;
                    Ok(done)
                });
            match outcome {
                Ok((results, fresh)) => {
                    if let (Some(id), true) = (req.id, fresh) {
                        applied.insert((req.scope, id), results.clone());
                    }
                    overlay.merge(local);
                    written.extend(muts);
                    replies.push((req.reply, Ok(results)));
                }
                Err(Apply::Recount) => {
                    self.last_version = saved_version;
                    recount.push(req);
                }
                Err(Apply::Refused(e)) if req.always.is_empty() => {
                    self.last_version = saved_version;
                    req.reply.send(Err(e));
                }
                Err(Apply::Refused(e @ StorageError::InvalidArgument(_))) => {
                    // Refused on every replica alike: the bookkeeping
                    // still applies, the ops do not.
                    self.last_version = saved_version;
                    let mut local = Overlay::default();
                    let mut muts = Vec::new();
                    let staged = self
                        .apply_request(&req.always, None, None, &overlay, &mut local, &mut muts)
                        .map_err(|a| match a {
                            Apply::Refused(e) => e,
                            Apply::Recount => {
                                StorageError::Internal("bookkeeping needs no count".into())
                            }
                        })
                        .and_then(|_| self.stage(&mut batch, &muts));
                    if let Err(bad) = staged {
                        (self.hooks.fatal)(&format!(
                            "a replicated request's bookkeeping cannot be applied: {bad}"
                        ));
                        return Flow::Stop;
                    }
                    overlay.merge(local);
                    written.extend(muts);
                    replies.push((req.reply, Err(e)));
                }
                Err(Apply::Refused(e)) => {
                    // A failure only this replica saw (a read error): it
                    // must not skip an entry its peers apply.
                    (self.hooks.fatal)(&format!(
                        "a replicated request could not be applied here: {e}"
                    ));
                    return Flow::Stop;
                }
            }
        }
        if !replies.is_empty() {
            if self.last_version != start_version {
                match self.db.cf_handle(CF_META) {
                    Some(meta) => {
                        batch.put_cf(meta, LAST_VERSION_KEY, self.last_version.to_be_bytes())
                    }
                    None => {
                        for (reply, _) in replies {
                            reply.send(Err(missing_cf(CF_META)));
                        }
                        return Flow::Continue;
                    }
                }
            }
            match self.commit(batch, sync) {
                Ok(()) => {
                    self.stats.groups.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .requests
                        .fetch_add(replies.len() as u64, Ordering::Relaxed);
                    deferred.track(&written);
                    for (reply, res) in replies {
                        reply.send(res);
                    }
                }
                Err(e) if e.is_fatal() || replicated => {
                    // RocksDB may have written the group to the WAL and
                    // replay it on restart: no answer is true, so none is
                    // given. The process stops (see crate::fatal).
                    (self.hooks.fatal)(&format!(
                        "the write of a group of {} requests failed: {}",
                        replies.len(),
                        e.message
                    ));
                    return Flow::Stop;
                }
                Err(e) => {
                    // Refused before anything was written: a definite failure.
                    tracing::error!(error = %e.message, "group commit refused");
                    for (reply, _) in replies {
                        reply.send(Err(StorageError::InvalidArgument(format!(
                            "write refused by RocksDB: {}",
                            e.message
                        ))));
                    }
                }
            }
        }
        for req in recount {
            deferred.start(req);
        }
        Flow::Continue
    }

    fn commit(&self, batch: WriteBatch, sync: bool) -> std::result::Result<(), CommitError> {
        if let Some(hook) = &self.hooks.before_commit {
            hook()?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync && sync);
        self.db.write_opt(batch, &wo).map_err(CommitError::from)
    }

    /// Applies a request into `local` and `muts`: its ops (or, for a
    /// request id already applied, nothing but its recorded results), then
    /// its bookkeeping. Returns the results and whether they are new.
    #[allow(clippy::too_many_arguments)]
    fn apply_ready(
        &mut self,
        req: &Request,
        count: Option<&Counted<'_>>,
        applied: &HashMap<(u64, RequestId), Vec<OpResult>>,
        applied_ms: u64,
        overlay: &Overlay,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) -> std::result::Result<(Vec<OpResult>, bool), Apply> {
        let earlier = match req.id {
            Some(id) => match applied.get(&(req.scope, id)) {
                Some(results) => Some(results.clone()),
                None => self.recorded_once(id, req.scope, req.bucket)?,
            },
            None => None,
        };
        let done = match earlier {
            // Already applied: answer as the first time, apply no op.
            Some(results) => (results, false),
            None => {
                let results =
                    self.apply_request(&req.ops, req.first_version, count, overlay, local, muts)?;
                if let Some(id) = req.id {
                    let (key, at) = match req.bucket {
                        Some(b) => (id.bucketed_key(req.scope, b.bucket), b.at_ms),
                        None => (id.scoped_key(req.scope), applied_ms),
                    };
                    muts.push(Mutation::Dedup(key, encode_dedup(at, &results)));
                }
                (results, true)
            }
        };
        self.apply_request(&req.always, None, None, overlay, local, muts)?;
        Ok(done)
    }

    /// The stored results of exactly-once request `id` of `scope`, if it
    /// was applied: in the bucket's time and the one before, then under
    /// its scoped key (a record from before buckets).
    fn recorded_once(
        &self,
        id: RequestId,
        scope: u64,
        bucket: Option<crate::RecordBucket>,
    ) -> Result<Option<Vec<OpResult>>> {
        if let Some(b) = bucket {
            for n in [Some(b.bucket), b.bucket.checked_sub(1)]
                .into_iter()
                .flatten()
            {
                if let Some(r) = self.recorded(&id.bucketed_key(scope, n))? {
                    return Ok(Some(r));
                }
            }
        }
        self.recorded(&id.scoped_key(scope))
    }

    /// The stored results of an exactly-once request (its record's key),
    /// if it was applied.
    fn recorded(&self, key: &[u8]) -> Result<Option<Vec<OpResult>>> {
        let cf = self
            .db
            .cf_handle(CF_DEDUP)
            .ok_or_else(|| missing_cf(CF_DEDUP))?;
        match self.db.get_pinned_cf(cf, key)? {
            Some(raw) => Ok(Some(decode_dedup(&raw)?.1)),
            None => Ok(None),
        }
    }

    fn stage(&self, batch: &mut WriteBatch, muts: &[Mutation]) -> Result<()> {
        let cf = |name: &'static str| self.db.cf_handle(name).ok_or_else(|| missing_cf(name));
        let (data, meta, dedup, raft) = (cf(CF_DATA)?, cf(CF_META)?, cf(CF_DEDUP)?, cf(CF_RAFT)?);
        for m in muts {
            match m {
                Mutation::Data(k, Some(v)) => {
                    batch.put_cf(data, k, encode_record(v.version, &v.value))
                }
                Mutation::Data(k, None) => batch.delete_cf(data, k),
                Mutation::DataRange(s, e) => batch.delete_range_cf(data, s, e),
                Mutation::Meta(k, Some(v)) => batch.put_cf(meta, k, v),
                Mutation::Meta(k, None) => batch.delete_cf(meta, k),
                Mutation::Dedup(k, v) => batch.put_cf(dedup, k, v),
                Mutation::DedupRange(s, e) => batch.delete_range_cf(dedup, s, e),
                Mutation::Raft(k, v) => batch.put_cf(raft, k, v),
                Mutation::RaftRange(s, e) => batch.delete_range_cf(raft, s, e),
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
        if let Some(v) = local.get(key).or_else(|| overlay.get(key)) {
            return Ok(v.cloned());
        }
        crate::engine::get_from_db(&self.db, key)
    }

    /// The next version: from the request's own numbers when it has them
    /// (`fixed`), else from the store-wide counter.
    fn next_version(&mut self, fixed: &mut Option<u64>) -> u64 {
        match fixed {
            Some(n) => {
                let v = *n;
                *n += 1;
                v
            }
            None => {
                self.last_version += 1;
                self.last_version
            }
        }
    }

    fn set(
        &self,
        key: Vec<u8>,
        val: Option<VersionedValue>,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) {
        muts.push(Mutation::Data(key.clone(), val.clone()));
        local.set(key, val);
    }

    /// Deletes `[start, end)`: one range tombstone; an unbounded range ends
    /// at the last key there is (in the database or in this group), which
    /// gets a point tombstone.
    fn delete_range(
        &self,
        start: &[u8],
        end: &[u8],
        overlay: &Overlay,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) -> Result<()> {
        let (upper, last) = if end.is_empty() {
            let last = [
                crate::engine::last_key_in(&self.db, start, end)?,
                overlay.keys_in(start, end).next_back().map(<[u8]>::to_vec),
                local.keys_in(start, end).next_back().map(<[u8]>::to_vec),
            ]
            .into_iter()
            .flatten()
            .max();
            match last {
                Some(last) => (last.clone(), Some(last)),
                None => (Vec::new(), None),
            }
        } else {
            (end.to_vec(), None)
        };
        if start < upper.as_slice() {
            muts.push(Mutation::DataRange(start.to_vec(), upper));
        }
        if let Some(last) = last {
            muts.push(Mutation::Data(last, None));
        }
        local.delete_range(start.to_vec(), end.to_vec());
        Ok(())
    }

    /// The number of keys in `[start, end)` now, from the count `base`
    /// taken on `c.snapshot`: corrected for every key whose state may
    /// differ from the snapshot (committed since, or written in this group).
    fn corrected_count(
        &self,
        base: u64,
        (start, end): (&[u8], &[u8]),
        c: &Counted<'_>,
        overlay: &Overlay,
        local: &Overlay,
    ) -> Result<u64> {
        let data = data_cf(&self.db)?;
        let changed: BTreeSet<&[u8]> = c
            .touched
            .range::<[u8], _>(bounds(start, end))
            .map(Vec::as_slice)
            .chain(overlay.keys_in(start, end))
            .chain(local.keys_in(start, end))
            .collect();
        let (mut now, mut then) = (0u64, 0u64);
        for k in changed {
            now += u64::from(self.read(k, overlay, local)?.is_some());
            // The counter skipped keys of earlier range deletions of this
            // request (they are in `local.ranges`).
            if !local.deletes(k) {
                then += u64::from(c.snapshot.get_pinned_cf(data, k)?.is_some());
            }
        }
        (base + now).checked_sub(then).ok_or_else(|| {
            StorageError::Internal(format!(
                "range count {base} + {now} - {then} is negative: the snapshot and the writer disagree"
            ))
        })
    }

    fn apply_request(
        &mut self,
        ops: &[WriteOp],
        first_version: Option<u64>,
        count: Option<&Counted<'_>>,
        overlay: &Overlay,
        local: &mut Overlay,
        muts: &mut Vec<Mutation>,
    ) -> std::result::Result<Vec<OpResult>, Apply> {
        let mut results = Vec::with_capacity(ops.len());
        let mut counts = count.map(|c| c.counts.iter());
        let mut fixed = first_version;
        if let Some(first) = first_version {
            let needed: u64 = ops.iter().map(WriteOp::versions).sum();
            if first == 0 || first.saturating_add(needed) > crate::codec::MAX_COUNTER {
                return Err(StorageError::InvalidArgument(format!(
                    "versions {first}..+{needed} are outside 1..={}",
                    crate::codec::MAX_COUNTER
                ))
                .into());
            }
        }
        for op in ops {
            let res = match op {
                WriteOp::Put { key, value } => {
                    check_key(key)?;
                    let version = self.next_version(&mut fixed);
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
                    // With the request's own numbers, a CAS with a new
                    // value takes its number whatever the outcome, so that
                    // the numbers do not depend on the data.
                    let reserved = match (new, fixed.is_some()) {
                        (Some(_), true) => Some(self.next_version(&mut fixed)),
                        _ => None,
                    };
                    let mut new_version = None;
                    if succeeded {
                        match new {
                            Some(value) => {
                                let version = match reserved {
                                    Some(v) => v,
                                    None => self.next_version(&mut fixed),
                                };
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
                    check_ranges(std::slice::from_ref(op))?;
                    // Counted requests are deferred until counted (see
                    // needs_count); a range deleted earlier in this group
                    // makes the count stale.
                    let (Some(c), Some(base)) = (count, counts.as_mut().and_then(Iterator::next))
                    else {
                        return Err(Apply::Recount);
                    };
                    if overlay.deletes_in(start, end) {
                        return Err(Apply::Recount);
                    }
                    let n = self.corrected_count(*base, (start, end), c, overlay, local)?;
                    self.delete_range(start, end, overlay, local, muts)?;
                    OpResult::DeleteRange(n)
                }
                WriteOp::ClearRange { start, end } => {
                    check_ranges(std::slice::from_ref(op))?;
                    self.delete_range(start, end, overlay, local, muts)?;
                    OpResult::Done
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
                        ))
                        .into());
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
                WriteOp::PutRaft { key, value } => {
                    muts.push(Mutation::Raft(key.clone(), value.clone()));
                    OpResult::Done
                }
                WriteOp::PutDedup { key, value } => {
                    crate::codec::decode_dedup(value)?;
                    muts.push(Mutation::Dedup(key.clone(), value.clone()));
                    OpResult::Done
                }
                WriteOp::ClearDedup { start, end } => {
                    if start >= end {
                        return Err(StorageError::InvalidArgument(
                            "exactly-once range deletion needs start < end".into(),
                        )
                        .into());
                    }
                    muts.push(Mutation::DedupRange(start.clone(), end.clone()));
                    OpResult::Done
                }
                WriteOp::DeleteRaftRange { start, end } => {
                    if start >= end {
                        return Err(StorageError::InvalidArgument(
                            "raft range deletion needs start < end".into(),
                        )
                        .into());
                    }
                    muts.push(Mutation::RaftRange(start.clone(), end.clone()));
                    OpResult::Done
                }
            };
            results.push(res);
        }
        Ok(results)
    }
}

fn missing_cf(name: &str) -> StorageError {
    StorageError::Corruption(format!("missing {name} column family"))
}

fn data_cf(db: &DB) -> Result<&ColumnFamily> {
    db.cf_handle(CF_DATA).ok_or_else(|| missing_cf(CF_DATA))
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StorageError::InvalidArgument(
            "key must not be empty".into(),
        ));
    }
    Ok(())
}

/// Checks the ranges of the range deletions among `ops`.
fn check_ranges(ops: &[WriteOp]) -> Result<()> {
    for (start, end) in ops.iter().filter_map(WriteOp::deleted_range) {
        if !end.is_empty() && end < start {
            return Err(StorageError::InvalidArgument(
                "range end is before range start".into(),
            ));
        }
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
