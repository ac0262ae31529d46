//! Moving a region to another store without ever serving it on two stores.
//!
//! Source store S moves region R to target store T:
//!
//! 1. S pauses R (requests get `ServerIsBusy`) and persists a [`MoveRecord`].
//! 2. S streams R's data to T's `ImportRegion`. T serves R (with the new
//!    epoch) only if the stream was complete (its last message arrived and
//!    the key count matches) and the move was not called off (step 4).
//! 3. If T answers success, S stops serving R and deletes R's data, its
//!    region record and the move record in one batch.
//! 4. Otherwise S does not know whether T serves R (the answer may have been
//!    lost after T committed). S asks T with `SettleImport`: T answers
//!    whether it serves R at the new epoch or later, and if not, calls that
//!    import off so it can never start serving afterwards. If T does not
//!    serve R, S also asks PD: T may have served R and split or moved it on,
//!    which PD learned from T's heartbeat before it could happen. Only when
//!    both say no does S serve R again. While T or PD cannot be reached, R
//!    stays paused and S keeps asking in the background.
//! 5. A store that restarts with a move record keeps R paused and goes on
//!    with step 4.
//!
//! A target that never comes back leaves R paused: without replication the
//! only copy of an acknowledged write may be on the target, so serving the
//! source's copy again could lose it.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::*;
use rdb_storage::{Engine, WriteOp};
use tonic::transport::Channel;

use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::regions::load_records;

const MOVE_PREFIX: &[u8] = b"move/";

/// How long to wait between attempts to settle a move in the background.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// Meta key of the move record of a region.
pub fn move_meta_key(region_id: u64) -> Vec<u8> {
    let mut k = MOVE_PREFIX.to_vec();
    k.extend_from_slice(&region_id.to_be_bytes());
    k
}

/// The write that persists a move record.
pub fn put_move_op(rec: &MoveRecord) -> WriteOp {
    WriteOp::PutMeta {
        key: move_meta_key(move_region_id(rec)),
        value: rec.encode_to_vec(),
    }
}

/// Loads the move records of a store's engine.
pub fn load_moves(engine: &Engine) -> Result<Vec<MoveRecord>> {
    load_records(engine, MOVE_PREFIX, "move")
}

/// The id of the region a move record is about.
pub fn move_region_id(rec: &MoveRecord) -> u64 {
    rec.region.as_ref().map_or(0, |r| r.id)
}

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

/// Whether the move happened: asks the target (which calls the import off
/// if it does not serve the region), then PD. `Err` when either cannot say.
async fn settle(
    rec: &MoveRecord,
    pd: &mut PdClient<Channel>,
    tls: Option<&rdb_proto::tls::ClientTls>,
) -> Result<bool> {
    let (Some(region), Some(target)) = (rec.region.as_ref(), rec.target.as_ref()) else {
        return Err(ServerError::Internal(
            "move record without region or target".into(),
        ));
    };
    // The target may have restarted on another address: PD knows the latest.
    let address = match pd
        .get_store(GetStoreRequest {
            store_id: target.id,
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .store
            .map_or_else(|| target.address.clone(), |s| s.address),
        Err(_) => target.address.clone(),
    };
    let mut admin =
        StoreAdminClient::new(connect_store(&address, Some(Duration::from_secs(10)), tls).await?);
    let serving = admin
        .settle_import(SettleImportRequest {
            region_id: region.id,
            epoch: region.epoch,
            move_id: rec.move_id,
        })
        .await
        .map_err(ServerError::Peer)?
        .into_inner()
        .serving;
    if serving {
        return Ok(true);
    }
    // The import can no longer start serving. If the target served the
    // region and then lost it (a further move), PD saw the newer epoch first.
    let known = pd
        .get_region_by_id(GetRegionByIdRequest {
            region_id: region.id,
        })
        .await
        .map_err(ServerError::Peer)?
        .into_inner()
        .route
        .and_then(|r| r.region);
    Ok(known.is_some_and(|k| k.epoch_or_default().is_at_least(&region.epoch_or_default())))
}

impl Node {
    /// Settles a move whose outcome is unknown: asks the target and PD once.
    /// `Ok(true)`: the region moved and is no longer served here;
    /// `Ok(false)`: it did not and is served here again; `Err`: the outcome
    /// is still unknown and the region stays paused.
    pub async fn settle_move(&self, rec: &MoveRecord) -> Result<bool> {
        let moved = settle(rec, &mut self.pd.clone(), self.tls.as_ref()).await?;
        if moved {
            self.finish_move(rec).await;
        } else {
            self.cancel_move(rec).await;
        }
        Ok(moved)
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

    /// The move did not happen: serve the region here again.
    pub async fn cancel_move(&self, rec: &MoveRecord) {
        let id = move_region_id(rec);
        if let Err(e) = self
            .engine
            .write(vec![WriteOp::DeleteMeta {
                key: move_meta_key(id),
            }])
            .await
        {
            // Harmless: settling again after a restart gives the same answer.
            tracing::warn!(region_id = id, error = %e, "cannot delete a settled move record");
        }
        if let Some(st) = self.regions.write().await.get_mut(id) {
            st.moving = false;
        }
    }

    /// Settles a move in the background, retrying until the target and PD
    /// answer; the region stays paused until then.
    pub fn settle_in_background(self: &Arc<Self>, rec: MoveRecord) {
        let node = self.clone();
        tokio::spawn(async move {
            let id = move_region_id(&rec);
            let mut attempts = 0u64;
            loop {
                tokio::time::sleep(SETTLE_RETRY).await;
                attempts += 1;
                match node.settle_move(&rec).await {
                    Ok(moved) => {
                        tracing::info!(region_id = id, moved, attempts, "settled a region move");
                        return;
                    }
                    Err(s) if attempts == 1 || attempts.is_multiple_of(60) => {
                        tracing::warn!(region_id = id, attempts, error = %s,
                            "region paused: cannot learn yet whether its move happened");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}
