//! Heartbeats to PD: the regions whose groups this store leads (those
//! whose report changed; all of them every [`FULL_EVERY`] intervals) and
//! the store's approximate size, sent at a fixed interval and whenever a
//! replica here becomes a leader. Separately, every [`GC_EVERY`] heartbeat
//! intervals, the replicas here that were removed from their regions are
//! found and deleted (one paged scan of PD's regions per round, never one
//! call per replica, and never in the way of a heartbeat).

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use rdb_proto::v1::{
    MissingReplica, Region, RegionStat, ScanRegionsRequest, StoreHeartbeatRequest,
};

use crate::error::{Result, ServerError};
use crate::node::Node;

/// A replica whose log is this many entries behind the leader's is pending.
const PENDING_LAG: u64 = 100;

/// Removed replicas are looked for once every this many heartbeat
/// intervals.
const GC_EVERY: u32 = 10;

/// Every this many heartbeat intervals, a heartbeat reports every region
/// this store leads, changed or not.
const FULL_EVERY: u32 = 10;

/// What the last heartbeat told PD of a region this store leads, and
/// whether its group was asleep since ([`rdb_raft::Group::quiet_leader`]).
struct Told {
    report: Report,
    quiet: Option<(u64, u64)>,
}

/// A region's report.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    term: u64,
    leader: u64,
    epoch: (u64, u64),
    down: Vec<u64>,
    pending: Vec<u64>,
    size: (u64, u64),
}

/// Regions per page of PD's region scan.
const SCAN_PAGE: u32 = 1024;

impl Node {
    /// Sends one heartbeat with the regions whose groups this store leads:
    /// all of them if `full`, else only those whose report would differ
    /// from the last one PD got (recorded in `told`): a new leadership, a
    /// new epoch, down or pending peers, size. A store leading thousands
    /// of idle regions tells PD nothing new about them each interval.
    /// Answers whether PD wants a heartbeat with every region at once.
    async fn heartbeat(&self, told: &mut HashMap<u64, Told>, full: bool) -> Result<bool> {
        let mut regions = Vec::new();
        let mut region_stats = Vec::new();
        if full {
            told.clear();
        }
        for p in self.regions().peers() {
            // A leader asleep since its last report has nothing new to
            // tell: skipped without reading anything.
            let quiet = p.group.quiet_leader();
            if !full
                && quiet.is_some()
                && told.get(&p.group.group_id()).and_then(|t| t.quiet) == quiet
            {
                continue;
            }
            // Read in place (a clone of every leader's status each
            // interval was most of an idle store's work).
            let Some((term, id, pending)) = p.group.with_status(|st| {
                st.is_leader.then(|| {
                    let pending: Vec<u64> = st
                        .members
                        .keys()
                        .filter(|m| **m != st.id)
                        .filter(|m| {
                            st.matched.get(m).copied().unwrap_or(0) + PENDING_LAG
                                < st.last_log_index
                        })
                        .copied()
                        .collect();
                    (st.term, st.id, pending)
                })
            }) else {
                continue;
            };
            let mut r = p.region();
            r.store_id = self.store_id;
            let size = self.sizes().get(&r.id).copied().unwrap_or_default();
            let epoch = r.epoch_or_default();
            let now = Report {
                term,
                leader: id,
                epoch: (epoch.version, epoch.conf_ver),
                down: p.group.silent_members(2 * p.group.timing().election_max),
                pending,
                size,
            };
            if let Some(t) = told.get_mut(&r.id) {
                if t.report == now {
                    t.quiet = quiet;
                    continue;
                }
            }
            region_stats.push(RegionStat {
                region_id: r.id,
                term,
                leader_peer_id: id,
                pending_peer_ids: now.pending.clone(),
                down_peer_ids: now.down.clone(),
                approximate_size: size.0,
                approximate_keys: size.1,
            });
            told.insert(r.id, Told { report: now, quiet });
            regions.push(r);
        }
        let missing: Vec<MissingReplica> = self
            .transport
            .take_missing()
            .into_iter()
            .filter(|(region_id, _)| self.regions().get(*region_id).is_none())
            .map(|(region_id, peer_id)| MissingReplica { region_id, peer_id })
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "Raft messages arrived for replicas this store does not run: reported to PD"
            );
        }
        if !full && regions.is_empty() && missing.is_empty() {
            return Ok(false);
        }
        regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        let engine = self.engine.clone();
        let (keys, size) = tokio::task::spawn_blocking(move || engine.approximate_stats())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let resp = self
            .pd
            .clone()
            .store_heartbeat(StoreHeartbeatRequest {
                cluster_id: self.cluster_id,
                store_id: self.store_id,
                regions,
                approximate_keys: keys,
                approximate_size: size,
                region_stats,
                all_regions: full,
                missing_replicas: missing,
            })
            .await
            .map_err(|s| ServerError::remote("heartbeat", &s))?;
        let resp = resp.into_inner();
        if let Some(f) = self.formats.follow(&resp.cluster_version) {
            tracing::info!(
                cluster_version = %resp.cluster_version,
                format = f.number(),
                "Raft entries of this store's regions are written in a new format"
            );
        }
        Ok(resp.want_all_regions)
    }

    /// Deletes the replicas here that their regions no longer have. A
    /// replica is removed once a membership after the one it joined
    /// leaves it out: every later membership includes it until its
    /// removal (see [`crate::operator::AddedPeer`]). Two views are asked:
    /// its own applied membership (its removal was applied here, but not
    /// the `DestroyPeer` that follows it), and PD's (removed while this
    /// store was down, it never hears of it from its group; or created for
    /// an addition that never happened). A replica that holds a
    /// membership at or before the one it joined (a snapshot from just
    /// before its addition) is left alone, and so are leaders.
    pub async fn collect_removed_replicas(&self) -> Result<()> {
        let mut removed = Vec::new();
        let mut ask_pd = Vec::new();
        for p in self.regions().peers() {
            if p.group.is_leader() {
                continue;
            }
            let local = p.region();
            let me = p.group.node_id();
            if !local.peers.is_empty() && leaves_out(&local, me, p.joined_after) {
                removed.push((local.id, me));
            } else {
                ask_pd.push((local.id, me, p.joined_after));
            }
        }
        if !ask_pd.is_empty() {
            let known = self.pd_regions().await?;
            for (id, me, joined_after) in ask_pd {
                if known
                    .get(&id)
                    .is_some_and(|now| leaves_out(now, me, joined_after))
                {
                    removed.push((id, me));
                }
            }
        }
        for (region_id, me) in removed {
            // A replica that became a leader since is not collected.
            if self
                .regions()
                .get(region_id)
                .is_none_or(|p| p.group.is_leader() || p.group.node_id() != me)
            {
                continue;
            }
            tracing::info!(
                region_id,
                peer_id = me,
                "collecting a replica its region removed"
            );
            self.destroy_peer(region_id, me).await?;
        }
        Ok(())
    }

    /// Every region PD knows, by id (a paged scan).
    async fn pd_regions(&self) -> Result<HashMap<u64, Region>> {
        let mut out = HashMap::new();
        let mut start = Vec::new();
        loop {
            let routes = self
                .pd
                .clone()
                .scan_regions(ScanRegionsRequest {
                    start_key: start.clone(),
                    end_key: Vec::new(),
                    limit: SCAN_PAGE,
                })
                .await
                .map_err(|s| ServerError::remote("region scan", &s))?
                .into_inner()
                .routes;
            let n = routes.len();
            let mut last_end = None;
            for r in routes.into_iter().filter_map(|r| r.region) {
                last_end = Some(r.end_key.clone());
                out.insert(r.id, r);
            }
            match last_end {
                Some(end) if n as u32 == SCAN_PAGE && !end.is_empty() => start = end,
                _ => return Ok(out),
            }
        }
    }

    /// Looks for removed replicas every `interval` until the process stops.
    pub async fn gc_loop(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.collect_removed_replicas().await {
                tracing::debug!(error = %e, "looking for removed replicas failed");
            }
        }
    }

    /// Heartbeats every `interval` until the process stops: what changed
    /// since the last one, and everything every [`FULL_EVERY`] intervals
    /// or at once when PD asks (a new PD leader, which keeps leaders'
    /// reports in memory only, asks each store once). A replica here that
    /// becomes its region's leader is reported at once (PD routes clients
    /// by what the leaders report).
    pub async fn heartbeat_loop(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut told: HashMap<u64, Told> = HashMap::new();
        let mut ticks: u32 = 0;
        // PD asked for every region (it became the leader since).
        let mut wanted = false;
        tokio::spawn(self.clone().gc_loop(interval * GC_EVERY));
        loop {
            let full = if wanted {
                true
            } else {
                tokio::select! {
                    _ = tick.tick() => {
                        ticks = ticks.wrapping_add(1);
                        ticks % FULL_EVERY == 1
                    }
                    _ = self.leader_changed.notified() => false,
                }
            };
            let result = self.heartbeat(&mut told, full).await;
            // A full report PD still wants is not asked again at once.
            wanted = matches!(result, Ok(true)) && !full;
            if result.is_err() {
                // Whatever it carried is reported again next time.
                told.clear();
            }
            let label = if result.is_ok() { "ok" } else { "failed" };
            crate::metrics::HEARTBEATS.with_label_values(&[label]).inc();
            match result {
                Ok(_) if failing => {
                    tracing::info!("heartbeats to PD work again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat to PD failed");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat to PD failed"),
            }
        }
    }
}

