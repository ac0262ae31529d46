//! Splitting a region through its Raft log: the leader proposes a split
//! entry; every replica applies it at the same log index (see
//! [`crate::peer::RegionMachine`]). Automatic splits: the leader checks its
//! regions' sizes ([`Node::split_check_loop`]) and asks PD to split the
//! large ones, which then orders the split as for `rdb-cli split`.

use prost::Message;
use rdb_proto::v1::{ApplySplitResponse, Peer, Region, RegionEpoch};

use crate::command::{Answer, Command};
use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::peer::{epoch_changed, ProposeError};
use crate::regions::{check_epoch, key_not_in_region, not_found};

impl Node {
    /// Splits region `region_id` (at `epoch`) at `split_key`: the left half
    /// keeps the id, the right half gets `new_region_id` and the peer ids
    /// `new_peer_ids` (one per peer, in order), both a version one higher.
    /// Answers once the split is applied on this replica (the leader). A
    /// region without a replica here or not led here, a stale epoch, or a
    /// split key not strictly inside the region is answered with its
    /// routing error.
    pub async fn apply_split(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        split_key: Vec<u8>,
        new_region_id: u64,
        new_peer_ids: Vec<u64>,
    ) -> Result<ApplySplitResponse> {
        let refuse = |e| ApplySplitResponse {
            region_error: Some(e),
            ..Default::default()
        };
        let Some(peer) = self.regions().get(region_id) else {
            return Ok(refuse(not_found(region_id)));
        };
        let region = peer.region();
        if let Err(e) = check_epoch(&region, epoch) {
            return Ok(refuse(e));
        }
        if split_key == region.start_key || !region.contains(&split_key) {
            return Ok(refuse(key_not_in_region(&split_key, &region)));
        }
        if new_region_id == 0 || self.regions().get(new_region_id).is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "new region id {new_region_id} is 0 or already used"
            )));
        }
        if new_peer_ids.len() != region.peers.len() || new_peer_ids.contains(&0) {
            return Err(ServerError::InvalidArgument(format!(
                "region {} has {} peers: the split needs as many non-zero new peer ids, got {:?}",
                region.id,
                region.peers.len(),
                new_peer_ids
            )));
        }
        let new_peer_ids = highest_here(&region.peers, self.store_id, new_peer_ids);
        let cur = region.epoch_or_default();
        // The new group's members: the region's members' addresses (its
        // stores), with the new peer ids.
        let members: Option<Vec<(u64, u64, String)>> = peer.group.with_status(|st| {
            region
                .peers
                .iter()
                .zip(&new_peer_ids)
                .map(|(p, id)| {
                    st.members
                        .get(&p.id)
                        .map(|m| (*id, p.store_id, m.address.clone()))
                })
                .collect()
        });
        let cmd = match members {
            Some(members) => Command::SplitSeeded {
                epoch: (cur.version, cur.conf_ver),
                split_key,
                new_region_id,
                new_peer_ids,
                members,
            },
            None => Command::Split {
                epoch: (cur.version, cur.conf_ver),
                split_key,
                new_region_id,
                new_peer_ids,
            },
        };
        let decode = |raw: &[u8]| {
            Region::decode(raw).map_err(|e| ServerError::Internal(format!("split answer: {e}")))
        };
        match peer.propose(&cmd).await {
            Ok(Answer::Split { left, right }) => Ok(ApplySplitResponse {
                region_error: None,
                left: Some(decode(&left)?),
                right: Some(decode(&right)?),
            }),
            Ok(Answer::EpochChanged(now)) => Ok(refuse(epoch_changed(decode(&now)?))),
            Ok(Answer::Refused(m)) => Err(ServerError::InvalidArgument(m)),
            Ok(other) => Err(ServerError::Internal(format!(
                "unexpected answer to a split: {other:?}"
            ))),
            Err(ProposeError::NotLeader(e)) => Ok(refuse(e)),
            Err(ProposeError::Unknown(m)) => Err(ServerError::Unavailable(format!(
                "the split of region {region_id} may or may not be applied: {m}"
            ))),
            Err(ProposeError::Refused(m)) => Err(ServerError::FailedPrecondition(m)),
        }
    }
}

