//! The `flaredb.v1.StoreAdmin` gRPC service: splits and moves ordered by PD.

use std::sync::Arc;

use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::store_admin_server::StoreAdmin;
use rdb_proto::v1::*;
use rdb_storage::{ScanOptions, WriteOp};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;

/// What the handlers' helpers return: [`ServerError`] becomes a status in
/// one place (`From<ServerError> for Status`).
type Result<T, E = ServerError> = std::result::Result<T, E>;
use crate::moves::{connect_store, put_move_op};
use crate::node::Node;
use crate::regions::{key_not_in_region, put_region_op, RegionCheck, RegionMap};

/// Most keys per message when moving a region.
const MOVE_CHUNK: usize = 1024;

/// Most key and value bytes per message when moving a region (one pair
/// alone may pass it): far under the gRPC message limit whatever the value
/// sizes, and the memory a move holds per message in flight.
const MOVE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The StoreAdmin service of one store.
#[derive(Clone)]
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// A service over a started node.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

fn check(
    map: &RegionMap,
    region_id: u64,
    epoch: Option<RegionEpoch>,
) -> Result<Region, Result<RegionError>> {
    let ctx = Context {
        region_id,
        region_epoch: epoch,
    };
    match map.check_context(Some(&ctx)) {
        Ok(r) => Ok(r.clone()),
        Err(RegionCheck::Region(e)) => Err(Ok(e)),
        Err(RegionCheck::Invalid(m)) => Err(Err(ServerError::InvalidArgument(m))),
    }
}

/// A fresh, non-zero id for one attempt to move `region_id`.
fn new_move_id(region_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(region_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

fn moved_region(r: &Region, target: u64) -> Region {
    let e = r.epoch_or_default();
    Region {
        epoch: Some(RegionEpoch {
            version: e.version,
            conf_ver: e.conf_ver + 1,
        }),
        store_id: target,
        ..r.clone()
    }
}

impl AdminService {
    /// Streams the region's data to the target store. Returns how many keys
    /// were read here (0 if reading failed) and whether the target confirmed
    /// it imported exactly those and serves the region.
    async fn send_region(&self, region: &Region, rec: &MoveRecord) -> (u64, Result<()>) {
        let Some(target) = rec.target.as_ref() else {
            return (
                0,
                Err(ServerError::Internal("move record without a target".into())),
            );
        };
        let ch = match connect_store(&target.address, None, self.node.tls.as_ref()).await {
            Ok(ch) => ch,
            Err(s) => return (0, Err(s)),
        };
        let mut client = StoreAdminClient::new(ch)
            .max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.node.engine.clone();
        let (moved, move_id) = (rec.region.clone(), rec.move_id);
        let (start, end) = (region.start_key.clone(), region.end_key.clone());
        // Reads run on a blocking thread and feed the stream chunk by chunk.
        let reader = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut cursor = start;
            let mut first = true;
            let mut total = 0u64;
            loop {
                let (chunk, more) = engine.scan_page(
                    &cursor,
                    &end,
                    ScanOptions {
                        limit: MOVE_CHUNK,
                        max_bytes: MOVE_CHUNK_BYTES,
                        overhead: rdb_proto::limits::PAIR_OVERHEAD_BYTES,
                        ..Default::default()
                    },
                )?;
                let last = !more;
                if let Some(k) = chunk.last() {
                    cursor = k.key.clone();
                    cursor.push(0);
                }
                total += chunk.len() as u64;
                let pairs = chunk
                    .into_iter()
                    .map(|e| KvPair {
                        key: e.key,
                        value: e.value,
                        version: e.version,
                    })
                    .collect();
                let msg = ImportRegionRequest {
                    region: if first { moved.clone() } else { None },
                    pairs,
                    move_id: if first { move_id } else { 0 },
                    last,
                    total_keys: if last { total } else { 0 },
                };
                first = false;
                if tx.blocking_send(msg).is_err() {
                    return Err(ServerError::Remote(
                        "the target store closed the import stream".into(),
                    ));
                }
                if last {
                    return Ok(total);
                }
            }
        });
        let imported = client.import_region(ReceiverStream::new(rx)).await;
        let sent = match reader.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return (0, Err(e)),
            Err(e) => return (0, Err(ServerError::Internal(format!("move reader: {e}")))),
        };
        let result = match imported {
            Ok(r) if r.get_ref().imported_keys == sent => Ok(()),
            Ok(r) => Err(ServerError::DataLoss(format!(
                "sent {sent} keys but the target imported {}",
                r.get_ref().imported_keys
            ))),
            Err(s) => Err(ServerError::Peer(s)),
        };
        (sent, result)
    }

    /// Moves a paused region to `target` (see [`crate::moves`]).
    async fn run_move(&self, region: Region, target: Store) -> Result<TransferRegionResponse> {
        let rec = MoveRecord {
            region: Some(moved_region(&region, target.id)),
            target: Some(target.clone()),
            move_id: new_move_id(region.id),
        };
        let recorded = self.node.engine.write(vec![put_move_op(&rec)]).await;
        if let Err(e) = recorded {
            if let Some(st) = self.node.regions.write().await.get_mut(region.id) {
                st.moving = false;
            }
            return Err(ServerError::from(e));
        }
        tracing::info!(
            region_id = region.id,
            target = target.id,
            move_id = rec.move_id,
            "moving region"
        );
        let (moved_keys, sent) = self.send_region(&region, &rec).await;
        if let Err(s) = sent {
            // The target may or may not serve the region now: settle first.
            tracing::warn!(region_id = region.id, error = %s, "moving region failed; settling");
            match self.node.settle_move(&rec).await {
                Ok(true) => {
                    tracing::info!(region_id = region.id, "the target serves the region: moved");
                }
                Ok(false) => return Err(s),
                Err(e) => {
                    self.node.settle_in_background(rec);
                    return Err(ServerError::Remote(format!(
                        "moving region {} to store {} failed ({}) and whether the target \
                         serves it is not known yet ({}); the region stays paused until \
                         store {} settles it",
                        region.id,
                        target.id,
                        s.client_message(),
                        e.client_message(),
                        self.node.store_id
                    )));
                }
            }
        } else {
            self.node.finish_move(&rec).await;
        }
        tracing::info!(
            region_id = region.id,
            target = target.id,
            moved_keys,
            "region moved"
        );
        Ok(TransferRegionResponse {
            region_error: None,
            region: rec.region,
            moved_keys,
        })
    }
}

