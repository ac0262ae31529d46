//! The `flaredb.v1.StoreAdmin` gRPC service: region changes ordered by PD
//! that go through a region's Raft log. The handlers check their arguments
//! and call into [`crate::split`] and [`crate::operator`].

use std::sync::Arc;

use rdb_proto::v1::store_admin_server::StoreAdmin;
use rdb_proto::v1::{
    ApplySplitRequest, ApplySplitResponse, ChangePeerRequest, ChangePeerResponse,
    ComputeDigestRequest, ComputeDigestResponse, CreatePeerRequest, CreatePeerResponse,
    DestroyPeerRequest, DestroyPeerResponse, RegionDigestsRequest, RegionDigestsResponse,
    TransferLeaderRequest, TransferLeaderResponse,
};
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::node::Node;

/// The StoreAdmin service of one store.
#[derive(Clone)]
pub struct AdminService {
    /// The store the service changes.
    node: Arc<Node>,
}

impl AdminService {
    /// A service over a started node.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl StoreAdmin for AdminService {
    async fn apply_split(
        &self,
        request: Request<ApplySplitRequest>,
    ) -> Result<Response<ApplySplitResponse>, Status> {
        let req = request.into_inner();
        rdb_proto::limits::check_key(&req.split_key).map_err(ServerError::InvalidArgument)?;
        let resp = self
            .node
            .apply_split(
                req.region_id,
                req.epoch,
                req.split_key,
                req.new_region_id,
                req.new_peer_ids,
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn change_peer(
        &self,
        request: Request<ChangePeerRequest>,
    ) -> Result<Response<ChangePeerResponse>, Status> {
        Ok(Response::new(
            self.node.change_peer(request.into_inner()).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.node
                .transfer_leader(req.region_id, req.epoch, req.to_peer_id)
                .await?,
        ))
    }

    async fn create_peer(
        &self,
        request: Request<CreatePeerRequest>,
    ) -> Result<Response<CreatePeerResponse>, Status> {
        let req = request.into_inner();
        self.node
            .create_peer(req.region_id, req.peer_id, req.region.as_ref())
            .await?;
        Ok(Response::new(CreatePeerResponse {}))
    }

    async fn destroy_peer(
        &self,
        request: Request<DestroyPeerRequest>,
    ) -> Result<Response<DestroyPeerResponse>, Status> {
        let req = request.into_inner();
        self.node.destroy_peer(req.region_id, req.peer_id).await?;
        Ok(Response::new(DestroyPeerResponse {}))
    }

    async fn compute_digest(
        &self,
        request: Request<ComputeDigestRequest>,
    ) -> Result<Response<ComputeDigestResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(
            self.node.compute_digest(req.region_id).await?,
        ))
    }

    async fn region_digests(
        &self,
        request: Request<RegionDigestsRequest>,
    ) -> Result<Response<RegionDigestsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.node.region_digests(req.region_id)))
    }
}
