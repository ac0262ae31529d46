//! The `flaredb.v1.Pd` gRPC service, and split orchestration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdb_proto::limits::{check_key, check_range};
use rdb_proto::v1::pd_server::Pd;
use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::*;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::Cluster;
use crate::error::PdError;
use crate::node::PdNode;
use crate::tso::Tso;

/// How long a split refused by the region's leader (its leadership or
/// epoch moving) is asked again.
const SPLIT_RETRY: Duration = Duration::from_secs(5);

/// Timeout of a call from PD to a store.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The PD gRPC service.
#[derive(Clone)]
pub struct PdService {
    node: Arc<PdNode>,
    tso: Arc<Tso>,
    pub(crate) cluster: Arc<Cluster>,
    /// Serializes admin operations (splits and replica operators).
    pub(crate) admin_lock: Arc<Mutex<()>>,
    /// What the operators are doing and have done.
    pub(crate) operators: Arc<crate::oplog::OperatorLog>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// How PD connects to stores over TLS (`None`: plaintext).
    tls: Option<rdb_proto::tls::ClientTls>,
}

impl PdService {
    /// The service of PD member `node`; `tls` is how PD calls stores.
    pub fn new(node: Arc<PdNode>, tls: Option<rdb_proto::tls::ClientTls>) -> Self {
        PdService {
            tso: node.tso.clone(),
            cluster: node.cluster.clone(),
            node,
            admin_lock: Arc::default(),
            operators: Arc::default(),
            channels: Arc::default(),
            tls,
        }
    }