#[tonic::async_trait]
impl StoreAdmin for AdminService {
    async fn apply_split(
        &self,
        request: Request<ApplySplitRequest>,
    ) -> Result<Response<ApplySplitResponse>, Status> {
        let req = request.into_inner();
        rdb_proto::limits::check_key(&req.split_key).map_err(ServerError::InvalidArgument)?;
        let mut map = self.node.regions.write().await;
        let region = match check(&map, req.region_id, req.epoch) {
            Ok(r) => r,
            Err(Ok(e)) => {
                return Ok(Response::new(ApplySplitResponse {
                    region_error: Some(e),
                    ..Default::default()
                }))
            }
            Err(Err(e)) => return Err(e.into()),
        };
        if req.split_key == region.start_key || !region.contains(&req.split_key) {
            return Ok(Response::new(ApplySplitResponse {
                region_error: Some(key_not_in_region(&req.split_key, &region)),
                ..Default::default()
            }));
        }
        if req.new_region_id == 0 || map.get(req.new_region_id).is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "new region id {} is 0 or already used",
                req.new_region_id
            ))
            .into());
        }
        let epoch = region.epoch_or_default();
        let new_epoch = RegionEpoch {
            version: epoch.version + 1,
            conf_ver: epoch.conf_ver,
        };
        let left = Region {
            end_key: req.split_key.clone(),
            epoch: Some(new_epoch),
            ..region.clone()
        };
        let right = Region {
            id: req.new_region_id,
            start_key: req.split_key.clone(),
            end_key: region.end_key.clone(),
            epoch: Some(new_epoch),
            store_id: self.node.store_id,
        };
        // Both halves in one write batch: after a crash either the old region or both halves exist.
        self.node
            .engine
            .write(vec![put_region_op(&left), put_region_op(&right)])
            .await
            .map_err(ServerError::from)?;
        map.insert(left.clone());
        map.insert(right.clone());
        tracing::info!(
            region_id = left.id,
            new_region_id = right.id,
            "applied split"
        );
        Ok(Response::new(ApplySplitResponse {
            region_error: None,
            left: Some(left),
            right: Some(right),
        }))
    }

    async fn transfer_region(
        &self,
        request: Request<TransferRegionRequest>,
    ) -> Result<Response<TransferRegionResponse>, Status> {
        let req = request.into_inner();
        let target = req
            .target
            .ok_or_else(|| ServerError::InvalidArgument("transfer needs a target store".into()))?;
        if target.id == self.node.store_id {
            return Err(
                ServerError::InvalidArgument("the target store is this store".into()).into(),
            );
        }
        let region = {
            let mut map = self.node.regions.write().await;
            let region = match check(&map, req.region_id, req.epoch) {
                Ok(r) => r,
                Err(Ok(e)) => {
                    return Ok(Response::new(TransferRegionResponse {
                        region_error: Some(e),
                        ..Default::default()
                    }))
                }
                Err(Err(e)) => return Err(e.into()),
            };
            if let Some(s) = map.get_mut(region.id) {
                s.moving = true;
            }
            region
        };
        // The move runs in a task of its own: if PD's call is dropped, the
        // move still ends in a settled state instead of a region paused forever.
        let this = self.clone();
        tokio::spawn(async move { this.run_move(region, target).await })
            .await
            .map_err(|e| ServerError::Internal(format!("move task: {e}")))?
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn import_region(
        &self,
        request: Request<Streaming<ImportRegionRequest>>,
    ) -> Result<Response<ImportRegionResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await
            .map_err(ServerError::Peer)?
            .ok_or_else(|| ServerError::InvalidArgument("empty import stream".into()))?;
        let region = first.region.clone().ok_or_else(|| {
            ServerError::InvalidArgument("the first import message needs the region".into())
        })?;
        let move_id = first.move_id;
        if move_id == 0 {
            return Err(ServerError::InvalidArgument(
                "the first import message needs a move id".into(),
            )
            .into());
        }
        if region.store_id != self.node.store_id {
            return Err(ServerError::InvalidArgument(format!(
                "region {} is addressed to store {}, this is store {}",
                region.id, region.store_id, self.node.store_id
            ))
            .into());
        }
        let r = region.clone();
        let check = move |map: &RegionMap| -> Result<()> {
            if map.is_called_off(move_id) {
                return Err(ServerError::Aborted(format!(
                    "move {move_id} of region {} was called off by its source",
                    r.id
                )));
            }
            match map.overlaps(&r.start_key, &r.end_key) {
                Some(id) => Err(ServerError::FailedPrecondition(format!(
                    "region {} overlaps region {id} already served here",
                    r.id
                ))),
                None => Ok(()),
            }
        };
        check(&*self.node.regions.read().await)?;
        let engine = &self.node.engine;
        // Clear leftovers of an earlier, interrupted import of this range
        // (not served here, so nobody reads it meanwhile).
        engine
            .reclaim_range(region.start_key.clone(), region.end_key.clone())
            .await
            .map_err(ServerError::from)?;
        let mut imported = 0u64;
        let mut total = None;
        let mut msg = Some(first);
        while let Some(m) = msg {
            if total.is_some() {
                return Err(ServerError::InvalidArgument(
                    "import message after the one marked last".into(),
                )
                .into());
            }
            for p in &m.pairs {
                if !region.contains(&p.key) {
                    return Err(ServerError::InvalidArgument(format!(
                        "imported key {} is outside region {}",
                        rdb_proto::region::display_key(&p.key),
                        region.id
                    ))
                    .into());
                }
            }
            imported += m.pairs.len() as u64;
            if m.last {
                total = Some(m.total_keys);
            }
            let ops: Vec<_> = m
                .pairs
                .into_iter()
                .map(|p| WriteOp::Import {
                    key: p.key,
                    value: p.value,
                    version: p.version,
                })
                .collect();
            if !ops.is_empty() {
                engine.write(ops).await.map_err(ServerError::from)?;
            }
            msg = stream.message().await.map_err(ServerError::Peer)?;
        }
        match total {
            None => {
                return Err(ServerError::Aborted(format!(
                    "the import stream of region {} ended before its last message; not served",
                    region.id
                ))
                .into())
            }
            Some(t) if t != imported => {
                return Err(ServerError::DataLoss(format!(
                    "received {imported} keys of region {}, the source sent {t}; not served",
                    region.id
                ))
                .into())
            }
            Some(_) => {}
        }
        // Start serving in a task of its own, so that a dropped connection
        // cannot cancel it half-way. It holds the region map's lock from the
        // check to the insert, as SettleImport does: an import is either
        // served or called off, never both.
        let node = self.node.clone();
        let served = region.clone();
        tokio::spawn(async move {
            let mut map = node.regions.write().await;
            check(&map)?;
            node.engine
                .write(vec![put_region_op(&served)])
                .await
                .map_err(ServerError::from)?;
            map.insert(served);
            Ok::<(), ServerError>(())
        })
        .await
        .map_err(|e| ServerError::Internal(format!("import task: {e}")))??;
        tracing::info!(region_id = region.id, imported, move_id, "imported region");
        // Test builds only (feature `failpoints`): a crash right after the
        // region is served here, and an answer that never reaches the source.
        fail::fail_point!("import-crash-after-serving", |_| {
            tracing::error!("failpoint import-crash-after-serving: aborting");
            std::process::abort()
        });
        fail::fail_point!("import-answer-lost", |_| Err(ServerError::Remote(
            "failpoint import-answer-lost".into()
        )
        .into()));
        Ok(Response::new(ImportRegionResponse {
            imported_keys: imported,
        }))
    }

    async fn settle_import(
        &self,
        request: Request<SettleImportRequest>,
    ) -> Result<Response<SettleImportResponse>, Status> {
        let req = request.into_inner();
        if req.move_id == 0 {
            return Err(ServerError::InvalidArgument("settling needs a move id".into()).into());
        }
        let epoch = req.epoch.unwrap_or_default();
        let mut map = self.node.regions.write().await;
        let serving = map
            .get(req.region_id)
            .is_some_and(|st| st.region.epoch_or_default().is_at_least(&epoch));
        if !serving {
            map.call_off(req.move_id);
        }
        tracing::info!(
            region_id = req.region_id,
            move_id = req.move_id,
            serving,
            "settled an import"
        );
        Ok(Response::new(SettleImportResponse { serving }))
    }
}
