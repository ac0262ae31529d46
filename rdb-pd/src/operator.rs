//! PD's replica operators, driven by hand (`rdb-cli operator ...`): add a
//! replica, remove a replica, hand over a region's leadership. Each runs its
//! steps on the stores in order (an empty replica on the target store, a
//! learner, its promotion; or a leadership transfer, a removal, the
//! deletion on the old store), checks the region's final configuration,
//! and records it. One operator runs at a time (the service's admin lock).

use rdb_proto::v1::{
    ChangePeerRequest, ChangeType, CreatePeerRequest, DestroyPeerRequest, Peer, PeerRole, Region,
    RegionRoute, Store, TransferLeaderRequest,
};

use crate::cluster::is_voter as voter;
use crate::error::PdError;
use crate::oplog::Running;
use crate::service::PdService;

/// Region `region`'s replica on store `store_id`.
fn peer_on(region: &Region, store_id: u64) -> Result<Peer, PdError> {
    region
        .peers
        .iter()
        .find(|p| p.store_id == store_id)
        .copied()
        .ok_or_else(|| {
            PdError::FailedPrecondition(format!(
                "store {store_id} holds no replica of region {}",
                region.id
            ))
        })
}

impl PdService {
    /// Runs one operator: waits for the operator lock (one operator at a
    /// time), and records it with its steps and outcome in the operator
    /// log (`rdb-cli operators`).
    pub(crate) async fn operate<T>(
        &self,
        kind: &str,
        region_id: u64,
        store_id: u64,
        source: &str,
        f: impl AsyncFnOnce(Running<'_>) -> Result<T, PdError>,
    ) -> Result<T, PdError> {
        let _guard = self.admin_lock.lock().await;
        let op = self.operators.start(kind, region_id, store_id, source);
        let result = f(op).await;
        op.finish(&result);
        result
    }

    /// The region's record and its leader store.
    async fn region_and_leader(&self, region_id: u64) -> Result<(Region, Store), PdError> {
        let route = self.cluster.region_by_id(region_id).await?;
        let region = route.region.unwrap_or_default();
        let leader = route.leader.ok_or_else(|| {
            PdError::FailedPrecondition(format!("the leader of region {region_id} is unknown"))
        })?;
        Ok((region, leader))
    }

    /// One ChangePeer step on the leader; the region after it.
    async fn change_peer(
        &self,
        region: &Region,
        leader: &Store,
        change: ChangeType,
        peer: Peer,
        store: Option<Store>,
    ) -> Result<Region, PdError> {
        let resp = self
            .admin_client(leader)
            .await?
            .change_peer(ChangePeerRequest {
                region_id: region.id,
                epoch: region.epoch,
                change_type: change as i32,
                peer: Some(peer),
                store,
            })
            .await
            .map_err(|s| store_failed(leader, region, &format!("{change:?}"), &s))?
            .into_inner();
        if let Some(e) = resp.region_error {
            return Err(PdError::FailedPrecondition(format!(
                "store {} refused {change:?} on region {}: {}",
                leader.id, region.id, e.message
            )));
        }
        let now = resp.region.ok_or_else(|| {
            PdError::StoreFailed("store answered a replica change without the region".into())
        })?;
        self.cluster.update_regions(vec![now.clone()]).await?;
        Ok(now)
    }

    fn route(&self, region: Region, leader: Store) -> RegionRoute {
        RegionRoute {
            region: Some(Region {
                store_id: leader.id,
                ..region
            }),
            leader: Some(leader),
            ..Default::default()
        }
    }

    /// Adds a replica of `region_id` on `store_id`: an empty replica
    /// there, a learner in the group (it catches up from a snapshot), then
    /// a voter.
    pub async fn add_replica(&self, region_id: u64, store_id: u64) -> Result<RegionRoute, PdError> {
        self.add_replica_below(region_id, store_id, usize::MAX)
            .await
            .map(|(route, _)| route)
    }

    /// [`PdService::add_replica`], unless the region already has `voters`
    /// voters when the operator starts (then nothing is done and the
    /// answer says `false`): the replica checker's form, which planned
    /// the addition before another operator may have run.
    pub async fn add_replica_below(
        &self,
        region_id: u64,
        store_id: u64,
        voters: usize,
    ) -> Result<(RegionRoute, bool), PdError> {
        let source = if voters == usize::MAX {
            "by hand"
        } else {
            "checker"
        };
        self.operate("add-replica", region_id, store_id, source, async |op| {
            let (region, leader) = self.region_and_leader(region_id).await?;
            if region.peers.iter().filter(|p| voter(p)).count() >= voters {
                op.skip(format!("region {region_id} already has {voters} voters"));
                return Ok((self.route(region, leader), false));
            }
            if region.peers.iter().any(|p| p.store_id == store_id) {
                return Err(PdError::FailedPrecondition(format!(
                    "store {store_id} already holds a replica of region {region_id}"
                )));
            }
            if !self.cluster.store_is_up(store_id).await {
                return Err(PdError::FailedPrecondition(format!(
                    "store {store_id} is not registered or is down"
                )));
            }
            let store = self.cluster.get_store(store_id).await?;
            let peer = Peer {
                id: self.cluster.alloc_id().await?,
                store_id,
                role: PeerRole::Learner as i32,
            };
            op.step(format!("creating replica {} on store {store_id}", peer.id));
            self.admin_client(&store)
                .await?
                .create_peer(CreatePeerRequest {
                    region_id,
                    peer_id: peer.id,
                    region: Some(region.clone()),
                })
                .await
                .map_err(|s| match s.code() {
                    // The store's reason (an overlapping stale replica) as it is.
                    tonic::Code::FailedPrecondition => PdError::FailedPrecondition(format!(
                        "store {store_id} refused a replica of region {region_id}: {}",
                        s.message()
                    )),
                    _ => store_failed(&store, &region, "creating the replica", &s),
                })?;
            op.step("adding it to the group as a learner");
            let region = self
                .change_peer(
                    &region,
                    &leader,
                    ChangeType::AddLearner,
                    peer,
                    Some(store.clone()),
                )
                .await?;
            op.step("promoting it to a voter once it has caught up");
            let region = self.promote(&region, &leader, peer).await?;
            tracing::info!(region_id, store_id, peer_id = peer.id, "replica added");
            Ok((self.route(region, leader), true))
        })
        .await
    }

    /// The promotion of learner `peer` on `leader`, checked: the region after it.
    async fn promote(
        &self,
        region: &Region,
        leader: &Store,
        peer: Peer,
    ) -> Result<Region, PdError> {
        let region = self
            .change_peer(region, leader, ChangeType::Promote, peer, None)
            .await?;
        if !region.peers.iter().any(|p| p.id == peer.id && voter(p)) {
            return Err(PdError::StoreFailed(format!(
                "region {} does not list peer {} as a voter after its promotion: {:?}",
                region.id, peer.id, region.peers
            )));
        }
        Ok(region)
    }

    /// Promotes `region_id`'s learner on `store_id` to a voter (the
    /// leader waits for it to catch up first).
    pub async fn promote_replica(
        &self,
        region_id: u64,
        store_id: u64,
    ) -> Result<RegionRoute, PdError> {
        let source = "checker";
        self.operate("promote-learner", region_id, store_id, source, async |op| {
            let (region, leader) = self.region_and_leader(region_id).await?;
            let peer = peer_on(&region, store_id)?;
            if voter(&peer) {
                op.skip("already a voter");
                return Ok(self.route(region, leader));
            }
            op.step("promoting it to a voter once it has caught up");
            let region = self.promote(&region, &leader, peer).await?;
            tracing::info!(region_id, store_id, peer_id = peer.id, "learner promoted");
            Ok(self.route(region, leader))
        })
        .await
    }

    /// Removes `region_id`'s replica on `store_id`: hands the leadership to
    /// another voter first if that replica leads, removes it from the
    /// group, and deletes it on its store (when that store is up; else it
    /// stays there, out of the group, until it is garbage-collected).
    pub async fn remove_replica(
        &self,
        region_id: u64,
        store_id: u64,
    ) -> Result<RegionRoute, PdError> {
        self.remove_replica_of(region_id, store_id, None)
            .await
            .map(|(route, _)| route)
    }

    /// [`PdService::remove_replica`]; with `Some(voters)`, only if the
    /// region still has exactly that many voters when the operator starts
    /// (else nothing is done and the answer says `false`): the replica
    /// checker's form.
    pub async fn remove_replica_of(
        &self,
        region_id: u64,
        store_id: u64,
        voters: Option<usize>,
    ) -> Result<(RegionRoute, bool), PdError> {
        let source = if voters.is_none() {
            "by hand"
        } else {
            "checker"
        };
        self.operate("remove-replica", region_id, store_id, source, async |op| {
            let (mut region, mut leader) = self.region_and_leader(region_id).await?;
            if voters.is_some_and(|n| region.peers.iter().filter(|p| voter(p)).count() != n) {
                op.skip("the region's voters changed since the plan");
                return Ok((self.route(region, leader), false));
            }
            let peer = peer_on(&region, store_id)?;
            let voters: Vec<&Peer> = region.peers.iter().filter(|p| voter(p)).collect();
            if voter(&peer) && voters.len() == 1 {
                return Err(PdError::FailedPrecondition(format!(
                    "replica {} is region {region_id}'s last voter",
                    peer.id
                )));
            }
            if leader.id == store_id {
                let to = voters
                    .iter()
                    .find(|p| p.id != peer.id && self.cluster.is_up_now(p.store_id))
                    .copied()
                    .copied()
                    .ok_or_else(|| {
                        PdError::FailedPrecondition(format!(
                            "region {region_id} has no other live voter to lead it"
                        ))
                    })?;
                op.step(format!("handing the leadership to store {}", to.store_id));
                self.transfer(&region, &leader, &to).await?;
                let (r, l) = self.region_and_leader(region_id).await?;
                region = r;
                leader = l;
            }
            op.step(format!("removing replica {} from the group", peer.id));
            let region = self
                .change_peer(&region, &leader, ChangeType::Remove, peer, None)
                .await?;
            if region.peers.iter().any(|p| p.id == peer.id) {
                return Err(PdError::StoreFailed(format!(
                    "region {region_id} still lists peer {} after its removal",
                    peer.id
                )));
            }
            if self.cluster.is_up_now(store_id) {
                op.step(format!("deleting it on store {store_id}"));
                let store = self.cluster.get_store(store_id).await?;
                if let Err(s) = self
                    .admin_client(&store)
                    .await?
                    .destroy_peer(DestroyPeerRequest {
                        region_id,
                        peer_id: peer.id,
                    })
                    .await
                {
                    tracing::warn!(region_id, store_id, error = %s.message(), "removed replica not deleted on its store");
                }
            }
            tracing::info!(region_id, store_id, peer_id = peer.id, "replica removed");
            Ok((self.route(region, leader), true))
        })
        .await
    }

    /// Hands `region_id`'s leadership to its replica on `store_id`.
    pub async fn transfer_leader(
        &self,
        region_id: u64,
        store_id: u64,
    ) -> Result<RegionRoute, PdError> {
        let source = "by hand";
        self.operate("transfer-leader", region_id, store_id, source, async |op| {
            let (region, leader) = self.region_and_leader(region_id).await?;
            let to = peer_on(&region, store_id)?;
            if !voter(&to) {
                return Err(PdError::FailedPrecondition(format!(
                    "replica {} of region {region_id} is a learner",
                    to.id
                )));
            }
            if leader.id != store_id {
                op.step(format!("handing the leadership to store {store_id}"));
                self.transfer(&region, &leader, &to).await?;
            } else {
                op.skip(format!("store {store_id} already leads"));
            }
            let store = self.cluster.get_store(store_id).await?;
            Ok(self.route(region, store))
        })
        .await
    }

    /// Hands `region_id`'s leadership from store `from` to its voter on
    /// store `to`, if `from` still leads it and `to` still holds a voter
    /// (else nothing is done and the answer is `false`): the balancer's
    /// form.
    pub async fn transfer_leader_from(
        &self,
        region_id: u64,
        from: u64,
        to: u64,
    ) -> Result<bool, PdError> {
        let source = "checker";
        self.operate("transfer-leader", region_id, to, source, async |op| {
            let (region, leader) = self.region_and_leader(region_id).await?;
            match region.peers.iter().find(|p| p.store_id == to) {
                Some(peer) if leader.id == from && voter(peer) => {
                    op.step(format!("handing the leadership to store {to}"));
                    self.transfer(&region, &leader, peer).await?;
                    Ok(true)
                }
                _ => {
                    op.skip("the leader or the target changed since the plan");
                    Ok(false)
                }
            }
        })
        .await
    }

    async fn transfer(&self, region: &Region, leader: &Store, to: &Peer) -> Result<(), PdError> {
        let resp = self
            .admin_client(leader)
            .await?
            .transfer_leader(TransferLeaderRequest {
                region_id: region.id,
                epoch: region.epoch,
                to_peer_id: to.id,
            })
            .await
            .map_err(|s| store_failed(leader, region, "handing over the leadership", &s))?
            .into_inner();
        if let Some(e) = resp.region_error {
            return Err(PdError::FailedPrecondition(format!(
                "store {} refused to hand over region {}: {}",
                leader.id, region.id, e.message
            )));
        }
        self.cluster
            .set_leader(region.id, to.store_id, to.id, resp.term);
        tracing::info!(
            region_id = region.id,
            from = leader.id,
            to = to.store_id,
            "leadership handed over"
        );
        Ok(())
    }
}

fn store_failed(store: &Store, region: &Region, what: &str, s: &tonic::Status) -> PdError {
    PdError::StoreFailed(format!(
        "store {} failed {what} for region {}: {}",
        store.id,
        region.id,
        s.message()
    ))
}
