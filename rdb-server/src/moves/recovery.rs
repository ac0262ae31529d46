//! What a restarting store does about moves it was part of: regions that
//! moved away while it was down are dropped, and regions whose move it left
//! unsettled stay paused until the move is settled.

use std::sync::Arc;

use rdb_proto::v1::GetRegionByIdRequest;

use super::record::{delete_move_op, load_moves, move_region_id};
use crate::error::Result;
use crate::node::Node;

impl Node {
    /// Drops regions that PD knows moved to another store with a newer epoch
    /// (left behind when this store died during a move).
    pub(crate) async fn drop_stale_regions(&self) -> Result<()> {
        let local = self.regions.read().await.regions();
        let mut pd = self.pd.clone();
        for r in local {
            let Ok(resp) = pd
                .get_region_by_id(GetRegionByIdRequest { region_id: r.id })
                .await
            else {
                continue;
            };
            let Some(known) = resp.into_inner().route.and_then(|rt| rt.region) else {
                continue;
            };
            if known.store_id != self.store_id
                && known
                    .epoch_or_default()
                    .is_newer_than(&r.epoch_or_default())
            {
                tracing::warn!(
                    region_id = r.id,
                    now_on = known.store_id,
                    "dropping a region that moved away"
                );
                self.drop_local_region(&r).await?;
            }
        }
        Ok(())
    }

    /// Pauses the regions whose move a previous run left unsettled; they are
    /// settled by [`Node::resume_moves`] once the store serves.
    pub(crate) async fn pause_unsettled_moves(&self) -> Result<()> {
        let mut pending = Vec::new();
        for rec in load_moves(&self.engine)? {
            let id = move_region_id(&rec);
            let mut map = self.regions.write().await;
            match map.get_mut(id) {
                Some(st) => {
                    st.moving = true;
                    pending.push(rec);
                }
                None => {
                    // The region is gone already (dropped as stale): nothing to settle.
                    drop(map);
                    self.engine.write(vec![delete_move_op(id)]).await?;
                }
            }
        }
        *self.pending_moves.lock().unwrap_or_else(|p| p.into_inner()) = pending;
        Ok(())
    }

    /// Starts settling the moves a previous run left unsettled.
    pub fn resume_moves(self: &Arc<Self>) {
        let pending =
            std::mem::take(&mut *self.pending_moves.lock().unwrap_or_else(|p| p.into_inner()));
        for rec in pending {
            tracing::warn!(
                region_id = move_region_id(&rec),
                "a region move was interrupted; the region stays paused until it is settled"
            );
            self.settle_in_background(rec);
        }
    }
}
