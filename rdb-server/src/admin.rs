//! The `flaredb.v1.StoreAdmin` gRPC service: splits and moves ordered by PD.

use std::sync::Arc;
use std::time::Duration;

use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::store_admin_server::StoreAdmin;
use rdb_proto::v1::*;
use rdb_storage::{ScanOptions, WriteOp};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;
use crate::node::Node;
use crate::regions::{key_not_in_region, put_region_op, region_meta_key, RegionCheck, RegionMap};

/// Keys per message when moving a region.
const MOVE_CHUNK: usize = 1024;

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
) -> Result<Region, Result<RegionError, Status>> {
    let ctx = Context {
        region_id,
        region_epoch: epoch,
    };
    match map.check_context(Some(&ctx)) {
        Ok(r) => Ok(r.clone()),
        Err(RegionCheck::Region(e)) => Err(Ok(e)),
        Err(RegionCheck::Invalid(m)) => Err(Err(Status::invalid_argument(m))),
    }
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
    /// Streams the region's data to the target store; returns the number of keys.
    async fn send_region(&self, region: &Region, target: &Store) -> Result<u64, Status> {
        let ch = Channel::from_shared(format!("http://{}", target.address))
            .map_err(|e| Status::invalid_argument(format!("bad target address: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot reach store {} at {}: {e}",
                    target.id, target.address
                ))
            })?;
        let mut client = StoreAdminClient::new(ch)
            .max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.node.engine.clone();
        let moved = moved_region(region, target.id);
        let (start, end) = (region.start_key.clone(), region.end_key.clone());
        // Reads run on a blocking thread and feed the stream chunk by chunk.
        let reader = tokio::task::spawn_blocking(move || -> Result<u64, ServerError> {
            let mut cursor = start;
            let mut first = true;
            let mut total = 0u64;
            loop {
                let chunk = engine.scan(
                    &cursor,
                    &end,
                    ScanOptions {
                        limit: MOVE_CHUNK,
                        ..Default::default()
                    },
                )?;
                let done = chunk.len() < MOVE_CHUNK;
                if let Some(last) = chunk.last() {
                    cursor = last.key.clone();
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
                    region: first.then(|| moved.clone()),
                    pairs,
                };
                first = false;
                if tx.blocking_send(msg).is_err() {
                    return Err(ServerError::Remote(
                        "the target store closed the import stream".into(),
                    ));
                }
                if done {
                    return Ok(total);
                }
            }
        });
        let imported = client.import_region(ReceiverStream::new(rx)).await;
        let sent = reader
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::from);
        let imported = imported?.into_inner().imported_keys;
        let sent = sent?;
        if imported != sent {
            return Err(Status::internal(format!(
                "sent {sent} keys but the target imported {imported}"
            )));
        }
        Ok(sent)
    }
}

#[tonic::async_trait]
impl StoreAdmin for AdminService {
    async fn apply_split(
        &self,
        request: Request<ApplySplitRequest>,
    ) -> Result<Response<ApplySplitResponse>, Status> {
        let req = request.into_inner();
        rdb_proto::limits::check_key(&req.split_key).map_err(Status::invalid_argument)?;
        let mut map = self.node.regions.write().await;
        let region = match check(&map, req.region_id, req.epoch) {
            Ok(r) => r,
            Err(Ok(e)) => {
                return Ok(Response::new(ApplySplitResponse {
                    region_error: Some(e),
                    ..Default::default()
                }))
            }
            Err(Err(s)) => return Err(s),
        };
        if req.split_key == region.start_key || !region.contains(&req.split_key) {
            return Ok(Response::new(ApplySplitResponse {
                region_error: Some(key_not_in_region(&req.split_key, &region)),
                ..Default::default()
            }));
        }
        if req.new_region_id == 0 || map.get(req.new_region_id).is_some() {
            return Err(Status::invalid_argument(format!(
                "new region id {} is 0 or already used",
                req.new_region_id
            )));
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
            .map_err(|e| Status::from(ServerError::from(e)))?;
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
            .ok_or_else(|| Status::invalid_argument("transfer needs a target store"))?;
        if target.id == self.node.store_id {
            return Err(Status::invalid_argument("the target store is this store"));
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
                Err(Err(s)) => return Err(s),
            };
            if let Some(s) = map.get_mut(region.id) {
                s.moving = true;
            }
            region
        };
        tracing::info!(region_id = region.id, target = target.id, "moving region");
        let sent = self.send_region(&region, &target).await;
        let mut map = self.node.regions.write().await;
        let moved_keys = match sent {
            Ok(n) => n,
            Err(s) => {
                if let Some(st) = map.get_mut(region.id) {
                    st.moving = false;
                }
                tracing::warn!(region_id = region.id, error = %s.message(), "moving region failed");
                return Err(s);
            }
        };
        // The target has the data and the region durably; remove ours.
        self.node
            .engine
            .write(vec![
                WriteOp::DeleteMeta {
                    key: region_meta_key(region.id),
                },
                WriteOp::DeleteRange {
                    start: region.start_key.clone(),
                    end: region.end_key.clone(),
                },
            ])
            .await
            .map_err(|e| Status::from(ServerError::from(e)))?;
        map.remove(region.id);
        tracing::info!(
            region_id = region.id,
            target = target.id,
            moved_keys,
            "region moved"
        );
        Ok(Response::new(TransferRegionResponse {
            region_error: None,
            region: Some(moved_region(&region, target.id)),
            moved_keys,
        }))
    }

    async fn import_region(
        &self,
        request: Request<Streaming<ImportRegionRequest>>,
    ) -> Result<Response<ImportRegionResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty import stream"))?;
        let region = first
            .region
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first import message needs the region"))?;
        if region.store_id != self.node.store_id {
            return Err(Status::invalid_argument(format!(
                "region {} is addressed to store {}, this is store {}",
                region.id, region.store_id, self.node.store_id
            )));
        }
        let overlap = |map: &RegionMap| -> Result<(), Status> {
            match map.overlaps(&region.start_key, &region.end_key) {
                Some(id) => Err(Status::failed_precondition(format!(
                    "region {} overlaps region {id} already served here",
                    region.id
                ))),
                None => Ok(()),
            }
        };
        overlap(&*self.node.regions.read().await)?;
        let engine = &self.node.engine;
        // Clear leftovers of an earlier, interrupted import of this range.
        engine
            .write(vec![WriteOp::DeleteRange {
                start: region.start_key.clone(),
                end: region.end_key.clone(),
            }])
            .await
            .map_err(|e| Status::from(ServerError::from(e)))?;
        let mut imported = 0u64;
        let mut msg = Some(first);
        while let Some(m) = msg {
            for p in &m.pairs {
                if !region.contains(&p.key) {
                    return Err(Status::invalid_argument(format!(
                        "imported key {} is outside region {}",
                        rdb_proto::region::display_key(&p.key),
                        region.id
                    )));
                }
            }
            imported += m.pairs.len() as u64;
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
                engine
                    .write(ops)
                    .await
                    .map_err(|e| Status::from(ServerError::from(e)))?;
            }
            msg = stream.message().await?;
        }
        let mut map = self.node.regions.write().await;
        overlap(&map)?;
        engine
            .write(vec![put_region_op(&region)])
            .await
            .map_err(|e| Status::from(ServerError::from(e)))?;
        map.insert(region.clone());
        tracing::info!(region_id = region.id, imported, "imported region");
        Ok(Response::new(ImportRegionResponse {
            imported_keys: imported,
        }))
    }
}
