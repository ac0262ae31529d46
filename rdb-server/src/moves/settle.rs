//! Settling a move whose outcome the source store does not know (a lost
//! answer, a target crash, a restart mid-move): ask the target, then PD;
//! then delete the region here or serve it again. Until both answer, the
//! region stays paused and the source keeps asking in the background.

use std::sync::Arc;
use std::time::Duration;

use rdb_proto::failover::FailoverChannel;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::{GetRegionByIdRequest, GetStoreRequest, MoveRecord, SettleImportRequest};

use super::record::{delete_move_op, move_region_id};
use super::source::connect_store;
use crate::error::{Result, ServerError};
use crate::node::Node;

/// How long to wait between attempts to settle a move in the background.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// Whether the move happened: asks the target (which calls the import off
/// if it does not serve the region), then PD. `Err` when either cannot say.
async fn settle(
    rec: &MoveRecord,
    pd: &mut PdClient<FailoverChannel>,
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

    /// The move did not happen: serve the region here again.
    async fn cancel_move(&self, rec: &MoveRecord) {
        let id = move_region_id(rec);
        if let Err(e) = self.engine.write(vec![delete_move_op(id)]).await {
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
