//! The steps of PD's replica operators, as a store carries them out: on the
//! region's leader, changes of the group's membership and leadership; on
//! the other stores, creating an empty replica before it is added and
//! deleting a replica after it was removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdb_proto::v1::{
    ChangePeerRequest, ChangePeerResponse, ChangeType, Region, RegionEpoch, RegionError, Store,
    TransferLeaderResponse,
};
use rdb_storage::WriteOp;

use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::peer::{member, version_key, RegionPeer};
use crate::regions::{check_epoch, not_found, record_key, region_meta_key};

/// Prefix of the meta keys of replicas created empty to join an existing
/// group (region id → [`AddedPeer`]), kept for the replica's life: it is
/// started empty again after a restart until the leader's snapshot fills
/// it, and its collection is judged against the membership it joined.
pub(crate) const ADDED_PREFIX: &[u8] = b"pending_peer/";

/// The record of a replica created empty to join an existing group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddedPeer {
    /// The replica's peer id.
    pub peer_id: u64,
    /// The conf_ver of the region as PD knew it when the replica was
    /// created. Its addition is checked against that epoch, so it is the
    /// next membership change: every membership with a higher conf_ver
    /// includes the replica until it is removed, and none at or below it
    /// ever did. The leader's snapshot may predate the addition (a snapshot
    /// taken just before it), so a replica may hold a membership without
    /// itself for a moment after it was added.
    pub after_conf_ver: u64,
}

impl AddedPeer {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.peer_id.to_be_bytes().to_vec();
        v.extend_from_slice(&self.after_conf_ver.to_be_bytes());
        v
    }

    /// Decodes a record; one of 8 bytes (a peer id alone, written before
    /// the conf_ver was kept) joined after conf_ver 0.
    pub(crate) fn decode(raw: &[u8]) -> Result<Self> {
        let word = |r: &[u8]| rdb_storage::codec::decode_u64(r, "added replica record");
        match raw.len() {
            8 => Ok(Self {
                peer_id: word(raw)?,
                after_conf_ver: 0,
            }),
            16 => Ok(Self {
                peer_id: word(&raw[..8])?,
                after_conf_ver: word(&raw[8..])?,
            }),
            n => Err(ServerError::Internal(format!(
                "added replica record: expected 8 or 16 bytes, found {n}"
            ))),
        }
    }
}

/// Longest wait for a learner to catch up before it is promoted.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// Longest wait for a transfer's target to take over.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for a snapshot and log compaction before a learner is added.
const COMPACT_WAIT: Duration = Duration::from_secs(10);

impl Node {
    /// The replica of `region_id` if this store leads it at `epoch`.
    fn leading(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
    ) -> std::result::Result<(Arc<RegionPeer>, Region), RegionError> {
        let peer = self
            .regions()
            .get(region_id)
            .ok_or_else(|| not_found(region_id))?;
        let region = peer.region();
        check_epoch(&region, epoch)?;
        if !peer.group.is_leader() {
            return Err(peer.not_leader(peer.group.leader()));
        }
        Ok((peer, region))
    }

