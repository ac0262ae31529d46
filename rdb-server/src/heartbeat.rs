//! Heartbeats to PD: the regions whose groups this store leads and the
//! store's approximate size, sent at a fixed interval and whenever a replica
//! here becomes a leader.

use std::sync::Arc;
use std::time::Duration;

use rdb_proto::v1::{RegionStat, StoreHeartbeatRequest};

use crate::error::{Result, ServerError};
use crate::node::Node;

/// A replica whose log is this many entries behind the leader's is pending.
const PENDING_LAG: u64 = 100;

impl Node {
    /// Sends one heartbeat with the regions whose groups this store leads.
    pub async fn heartbeat(&self) -> Result<()> {
        let mut regions = Vec::new();
        let mut region_stats = Vec::new();
        for p in self.regions().peers() {
            let st = p.group.status();
            if !st.is_leader {
                continue;
            }
            let mut r = p.region();
            r.store_id = self.store_id;
            region_stats.push(RegionStat {
                region_id: r.id,
                term: st.term,
                leader_peer_id: st.id,
                pending_peer_ids: st
                    .members
                    .keys()
                    .filter(|id| **id != st.id)
                    .filter(|id| {
                        st.matched.get(id).copied().unwrap_or(0) + PENDING_LAG < st.last_log_index
                    })
                    .copied()
                    .collect(),
                down_peer_ids: p.group.silent_members(2 * p.group.timing().election_max),
            });
            regions.push(r);
        }
        regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        let engine = self.engine.clone();
        let (keys, size) = tokio::task::spawn_blocking(move || engine.approximate_stats())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.pd
            .clone()
            .store_heartbeat(StoreHeartbeatRequest {
                cluster_id: self.cluster_id,
                store_id: self.store_id,
                regions,
                approximate_keys: keys,
                approximate_size: size,
                region_stats,
            })
            .await
            .map_err(|s| ServerError::remote("heartbeat", &s))?;
        Ok(())
    }

    /// Heartbeats every `interval` until the process stops.
    /// A replica here that becomes its region's leader sends one at once
    /// (PD routes clients by what the leaders report).
    pub async fn heartbeat_loop(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.leader_changed.notified() => {}
            }
            let result = self.heartbeat().await;
            let label = if result.is_ok() { "ok" } else { "failed" };
            crate::metrics::HEARTBEATS.with_label_values(&[label]).inc();
            match result {
                Ok(()) if failing => {
                    tracing::info!("heartbeats to PD work again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat to PD failed");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat to PD failed"),
            }
        }
    }
}