/// Whether membership `r` tells that replica `me`, added after conf_ver
/// `joined_after` (0: a member from the region's creation), was removed:
/// it is a later membership and leaves `me` out.
fn leaves_out(r: &Region, me: u64, joined_after: u64) -> bool {
    r.epoch_or_default().conf_ver > joined_after && !r.peers.iter().any(|x| x.id == me)
}

#[cfg(test)]
mod tests {
    use rdb_proto::v1::{Peer, RegionEpoch};

    use super::*;

    fn region(conf_ver: u64, peers: &[u64]) -> Region {
        Region {
            id: 2,
            epoch: Some(RegionEpoch {
                version: 1,
                conf_ver,
            }),
            peers: peers
                .iter()
                .map(|&id| Peer {
                    id,
                    store_id: id,
                    role: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_membership_after_the_one_joined_removes_a_replica() {
        // Replica 7 was added after conf_ver 4 (its addition made 5).
        assert!(
            !leaves_out(&region(4, &[3, 6]), 7, 4),
            "a snapshot from before its addition"
        );
        assert!(!leaves_out(&region(5, &[3, 6, 7]), 7, 4), "its addition");
        assert!(leaves_out(&region(6, &[3, 6]), 7, 4), "its removal");
        assert!(
            leaves_out(&region(5, &[3, 6, 8]), 7, 4),
            "another addition won: never added"
        );
        // A member from the region's creation.
        assert!(!leaves_out(&region(1, &[1, 2, 3]), 3, 0));
        assert!(leaves_out(&region(2, &[1, 2]), 3, 0));
    }
}