    /// One step of a replica change, on the region's leader.
    pub async fn change_peer(&self, req: ChangePeerRequest) -> Result<ChangePeerResponse> {
        let (peer, region) = match self.leading(req.region_id, req.epoch) {
            Ok(x) => x,
            Err(e) => {
                return Ok(ChangePeerResponse {
                    region_error: Some(e),
                    region: None,
                })
            }
        };
        let target = req
            .peer
            .ok_or_else(|| ServerError::InvalidArgument("the change names no peer".into()))?;
        if target.id == 0 {
            return Err(ServerError::InvalidArgument("peer id 0".into()));
        }
        let group = &peer.group;
        let raft = |e: rdb_raft::Error| match e {
            rdb_raft::Error::NotLeader { .. } | rdb_raft::Error::Refused(_) => {
                ServerError::FailedPrecondition(format!("region {}: {e}", region.id))
            }
            e => ServerError::Unavailable(format!(
                "region {}: the change's outcome is unknown: {e}",
                region.id
            )),
        };
        match ChangeType::try_from(req.change_type).unwrap_or(ChangeType::Unspecified) {
            ChangeType::AddLearner => {
                let store: Store = req.store.ok_or_else(|| {
                    ServerError::InvalidArgument("adding a learner needs its store".into())
                })?;
                if store.id == 0 || store.address.is_empty() || store.id != target.store_id {
                    return Err(ServerError::InvalidArgument(format!(
                        "the learner's store {} ({:?}) does not match its peer's store {}",
                        store.id, store.address, target.store_id
                    )));
                }
                if region.peers.iter().any(|p| p.store_id == store.id) {
                    return Err(ServerError::FailedPrecondition(format!(
                        "store {} already holds a replica of region {}",
                        store.id, region.id
                    )));
                }
                // The new replica must start from a snapshot: the group's
                // log does not reach back to the region's creation.
                group.compact_log(COMPACT_WAIT).await.map_err(raft)?;
                // The compaction can take seconds: an operator that timed
                // out meanwhile (PD moved on) must not finish now. The
                // epoch and leadership are checked again right before the
                // change is proposed.
                if let Err(e) = self.leading(req.region_id, req.epoch) {
                    return Ok(ChangePeerResponse {
                        region_error: Some(e),
                        region: None,
                    });
                }
                group
                    .add_learner(target.id, member(&store))
                    .await
                    .map_err(raft)?;
            }
            ChangeType::Promote => {
                let deadline = Instant::now() + CATCH_UP_WAIT;
                let want = group.status().applied_index;
                loop {
                    let st = group.status();
                    if !st.members.contains_key(&target.id) {
                        return Err(ServerError::FailedPrecondition(format!(
                            "peer {} is not a member of region {}",
                            target.id, region.id
                        )));
                    }
                    if st.matched.get(&target.id).copied().unwrap_or(0) >= want {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(ServerError::Unavailable(format!(
                            "learner {} of region {} did not catch up within {:?}",
                            target.id, region.id, CATCH_UP_WAIT
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                group.promote(target.id).await.map_err(raft)?;
            }
            ChangeType::Remove => {
                if target.id == group.node_id() {
                    return Err(ServerError::FailedPrecondition(format!(
                        "peer {} leads region {}: transfer the leadership first",
                        target.id, region.id
                    )));
                }
                group.remove(target.id).await.map_err(raft)?;
            }
            ChangeType::Unspecified => {
                return Err(ServerError::InvalidArgument(
                    "change_type is not set".into(),
                ))
            }
        }
        let mut now = peer.region();
        now.store_id = self.store_id;
        tracing::info!(region_id = now.id, peer_id = target.id, change = ?req.change_type, peers = ?now.peers, "replicas changed");
        Ok(ChangePeerResponse {
            region_error: None,
            region: Some(now),
        })
    }

    /// Hands the leadership of a region led here to voter `to`; answers
    /// once `to` leads.
    pub async fn transfer_leader(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        to: u64,
    ) -> Result<TransferLeaderResponse> {
        let (peer, _) = match self.leading(region_id, epoch) {
            Ok(x) => x,
            Err(e) => {
                return Ok(TransferLeaderResponse {
                    region_error: Some(e),
                    term: 0,
                })
            }
        };
        peer.group
            .transfer_leader(to)
            .await
            .map_err(|e| ServerError::FailedPrecondition(format!("region {region_id}: {e}")))?;
        let deadline = Instant::now() + TRANSFER_WAIT;
        let mut watch = peer.group.watch();
        loop {
            let now = watch.borrow_and_update().clone();
            if now.leader == Some(to) {
                tracing::info!(region_id, to, term = now.term, "leadership handed over");
                return Ok(TransferLeaderResponse {
                    region_error: None,
                    term: now.term,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, watch.changed()).await.is_err() {
                return Err(ServerError::Unavailable(format!(
                    "peer {to} did not take over region {region_id} within {TRANSFER_WAIT:?}"
                )));
            }
        }
    }

    /// Creates an empty replica `peer_id` of `region_id` here, recorded so
    /// that it is started again after a restart until the leader's
    /// snapshot fills it. `region` is PD's view of the region: the replica
    /// joins the membership after it. Refused while a replica of another
    /// region here overlaps its range: that replica is stale (it missed a
    /// split or its own removal), and the snapshot would be installed
    /// under it; it must catch up or be collected first.
    pub async fn create_peer(
        &self,
        region_id: u64,
        peer_id: u64,
        region: Option<&Region>,
    ) -> Result<()> {
        if region_id == 0 || peer_id == 0 {
            return Err(ServerError::InvalidArgument(
                "region id and peer id must not be 0".into(),
            ));
        }
        let r = region.ok_or_else(|| {
            ServerError::InvalidArgument("a new replica needs its region as PD knows it".into())
        })?;
        if r.id != region_id {
            return Err(ServerError::InvalidArgument(format!(
                "the region given is {}, not {region_id}",
                r.id
            )));
        }
        if let Some(p) = self.regions().get(region_id) {
            return if p.group.node_id() == peer_id {
                Ok(())
            } else {
                Err(ServerError::FailedPrecondition(format!(
                    "this store already holds replica {} of region {region_id}",
                    p.group.node_id()
                )))
            };
        }
        let overlapping = self.regions().regions().into_iter().find(|o| {
            o.id != region_id && !o.peers.is_empty() && o.overlaps(&r.start_key, &r.end_key)
        });
        if let Some(o) = overlapping {
            return Err(ServerError::FailedPrecondition(format!(
                "this store holds a replica of region {} ({}..{}, epoch {}/{}) that overlaps region {region_id}: \
                 it is stale and must catch up or be collected first",
                o.id,
                rdb_proto::region::display_key(&o.start_key),
                rdb_proto::region::display_key(&o.end_key),
                o.epoch_or_default().version,
                o.epoch_or_default().conf_ver,
            )));
        }
        let added = AddedPeer {
            peer_id,
            after_conf_ver: r.epoch_or_default().conf_ver,
        };
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: record_key(ADDED_PREFIX, region_id),
                value: added.encode(),
            }])
            .await?;
        self.start_empty_peer(region_id, added).await
    }

    /// The record of this store's replica of `region_id` if it was added
    /// to an existing group.
    pub(crate) fn added_peer(&self, region_id: u64) -> Result<Option<AddedPeer>> {
        self.engine
            .get_meta(&record_key(ADDED_PREFIX, region_id))?
            .map(|raw| AddedPeer::decode(&raw))
            .transpose()
    }

    /// Every replica here added to an existing group: region id → record.
    pub(crate) fn added_peers(&self) -> Result<Vec<(u64, AddedPeer)>> {
        let mut out = Vec::new();
        for (k, v) in self.engine.scan_meta(ADDED_PREFIX)? {
            let id = k
                .len()
                .checked_sub(8)
                .map(|at| rdb_storage::codec::decode_u64(&k[at..], "added replica key"))
                .transpose()?
                .ok_or_else(|| ServerError::Internal("added replica key: too short".into()))?;
            out.push((id, AddedPeer::decode(&v)?));
        }
        Ok(out)
    }

    /// Deletes replica `peer_id` of `region_id` here: stops its group and
    /// deletes its Raft state, records and data in one write.
    pub async fn destroy_peer(&self, region_id: u64, peer_id: u64) -> Result<()> {
        let Some(peer) = self.regions().get(region_id) else {
            return Ok(());
        };
        if peer.group.node_id() != peer_id {
            return Err(ServerError::FailedPrecondition(format!(
                "this store holds replica {} of region {region_id}, not {peer_id}",
                peer.group.node_id()
            )));
        }
        peer.machine.begin_destroy();
        peer.group.shutdown().await;
        self.regions_mut().remove(region_id);
        let region = peer.region();
        let mut ops = rdb_raft::delete_member_ops(region_id);
        ops.extend([
            WriteOp::DeleteMeta {
                key: region_meta_key(region_id),
            },
            WriteOp::DeleteMeta {
                key: version_key(region_id),
            },
            WriteOp::DeleteMeta {
                key: record_key(ADDED_PREFIX, region_id),
            },
        ]);
        ops.extend(crate::peer::clear_records_ops(region_id));
        if !region.peers.is_empty() {
            // Only what no other replica here holds: a stale replica's
            // range may overlap a newer region's.
            let others: Vec<Region> = self.regions().regions();
            for (start, end) in uncovered(&region.start_key, &region.end_key, &others) {
                ops.push(WriteOp::ClearRange { start, end });
            }
        }
        self.engine.write(ops).await?;
        tracing::info!(region_id, peer_id, "replica destroyed");
        Ok(())
    }
}

/// The parts of `[start, end)` (empty `end`: unbounded) that none of
/// `others` covers.
fn uncovered(start: &[u8], end: &[u8], others: &[Region]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut covered: Vec<(&[u8], &[u8])> = others
        .iter()
        .filter(|r| !r.peers.is_empty() && r.overlaps(start, end))
        .map(|r| (r.start_key.as_slice(), r.end_key.as_slice()))
        .collect();
    covered.sort();
    let mut out = Vec::new();
    let mut at = start.to_vec();
    for (s, e) in covered {
        if s > at.as_slice() {
            out.push((at.clone(), s.to_vec()));
        }
        if e.is_empty() {
            return out;
        }
        if e > at.as_slice() {
            at = e.to_vec();
        }
    }
    if end.is_empty() || at.as_slice() < end {
        out.push((at, end.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str, e: &str) -> Region {
        Region {
            start_key: s.into(),
            end_key: e.into(),
            peers: vec![Default::default()],
            ..Default::default()
        }
    }

    #[test]
    fn added_replica_records_round_trip_and_old_ones_read() {
        let a = AddedPeer {
            peer_id: 7,
            after_conf_ver: 12,
        };
        assert_eq!(AddedPeer::decode(&a.encode()).unwrap(), a);
        let old = AddedPeer::decode(&7u64.to_be_bytes()).unwrap();
        assert_eq!((old.peer_id, old.after_conf_ver), (7, 0));
        assert!(AddedPeer::decode(b"short").is_err());
    }

    #[test]
    fn only_ranges_no_other_replica_holds_are_cleared() {
        let v = |x: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            x.iter()
                .map(|(s, e)| (s.as_bytes().to_vec(), e.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(uncovered(b"m", b"z", &[]), v(&[("m", "z")]));
        assert_eq!(
            uncovered(b"m", b"z", &[r("a", "n"), r("p", "q"), r("y", "")]),
            v(&[("n", "p"), ("q", "y")])
        );
        assert_eq!(uncovered(b"m", b"", &[r("t", "")]), v(&[("m", "t")]));
        assert_eq!(
            uncovered(b"m", b"", &[r("p", "r")]),
            v(&[("m", "p"), ("r", "")])
        );
        assert_eq!(uncovered(b"m", b"z", &[r("", "")]), v(&[]));
    }
}