impl Node {
    /// The regions' sizes from their last split checks, locked.
    pub(crate) fn sizes(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (u64, u64)>> {
        self.region_sizes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When the store's leaders check their regions for a split.
#[derive(Debug, Clone, Copy)]
pub struct SplitRules {
    /// Bytes (keys and stored values) past which a region splits.
    pub size: u64,
    /// Keys past which a region splits.
    pub keys: u64,
    /// Pause between two checks.
    pub interval: std::time::Duration,
}

impl Node {
    /// Checks, every `rules.interval`, each region this store leads and
    /// that applied entries since its last check; a region past
    /// `rules.size` bytes or `rules.keys` keys (by half as much again) is
    /// split at the key where the threshold is reached: this store asks PD,
    /// which allocates the ids and orders the split through the region's
    /// log. Runs until the process stops.
    pub async fn split_check_loop(self: std::sync::Arc<Self>, rules: SplitRules) {
        // By region: the applied index at its last check.
        let mut checked: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(rules.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let peers = self.regions().peers();
            // One set of the regions held here (not a scan of every
            // replica for each remembered region).
            let held: std::collections::HashSet<u64> =
                peers.iter().map(|p| p.region().id).collect();
            checked.retain(|id, _| held.contains(id));
            self.sizes().retain(|id, _| held.contains(id));
            for p in peers {
                let (is_leader, applied) = p.group.with_status(|s| (s.is_leader, s.applied_index));
                if !is_leader {
                    continue;
                }
                let region = p.region();
                if checked.get(&region.id) == Some(&applied) {
                    continue;
                }
                checked.insert(region.id, applied);
                let engine = self.engine.clone();
                let (start, end) = (region.start_key.clone(), region.end_key.clone());
                let check = tokio::task::spawn_blocking(move || {
                    engine.split_check(&start, &end, rules.size, rules.keys)
                })
                .await;
                if let Ok(Ok(c)) = &check {
                    self.sizes().insert(region.id, (c.bytes, c.keys));
                }
                let split_key = match check {
                    Ok(Ok(c)) => match c.split_key {
                        Some(k) => {
                            tracing::info!(
                                region_id = region.id,
                                keys = c.keys,
                                bytes = c.bytes,
                                split_key = %rdb_proto::region::display_key(&k),
                                "region too large: asking PD to split it"
                            );
                            k
                        }
                        None => continue,
                    },
                    Ok(Err(e)) => {
                        tracing::warn!(region_id = region.id, error = %e, "split check failed");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(region_id = region.id, error = %e, "split check stopped");
                        continue;
                    }
                };
                let asked = self
                    .pd
                    .clone()
                    .split_region(rdb_proto::v1::SplitRegionRequest { split_key })
                    .await;
                match asked {
                    // Checked again after the split applies (its index moves).
                    Ok(_) => {}
                    Err(s) => {
                        // Look again at the next check.
                        checked.remove(&region.id);
                        tracing::warn!(region_id = region.id, error = %s.message(), "PD did not split the region");
                    }
                }
            }
        }
    }
}

/// `ids` (one per peer of `peers`, in order) with the highest given to the
/// peer on store `store_id` (the leader's): the new region's replica with
/// the highest peer id is the one that campaigns at once
/// ([`crate::peer::first_campaigner`]), so the new region's first leader
/// is where its parent's is, and its store, which applies the split first,
/// starts that replica first.
fn highest_here(peers: &[Peer], store_id: u64, mut ids: Vec<u64>) -> Vec<u64> {
    let mine = peers.iter().position(|p| p.store_id == store_id);
    let top = (0..ids.len()).max_by_key(|&i| ids[i]);
    if let (Some(mine), Some(top)) = (mine, top) {
        if mine < ids.len() {
            ids.swap(mine, top);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(stores: &[u64]) -> Vec<Peer> {
        stores
            .iter()
            .enumerate()
            .map(|(i, s)| Peer {
                id: i as u64 + 1,
                store_id: *s,
                role: 0,
            })
            .collect()
    }

    #[test]
    fn the_leaders_replica_of_a_new_region_gets_the_highest_peer_id() {
        let p = peers(&[4, 5, 6]);
        assert_eq!(highest_here(&p, 4, vec![10, 11, 12]), vec![12, 11, 10]);
        assert_eq!(highest_here(&p, 5, vec![10, 11, 12]), vec![10, 12, 11]);
        assert_eq!(highest_here(&p, 6, vec![10, 11, 12]), vec![10, 11, 12]);
        // Not a member here (cannot be: only a leader splits): unchanged.
        assert_eq!(highest_here(&p, 7, vec![10, 11, 12]), vec![10, 11, 12]);
    }
}
