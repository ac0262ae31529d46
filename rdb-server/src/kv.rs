//! The `flaredb.v1.Kv` gRPC service.
//!
//! Every request is checked in this order: arguments (`InvalidArgument`
//! status), then region, epoch and key range (a `region_error` in the
//! response), then leadership. Writes are proposed to the region's Raft
//! group and answered once applied here (the epoch is checked again at
//! apply: a split applied meanwhile refuses them with `EpochNotMatch`).
//! Reads are served by the leader when its lease holds or a ReadIndex round
//! confirms it (see [`crate::peer::RegionPeer::ready_to_read`]).

use std::sync::Arc;

use rdb_daemon::limits::Limits;
use rdb_proto::limits::{MAX_SCAN_LIMIT, PAIR_OVERHEAD_BYTES};
use rdb_proto::v1::cas_condition::Condition;
use rdb_proto::v1::kv_server::Kv;
use rdb_proto::v1::*;
use rdb_storage::{Engine, Expected, OpResult, ScanOptions, VersionedValue};
use tonic::{Request, Response, Status};

use crate::command::{Answer, Command, Op};
use crate::error::ServerError;
use crate::node::Node;
use crate::peer::{epoch_changed, ProposeError, RegionPeer};
use crate::regions::{check_keys, clamp_range, RegionCheck};

/// The Kv service of one store.
#[derive(Clone)]
pub struct KvService {
    node: Arc<Node>,
    /// The caps requests are checked against.
    limits: Arc<Limits>,
}

impl KvService {
    /// A service over a started node, enforcing `limits`.
    pub fn new(node: Arc<Node>, limits: Limits) -> Self {
        KvService {
            node,
            limits: Arc::new(limits),
        }
    }