    pub(crate) async fn admin_client(
        &self,
        store: &Store,
    ) -> Result<StoreAdminClient<Channel>, PdError> {
        let mut chans = self.channels.lock().await;
        let ch = match chans.get(&store.address) {
            Some(ch) => ch.clone(),
            None => {
                let ch = rdb_proto::tls::endpoint(&store.address, self.tls.as_ref())
                    .map_err(|e| PdError::StoreFailed(format!("store {}: {e}", store.id)))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(STORE_CALL_TIMEOUT)
                    .connect_lazy();
                chans.insert(store.address.clone(), ch.clone());
                ch
            }
        };
        Ok(StoreAdminClient::new(ch)
            .max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE))
    }

    /// Splits the region holding `split_key` at that key, through the
    /// region's Raft log on its leader: PD allocates the new region's id and
    /// one peer id per replica.
    pub async fn split(&self, req: SplitRegionRequest) -> Result<SplitRegionResponse, PdError> {
        check_key(&req.split_key).map_err(PdError::InvalidArgument)?;
        // The region as PD sees it now, for the operator log (re-read under
        // the operator lock).
        let logged = self
            .cluster
            .region_by_key(&req.split_key)
            .await
            .ok()
            .and_then(|r| r.region)
            .map_or(0, |r| r.id);
        self.operate("split", logged, 0, "by hand", async |op| {
            let deadline = Instant::now() + SPLIT_RETRY;
            let (resp, region, leader, new_region_id) = loop {
                let route = self.cluster.region_by_key(&req.split_key).await?;
                let region = route.region.unwrap_or_default();
                if region.start_key == req.split_key {
                    return Err(PdError::InvalidArgument(format!(
                        "key {} is already the start of region {}",
                        rdb_proto::region::display_key(&req.split_key),
                        region.id
                    )));
                }
                let leader = route.leader.ok_or_else(|| {
                    PdError::FailedPrecondition(format!(
                        "the leader of region {} (store {}) is unknown",
                        region.id, region.store_id
                    ))
                })?;
                let new_region_id = self.cluster.alloc_id().await?;
                let mut new_peer_ids = Vec::with_capacity(region.peers.len());
                for _ in 0..region.peers.len().max(1) {
                    new_peer_ids.push(self.cluster.alloc_id().await?);
                }
                op.step(format!(
                    "splitting region {} at its leader, store {}",
                    region.id, leader.id
                ));
                let mut admin = self.admin_client(&leader).await?;
                let resp = admin
                    .apply_split(ApplySplitRequest {
                        region_id: region.id,
                        epoch: region.epoch,
                        split_key: req.split_key.clone(),
                        new_region_id,
                        new_peer_ids,
                    })
                    .await
                    .map_err(|s| {
                        PdError::StoreFailed(format!(
                            "store {} failed to split region {}: {}",
                            leader.id,
                            region.id,
                            s.message()
                        ))
                    })?
                    .into_inner();
                match resp.region_error {
                    // Its leadership or membership is moving (a leader just
                    // handed over, an epoch PD has not heard of yet): ask again
                    // with PD's newer picture, for a while.
                    Some(e) if Instant::now() < deadline => {
                        op.step(format!(
                            "store {} refused to split region {} ({}); asking again",
                            leader.id, region.id, e.message
                        ));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Some(e) => {
                        return Err(PdError::FailedPrecondition(format!(
                            "store {} refused to split region {}: {}",
                            leader.id, region.id, e.message
                        )))
                    }
                    None => break (resp, region, leader, new_region_id),
                }
            };
            let (Some(mut left), Some(mut right)) = (resp.left, resp.right) else {
                return Err(PdError::StoreFailed(
                    "store answered the split without regions".into(),
                ));
            };
            left.store_id = leader.id;
            right.store_id = leader.id;
            self.cluster
                .update_regions(vec![left.clone(), right.clone()])
                .await?;
            tracing::info!(
                region_id = region.id,
                new_region_id,
                store_id = leader.id,
                "region split"
            );
            Ok(SplitRegionResponse {
                left: Some(RegionRoute {
                    region: Some(left),
                    leader: Some(leader.clone()),
                    ..Default::default()
                }),
                right: Some(RegionRoute {
                    region: Some(right),
                    leader: Some(leader),
                    ..Default::default()
                }),
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl Pd for PdService {
    type TsoStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<TsoResponse, Status>> + Send>>;

    /// Answers each request of the stream in order, in the stream's own task
    /// (no hand-off to another task per request). A request PD refuses (a bad
    /// count, a failed window write) is answered with its error and the
    /// stream goes on; the stream ends when the client ends it or breaks.
    async fn tso(
        &self,
        request: Request<Streaming<TsoRequest>>,
    ) -> Result<Response<Self::TsoStream>, Status> {
        self.node.check_serving()?;
        let inbound = request.into_inner();
        let tso = self.tso.clone();
        let answers = futures::stream::unfold((inbound, tso), |(mut inbound, tso)| async move {
            let req = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(s) => {
                    tracing::debug!(status = %s, "TSO stream ended");
                    return None;
                }
            };
            let reply = match tso.allocate(req.count).await {
                Ok(first_timestamp) => {
                    crate::metrics::TSO_REQUESTS.inc();
                    crate::metrics::TSO_TIMESTAMPS.inc_by(u64::from(req.count));
                    TsoResponse {
                        first_timestamp,
                        count: req.count,
                        error: None,
                    }
                }
                Err(e) => {
                    let status = Status::from(e);
                    TsoResponse {
                        first_timestamp: 0,
                        count: 0,
                        error: Some(TsoError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        }),
                    }
                }
            };
            Some((Ok(reply), (inbound, tso)))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn is_bootstrapped(
        &self,
        _: Request<IsBootstrappedRequest>,
    ) -> Result<Response<IsBootstrappedResponse>, Status> {
        self.node.check_serving()?;
        Ok(Response::new(IsBootstrappedResponse {
            bootstrapped: self.cluster.is_bootstrapped().await,
            cluster_id: self.cluster.cluster_id(),
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<BootstrapResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        self.cluster.check_cluster(req.cluster_id)?;
        let region = req
            .region
            .ok_or_else(|| PdError::InvalidArgument("bootstrap needs a region".into()))?;
        self.cluster.bootstrap(req.store_id, region).await?;
        // Test builds only: the bootstrap is applied, its answer never arrives.
        fail::fail_point!("bootstrap-answer-lost", |_| Err(PdError::Unavailable(
            "failpoint bootstrap-answer-lost".into()
        )
        .into()));
        Ok(Response::new(BootstrapResponse {}))
    }

    async fn put_store(
        &self,
        request: Request<PutStoreRequest>,
    ) -> Result<Response<PutStoreResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        self.cluster.check_cluster(req.cluster_id)?;
        let store = req
            .store
            .ok_or_else(|| PdError::InvalidArgument("PutStore needs a store".into()))?;
        let store = self.cluster.put_store(store).await?;
        Ok(Response::new(PutStoreResponse {
            store: Some(store),
            cluster_id: self.cluster.cluster_id(),
        }))
    }

    async fn get_store(
        &self,
        request: Request<GetStoreRequest>,
    ) -> Result<Response<GetStoreResponse>, Status> {
        self.node.check_serving()?;
        let store = self
            .cluster
            .get_store(request.into_inner().store_id)
            .await?;
        Ok(Response::new(GetStoreResponse { store: Some(store) }))
    }

    async fn get_all_stores(
        &self,
        _: Request<GetAllStoresRequest>,
    ) -> Result<Response<GetAllStoresResponse>, Status> {
        self.node.check_serving()?;
        Ok(Response::new(GetAllStoresResponse {
            stores: self.cluster.all_stores().await,
        }))
    }

    async fn store_heartbeat(
        &self,
        request: Request<StoreHeartbeatRequest>,
    ) -> Result<Response<StoreHeartbeatResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        let result = match self.cluster.check_cluster(req.cluster_id) {
            Ok(()) => {
                let r = self.cluster.heartbeat(req.store_id, req.regions).await;
                if r.is_ok() {
                    self.cluster.follow_leaders(req.store_id, &req.region_stats);
                    self.cluster
                        .note_missing(req.store_id, &req.missing_replicas);
                }
                r
            }
            Err(e) => Err(e),
        };
        let label = if result.is_ok() { "ok" } else { "failed" };
        crate::metrics::HEARTBEATS.with_label_values(&[label]).inc();
        result?;
        Ok(Response::new(StoreHeartbeatResponse {
            want_all_regions: self
                .cluster
                .wants_all_regions(req.store_id, req.all_regions),
            cluster_version: self.cluster.cluster_version(),
        }))
    }

    async fn get_region(
        &self,
        request: Request<GetRegionRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        self.node.check_serving()?;
        let route = self
            .cluster
            .region_by_key(&request.into_inner().key)
            .await?;
        Ok(Response::new(GetRegionResponse { route: Some(route) }))
    }

    async fn get_region_by_id(
        &self,
        request: Request<GetRegionByIdRequest>,
    ) -> Result<Response<GetRegionResponse>, Status> {
        self.node.check_serving()?;
        let route = self
            .cluster
            .region_by_id(request.into_inner().region_id)
            .await?;
        Ok(Response::new(GetRegionResponse { route: Some(route) }))
    }

    async fn scan_regions(
        &self,
        request: Request<ScanRegionsRequest>,
    ) -> Result<Response<ScanRegionsResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        check_range(&req.start_key, &req.end_key).map_err(PdError::InvalidArgument)?;
        let routes = self
            .cluster
            .scan_regions(&req.start_key, &req.end_key, req.limit as usize)
            .await;
        Ok(Response::new(ScanRegionsResponse { routes }))
    }

    async fn alloc_id(
        &self,
        _: Request<AllocIdRequest>,
    ) -> Result<Response<AllocIdResponse>, Status> {
        self.node.check_serving()?;
        Ok(Response::new(AllocIdResponse {
            id: self.cluster.alloc_id().await?,
        }))
    }

    async fn split_region(
        &self,
        request: Request<SplitRegionRequest>,
    ) -> Result<Response<SplitRegionResponse>, Status> {
        self.node.check_serving()?;
        Ok(Response::new(self.split(request.into_inner()).await?))
    }

    async fn get_operators(
        &self,
        _: Request<GetOperatorsRequest>,
    ) -> Result<Response<GetOperatorsResponse>, Status> {
        self.node.check_serving()?;
        let (running, recent) = self.operators.snapshot();
        Ok(Response::new(GetOperatorsResponse { running, recent }))
    }

    async fn drain_store(
        &self,
        request: Request<DrainStoreRequest>,
    ) -> Result<Response<DrainStoreResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        let store = self.cluster.set_draining(req.store_id, !req.cancel).await?;
        Ok(Response::new(DrainStoreResponse { store: Some(store) }))
    }

    async fn add_replica(
        &self,
        request: Request<AddReplicaRequest>,
    ) -> Result<Response<OperatorResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        let route = self.add_replica(req.region_id, req.store_id).await?;
        Ok(Response::new(OperatorResponse { route: Some(route) }))
    }

    async fn remove_replica(
        &self,
        request: Request<RemoveReplicaRequest>,
    ) -> Result<Response<OperatorResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        let route = self.remove_replica(req.region_id, req.store_id).await?;
        Ok(Response::new(OperatorResponse { route: Some(route) }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderOperatorRequest>,
    ) -> Result<Response<OperatorResponse>, Status> {
        self.node.check_serving()?;
        let req = request.into_inner();
        let route = PdService::transfer_leader(self, req.region_id, req.store_id).await?;
        Ok(Response::new(OperatorResponse { route: Some(route) }))
    }

    async fn get_members(
        &self,
        _: Request<GetMembersRequest>,
    ) -> Result<Response<GetMembersResponse>, Status> {
        Ok(Response::new(self.node.members()))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let req = request.into_inner();
        let (member, initial_cluster) = self.node.add_member(req.name, req.address).await?;
        Ok(Response::new(AddMemberResponse {
            member: Some(member),
            initial_cluster,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let members = self.node.remove_member(&request.into_inner().name).await?;
        Ok(Response::new(RemoveMemberResponse { members }))
    }
}
