//! The source store's side of a move: pause the region, persist the move
//! record, stream the region's data to the target in chunks, and delete the
//! region here once the target serves it (or settle, see
//! [`super::settle`]).

use std::sync::Arc;
use std::time::Duration;

use rdb_proto::limits::{MAX_GRPC_MESSAGE_SIZE, PAIR_OVERHEAD_BYTES};
use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::{
    ImportRegionRequest, KvPair, MoveRecord, Region, RegionEpoch, Store, TransferRegionResponse,
};
use rdb_storage::ScanOptions;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::record::{new_move, put_move_op};
use crate::error::{Result, ServerError};
use crate::node::Node;

/// Most keys per message when moving a region.
const MOVE_CHUNK: usize = 1024;

/// Most key and value bytes per message when moving a region (one pair
/// alone may pass it): far under the gRPC message limit whatever the value
/// sizes, and the memory a move holds per message in flight.
const MOVE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A channel to another store (over TLS with `tls`); `timeout` bounds each
/// call on it.
pub async fn connect_store(
    address: &str,
    timeout: Option<Duration>,
    tls: Option<&rdb_proto::tls::ClientTls>,
) -> Result<Channel> {
    let mut ep = rdb_proto::tls::endpoint(address, tls)
        .map_err(|e| ServerError::InvalidArgument(format!("store address: {e}")))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    ep.connect()
        .await
        .map_err(|e| ServerError::Remote(format!("cannot reach store at {address}: {e}")))
}

impl Node {
    /// Moves region `region_id` (at `epoch`) to `target`: pauses it, then
    /// runs the move. A region that is not served here at that epoch (or is
    /// being moved already) is answered with its routing error.
    pub async fn move_region(
        self: &Arc<Self>,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        target: Store,
    ) -> Result<TransferRegionResponse> {
        let region = {
            let mut map = self.regions.write().await;
            let region = match map.check(region_id, epoch) {
                Ok(r) => r.clone(),
                Err(e) => {
                    return Ok(TransferRegionResponse {
                        region_error: Some(e),
                        ..Default::default()
                    })
                }
            };
            if let Some(s) = map.get_mut(region.id) {
                s.moving = true;
            }
            region
        };
        // The move runs in a task of its own: if PD's call is dropped, the
        // move still ends in a settled state instead of a region paused forever.
        let node = self.clone();
        tokio::spawn(async move { node.run_move(region, target).await })
            .await
            .map_err(|e| ServerError::Internal(format!("move task: {e}")))?
    }

    /// Moves a paused region to `target` (see [`crate::moves`]).
    async fn run_move(
        self: &Arc<Self>,
        region: Region,
        target: Store,
    ) -> Result<TransferRegionResponse> {
        let rec = new_move(&region, target.clone());
        let recorded = self.engine.write(vec![put_move_op(&rec)]).await;
        if let Err(e) = recorded {
            if let Some(st) = self.regions.write().await.get_mut(region.id) {
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
            match self.settle_move(&rec).await {
                Ok(true) => {
                    tracing::info!(region_id = region.id, "the target serves the region: moved");
                }
                Ok(false) => return Err(s),
                Err(e) => {
                    self.settle_in_background(rec);
                    return Err(ServerError::Remote(format!(
                        "moving region {} to store {} failed ({}) and whether the target \
                         serves it is not known yet ({}); the region stays paused until \
                         store {} settles it",
                        region.id,
                        target.id,
                        s.client_message(),
                        e.client_message(),
                        self.store_id
                    )));
                }
            }
        } else {
            self.finish_move(&rec).await;
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
        let ch = match connect_store(&target.address, None, self.tls.as_ref()).await {
            Ok(ch) => ch,
            Err(s) => return (0, Err(s)),
        };
        let mut client = StoreAdminClient::new(ch)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.engine.clone();
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
                        overhead: PAIR_OVERHEAD_BYTES,
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

    /// The target serves the region: stop serving it here and delete it.
    pub async fn finish_move(&self, rec: &MoveRecord) {
        let Some(region) = rec.region.as_ref() else {
            return;
        };
        if let Err(e) = self.drop_local_region(region).await {
            // No longer served here; the move record stays, so the next
            // start settles the move again and retries the delete.
            tracing::error!(region_id = region.id, error = %e, "moved region not deleted here; not served");
        }
    }
}