    /// Checks the request's context against the replicas here: returns
    /// the region's replica and the region.
    fn enter(&self, ctx: Option<&Context>) -> Result<(Arc<RegionPeer>, Region), Reject> {
        if let Some(c) = ctx {
            // The request's span (see rdb_daemon::metrics) carries its region.
            tracing::Span::current().record("region_id", c.region_id);
        }
        match self.node.regions().check_context(ctx) {
            Ok(x) => Ok(x),
            Err(RegionCheck::Region(e)) => Err(Reject::Region(e)),
            Err(RegionCheck::Invalid(m)) => {
                Err(Reject::Status(ServerError::InvalidArgument(m).into()))
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> rdb_storage::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.node.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Status::from(ServerError::Internal(e.to_string())))?
            .map_err(|e| Status::from(ServerError::from(e)))
    }

    /// Proposes `ops` to the region's group; with a request id, applied at
    /// most once (a copy of a request already applied gets the recorded
    /// results). A region error when the replica does not lead or the
    /// region changed before the write applied (nothing applied then).
    async fn write(
        &self,
        peer: &RegionPeer,
        region: &Region,
        id: Option<RequestId>,
        ops: Vec<Op>,
    ) -> Result<Result<Vec<OpResult>, RegionError>, Status> {
        let cmd = Command::Write {
            epoch_version: region.epoch_or_default().version,
            request_id: request_id(id)?.map(|id| (id.client, id.seq)),
            ops,
            at_ms: Some(rdb_storage::now_ms()),
        };
        match peer.propose(&cmd).await {
            Ok(Answer::Written(outs)) => Ok(Ok(outs)),
            Ok(Answer::EpochChanged(now)) => {
                let now = <Region as prost::Message>::decode(now.as_slice())
                    .map_err(|e| Status::from(ServerError::Internal(e.to_string())))?;
                Ok(Err(epoch_changed(now)))
            }
            Ok(Answer::Refused(m)) => Err(ServerError::InvalidArgument(m).into()),
            Ok(other) => Err(unexpected(other)),
            Err(ProposeError::NotLeader(e)) => Ok(Err(e)),
            Err(ProposeError::Unknown(m)) => Err(ServerError::Unavailable(format!(
                "the write's outcome is unknown (re-send it with the same request id): {m}"
            ))
            .into()),
            Err(ProposeError::Refused(m)) => Err(ServerError::FailedPrecondition(m).into()),
        }
    }
}

enum Reject {
    Region(RegionError),
    Status(Status),
}

/// The storage form of a request's id; a malformed one is INVALID_ARGUMENT.
fn request_id(id: Option<RequestId>) -> Result<Option<rdb_storage::RequestId>, Status> {
    let Some(id) = id else { return Ok(None) };
    let client: [u8; 16] = id.client.as_slice().try_into().map_err(|_| {
        Status::from(ServerError::InvalidArgument(format!(
            "request_id.client must be 16 bytes, got {}",
            id.client.len()
        )))
    })?;
    if id.seq == 0 {
        return Err(ServerError::InvalidArgument("request_id.seq must not be 0".into()).into());
    }
    Ok(Some(rdb_storage::RequestId {
        client: u128::from_be_bytes(client),
        seq: id.seq,
    }))
}

fn invalid(r: Result<(), String>) -> Result<(), Status> {
    r.map_err(|m| ServerError::InvalidArgument(m).into())
}

/// Enters the region named by the request's context, or returns the
/// response carrying the region error.
macro_rules! enter {
    ($self:ident, $req:ident, $resp:ty) => {
        match $self.enter($req.context.as_ref()) {
            Ok(x) => x,
            Err(Reject::Region(e)) => {
                return Ok(Response::new(<$resp>::default_with_error(e)));
            }
            Err(Reject::Status(s)) => return Err(s),
        }
    };
}

/// Waits until the replica may serve a linearizable read (or, for a read
/// whose context asks for a stale one, checks that it holds the region's
/// data), or returns the response with the region error. Then checks the
/// request's context again and evaluates to the region as applied now:
/// the wait applies entries (a ReadIndex round waits for the replica to
/// apply what the leader had committed), and one of them may be a split
/// or a membership change. A read checked only before the wait could be
/// answered for keys another region's leader already took writes for.
macro_rules! readable {
    ($self:ident, $peer:expr, $req:ident, $resp:ty) => {{
        let ready = if $req.context.as_ref().is_some_and(|c| c.stale_read) {
            $peer.ready_to_read_stale()
        } else {
            $peer.ready_to_read().await
        };
        if let Err(e) = ready {
            return Ok(Response::new(<$resp>::default_with_error(e)));
        }
        let (peer, region) = enter!($self, $req, $resp);
        match peer.machine.data_generation() {
            Some(g) => (region, Generation(peer, g)),
            None => return Ok(Response::new(<$resp>::default_with_error(replacing(&peer)))),
        }
    }};
}

/// Returns the response with a region error unless the replica's data is
/// still of the generation a read noted before reading it (a snapshot
/// install or the replica's deletion started meanwhile: the read may have
/// seen part of it).
macro_rules! unchanged {
    ($gen:expr, $resp:ty) => {
        if let Err(e) = $gen.check() {
            return Ok(Response::new(<$resp>::default_with_error(e)));
        }
    };
}

/// The generation of a replica's data a read started from.
struct Generation(Arc<RegionPeer>, u64);

impl Generation {
    fn check(&self) -> Result<(), RegionError> {
        match self.0.machine.data_generation() {
            Some(g) if g == self.1 => Ok(()),
            Some(_) | None => Err(replacing(&self.0)),
        }
    }
}

/// The region error of a replica whose data is being replaced or deleted.
fn replacing(peer: &RegionPeer) -> RegionError {
    let mut e = peer.not_leader(None);
    e.message = format!(
        "{}: this replica's data is being replaced by a snapshot or deleted",
        e.message
    );
    e
}

/// The results of a proposed write, or the response with its region error.
macro_rules! written {
    ($w:expr, $resp:ty) => {
        match $w.await? {
            Ok(results) => results,
            Err(e) => return Ok(Response::new(<$resp>::default_with_error(e))),
        }
    };
}

/// Check keys against the region, or return the response with the error.
macro_rules! in_region {
    ($check:expr, $resp:ty) => {
        match $check {
            Ok(x) => x,
            Err(e) => return Ok(Response::new(<$resp>::default_with_error(e))),
        }
    };
}

trait WithRegionError: Default {
    fn default_with_error(e: RegionError) -> Self;
}

macro_rules! with_region_error {
    ($($t:ty),*) => {$(
        impl WithRegionError for $t {
            fn default_with_error(e: RegionError) -> Self {
                crate::metrics::count_region_error(&e);
                Self { region_error: Some(e), ..Default::default() }
            }
        }
    )*};
}

with_region_error!(
    GetResponse,
    BatchGetResponse,
    PutResponse,
    BatchPutResponse,
    DeleteResponse,
    BatchDeleteResponse,
    ScanResponse,
    DeleteRangeResponse,
    BatchCompareAndSwapResponse,
    CompareAndSwapResponse
);

/// Keys read from RocksDB at a time by BatchGet: the most values (of up to
/// 1 MiB each) held at once beyond the answer.
const BATCH_GET_CHUNK: usize = 16;

/// Reads `keys` in order into an answer of at most `max_bytes` key and value
/// bytes (the first found pair always goes in), `BATCH_GET_CHUNK` keys at a
/// time through `fetch`. Returns the found pairs and, when the budget stopped
/// it early, how many of the leading keys the answer covers (the caller asks
/// again for the rest); `None` when `fetch` said a chunk needs the disk.
fn batch_get_page(
    keys: &[Vec<u8>],
    max_bytes: usize,
    mut fetch: impl FnMut(&[Vec<u8>]) -> rdb_storage::Result<Option<Vec<Option<VersionedValue>>>>,
) -> rdb_storage::Result<Option<(Vec<KvPair>, Option<u32>)>> {
    let mut pairs = Vec::new();
    let mut bytes = 0usize;
    let mut answered = 0usize;
    for chunk in keys.chunks(BATCH_GET_CHUNK) {
        let Some(values) = fetch(chunk)? else {
            return Ok(None);
        };
        for (key, v) in chunk.iter().zip(values) {
            if let Some(v) = v {
                let size = key.len() + v.value.len() + PAIR_OVERHEAD_BYTES;
                if !pairs.is_empty() && bytes.saturating_add(size) > max_bytes {
                    // Keys are answered in order: this one and the rest wait
                    // for the next call. `answered` fits: batches are capped
                    // far below u32::MAX keys.
                    return Ok(Some((pairs, Some(answered as u32))));
                }
                bytes = bytes.saturating_add(size);
                pairs.push(KvPair {
                    key: key.clone(),
                    value: v.value,
                    version: v.version,
                });
            }
            answered += 1;
        }
    }
    Ok(Some((pairs, None)))
}

/// Logged with the result; the client gets a generic internal error.
fn unexpected(r: impl std::fmt::Debug) -> Status {
    ServerError::Internal(format!("storage returned an unexpected result: {r:?}")).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_key(&req.key))?;
        let (peer, region) = enter!(self, req, GetResponse);
        in_region!(check_keys(&region, [req.key.as_slice()]), GetResponse);
        let (region, generation) = readable!(self, peer, req, GetResponse);
        in_region!(check_keys(&region, [req.key.as_slice()]), GetResponse);
        // A read served from the memtables and the block cache runs right
        // here (a few microseconds); one that needs the disk goes to the
        // blocking pool, so that no runtime thread waits for I/O.
        let got = match self.node.engine.get_cached(&req.key) {
            Ok(Some(got)) => got,
            Ok(None) => {
                let key = req.key;
                self.blocking(move |e| e.get(&key)).await?
            }
            Err(e) => return Err(ServerError::from(e).into()),
        };
        unchanged!(generation, GetResponse);
        Ok(Response::new(match got {
            Some(v) => GetResponse {
                region_error: None,
                found: true,
                value: v.value,
                version: v.version,
            },
            None => GetResponse::default(),
        }))
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<BatchGetResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_batch_len(req.keys.len()))?;
        for k in &req.keys {
            invalid(self.limits.check_key(k))?;
        }
        let (peer, region) = enter!(self, req, BatchGetResponse);
        in_region!(
            check_keys(&region, req.keys.iter().map(|k| k.as_slice())),
            BatchGetResponse
        );
        let (region, generation) = readable!(self, peer, req, BatchGetResponse);
        in_region!(
            check_keys(&region, req.keys.iter().map(|k| k.as_slice())),
            BatchGetResponse
        );
        let max_bytes = self.limits.max_response_bytes;
        // As for Get: answered here when the memtables and the block cache
        // hold every key's answer, else on the blocking pool.
        let cached = batch_get_page(&req.keys, max_bytes, |chunk| {
            self.node.engine.batch_get_cached(chunk)
        })
        .map_err(|e| Status::from(ServerError::from(e)))?;
        let (pairs, answered) = match cached {
            Some(page) => page,
            None => {
                let keys = req.keys;
                self.blocking(move |e| {
                    batch_get_page(&keys, max_bytes, |chunk| e.batch_get(chunk).map(Some))
                })
                .await?
                .ok_or_else(|| {
                    Status::from(ServerError::Internal(
                        "a blocking batch read asked for the disk".into(),
                    ))
                })?
            }
        };
        unchanged!(generation, BatchGetResponse);
        Ok(Response::new(BatchGetResponse {
            region_error: None,
            pairs,
            has_more: answered.is_some(),
            answered_keys: answered.unwrap_or(0),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_key(&req.key))?;
        invalid(self.limits.check_value(&req.value))?;
        let (peer, region) = enter!(self, req, PutResponse);
        in_region!(check_keys(&region, [req.key.as_slice()]), PutResponse);
        let ops = vec![Op::Put {
            key: req.key,
            value: req.value,
        }];
        match written!(self.write(&peer, &region, req.request_id, ops), PutResponse).pop() {
            Some(OpResult::Put(version)) => Ok(Response::new(PutResponse {
                region_error: None,
                version,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn batch_put(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_batch_len(req.pairs.len()))?;
        for p in &req.pairs {
            invalid(self.limits.check_key(&p.key))?;
            invalid(self.limits.check_value(&p.value))?;
        }
        let (peer, region) = enter!(self, req, BatchPutResponse);
        in_region!(
            check_keys(&region, req.pairs.iter().map(|p| p.key.as_slice())),
            BatchPutResponse
        );
        let ops = req
            .pairs
            .into_iter()
            .map(|p| Op::Put {
                key: p.key,
                value: p.value,
            })
            .collect();
        let versions = written!(
            self.write(&peer, &region, req.request_id, ops),
            BatchPutResponse
        )
        .into_iter()
        .map(|r| match r {
            OpResult::Put(v) => Ok(v),
            other => Err(unexpected(other)),
        })
        .collect::<Result<_, _>>()?;
        Ok(Response::new(BatchPutResponse {
            region_error: None,
            versions,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_key(&req.key))?;
        let (peer, region) = enter!(self, req, DeleteResponse);
        in_region!(check_keys(&region, [req.key.as_slice()]), DeleteResponse);
        let ops = vec![Op::Delete { key: req.key }];
        match written!(
            self.write(&peer, &region, req.request_id, ops),
            DeleteResponse
        )
        .pop()
        {
            Some(OpResult::Delete(existed)) => Ok(Response::new(DeleteResponse {
                region_error: None,
                existed,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn batch_delete(
        &self,
        request: Request<BatchDeleteRequest>,
    ) -> Result<Response<BatchDeleteResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_batch_len(req.keys.len()))?;
        for k in &req.keys {
            invalid(self.limits.check_key(k))?;
        }
        let (peer, region) = enter!(self, req, BatchDeleteResponse);
        in_region!(
            check_keys(&region, req.keys.iter().map(|k| k.as_slice())),
            BatchDeleteResponse
        );
        let ops = req.keys.into_iter().map(|key| Op::Delete { key }).collect();
        let deleted = written!(
            self.write(&peer, &region, req.request_id, ops),
            BatchDeleteResponse
        )
        .into_iter()
        .filter(|r| matches!(r, OpResult::Delete(true)))
        .count();
        Ok(Response::new(BatchDeleteResponse {
            region_error: None,
            deleted: deleted as u64,
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_range(&req.start_key, &req.end_key))?;
        if req.limit > MAX_SCAN_LIMIT {
            return Err(ServerError::InvalidArgument(format!(
                "scan limit {} is over the API maximum of {MAX_SCAN_LIMIT}",
                req.limit
            ))
            .into());
        }
        // One answer holds at most max-scan-limit pairs; has_more tells the
        // caller to continue after the last one.
        let page = match req.limit {
            0 => self.limits.max_scan_limit,
            n => n.min(self.limits.max_scan_limit),
        } as usize;
        let (peer, region) = enter!(self, req, ScanResponse);
        in_region!(
            clamp_range(&region, &req.start_key, &req.end_key),
            ScanResponse
        );
        let (region, generation) = readable!(self, peer, req, ScanResponse);
        let (start, end) = in_region!(
            clamp_range(&region, &req.start_key, &req.end_key),
            ScanResponse
        );
        let opts = ScanOptions {
            limit: page,
            reverse: req.reverse,
            keys_only: req.keys_only,
            max_bytes: self.limits.max_response_bytes,
            overhead: PAIR_OVERHEAD_BYTES,
        };
        let (pairs, has_more) = self
            .blocking(move |e| {
                let (entries, more) = e.scan_page(&start, &end, opts)?;
                let pairs: Vec<KvPair> = entries
                    .into_iter()
                    .map(|x| KvPair {
                        key: x.key,
                        value: x.value,
                        version: x.version,
                    })
                    .collect();
                Ok((pairs, more))
            })
            .await?;
        unchanged!(generation, ScanResponse);
        Ok(Response::new(ScanResponse {
            region_error: None,
            has_more,
            pairs,
        }))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_range(&req.start_key, &req.end_key))?;
        let (peer, region) = enter!(self, req, DeleteRangeResponse);
        let (start, end) = in_region!(
            clamp_range(&region, &req.start_key, &req.end_key),
            DeleteRangeResponse
        );
        let ops = vec![Op::DeleteRange { start, end }];
        match written!(
            self.write(&peer, &region, req.request_id, ops),
            DeleteRangeResponse
        )
        .pop()
        {
            Some(OpResult::DeleteRange(deleted)) => Ok(Response::new(DeleteRangeResponse {
                region_error: None,
                deleted,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let req = request.into_inner();
        let op = self.cas_op(req.key, req.expected, req.new_value, req.delete)?;
        let (peer, region) = enter!(self, req, CompareAndSwapResponse);
        in_region!(check_keys(&region, [op_key(&op)]), CompareAndSwapResponse);
        match written!(
            self.write(&peer, &region, req.request_id, vec![op]),
            CompareAndSwapResponse
        )
        .pop()
        {
            Some(OpResult::Cas(o)) => {
                let o = cas_outcome(o);
                Ok(Response::new(CompareAndSwapResponse {
                    region_error: None,
                    succeeded: o.succeeded,
                    found: o.found,
                    current_value: o.current_value,
                    current_version: o.current_version,
                    new_version: o.new_version,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn batch_compare_and_swap(
        &self,
        request: Request<BatchCompareAndSwapRequest>,
    ) -> Result<Response<BatchCompareAndSwapResponse>, Status> {
        let req = request.into_inner();
        invalid(self.limits.check_batch_len(req.ops.len()))?;
        let ops: Vec<Op> = req
            .ops
            .into_iter()
            .map(|o| self.cas_op(o.key, o.expected, o.new_value, o.delete))
            .collect::<Result<_, Status>>()?;
        let (peer, region) = enter!(self, req, BatchCompareAndSwapResponse);
        in_region!(
            check_keys(&region, ops.iter().map(op_key)),
            BatchCompareAndSwapResponse
        );
        let outcomes = written!(
            self.write(&peer, &region, req.request_id, ops),
            BatchCompareAndSwapResponse
        )
        .into_iter()
        .map(|r| match r {
            OpResult::Cas(o) => Ok(cas_outcome(o)),
            other => Err(unexpected(Some(other))),
        })
        .collect::<Result<_, _>>()?;
        Ok(Response::new(BatchCompareAndSwapResponse {
            region_error: None,
            outcomes,
        }))
    }
}

impl KvService {
    /// A checked compare-and-swap operation.
    fn cas_op(
        &self,
        key: Vec<u8>,
        expected: Option<CasCondition>,
        new_value: Vec<u8>,
        delete: bool,
    ) -> Result<Op, Status> {
        invalid(self.limits.check_key(&key))?;
        invalid(self.limits.check_value(&new_value))?;
        let expected = match expected.and_then(|c| c.condition) {
            Some(Condition::Absent(_)) => Expected::Absent,
            Some(Condition::Version(v)) => Expected::Version(v),
            Some(Condition::Value(v)) => {
                invalid(self.limits.check_value(&v))?;
                Expected::Value(v)
            }
            None => {
                return Err(ServerError::InvalidArgument(
                    "compare-and-swap needs an expected condition: absent, version or value".into(),
                )
                .into())
            }
        };
        Ok(Op::Cas {
            key,
            expected,
            new: (!delete).then_some(new_value),
        })
    }
}

/// The key of a compare-and-swap operation (empty for any other).
fn op_key(op: &Op) -> &[u8] {
    match op {
        Op::Cas { key, .. } => key,
        _ => &[],
    }
}

/// A compare-and-swap's outcome on the wire.
fn cas_outcome(o: rdb_storage::CasOutcome) -> CasOutcome {
    let (found, current_value, current_version) = match o.current {
        Some(c) => (true, c.value, c.version),
        None => (false, Vec::new(), 0),
    };
    CasOutcome {
        succeeded: o.succeeded,
        found,
        current_value,
        current_version,
        new_version: o.new_version.unwrap_or(0),
    }
}
