//! The `flaredb.v1.StoreAdmin` gRPC service: splits and moves ordered by
//! PD, and the target side of moves. The handlers check their arguments
//! and call into [`crate::split`] and [`crate::moves`].

use std::sync::Arc;

use rdb_proto::v1::store_admin_server::StoreAdmin;
use rdb_proto::v1::{
    ApplySplitRequest, ApplySplitResponse, ImportRegionRequest, ImportRegionResponse,
    SettleImportRequest, SettleImportResponse, TransferRegionRequest, TransferRegionResponse,
};
use tonic::{Request, Response, Status, Streaming};

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
            .apply_split(req.region_id, req.epoch, req.split_key, req.new_region_id)
            .await?;
        Ok(Response::new(resp))
    }

    async fn transfer_region(
        &self,
        request: Request<TransferRegionRequest>,
    ) -> Result<Response<TransferRegionResponse>, Status> {
        let req = request.into_inner();
        let target = req
            .target
            .ok_or_else(|| ServerError::InvalidArgument("transfer needs a target store".into()))?;
        if target.id == self.node.store_id {
            return Err(
                ServerError::InvalidArgument("the target store is this store".into()).into(),
            );
        }
        let resp = self
            .node
            .move_region(req.region_id, req.epoch, target)
            .await?;
        Ok(Response::new(resp))
    }

    async fn import_region(
        &self,
        request: Request<Streaming<ImportRegionRequest>>,
    ) -> Result<Response<ImportRegionResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await
            .map_err(ServerError::Peer)?
            .ok_or_else(|| ServerError::InvalidArgument("empty import stream".into()))?;
        let region = first.region.clone().ok_or_else(|| {
            ServerError::InvalidArgument("the first import message needs the region".into())
        })?;
        let move_id = first.move_id;
        if move_id == 0 {
            return Err(ServerError::InvalidArgument(
                "the first import message needs a move id".into(),
            )
            .into());
        }
        if region.store_id != self.node.store_id {
            return Err(ServerError::InvalidArgument(format!(
                "region {} is addressed to store {}, this is store {}",
                region.id, region.store_id, self.node.store_id
            ))
            .into());
        }
        let resp = self
            .node
            .import_region(region, move_id, first, stream)
            .await?;
        Ok(Response::new(resp))
    }

    async fn settle_import(
        &self,
        request: Request<SettleImportRequest>,
    ) -> Result<Response<SettleImportResponse>, Status> {
        let req = request.into_inner();
        if req.move_id == 0 {
            return Err(ServerError::InvalidArgument("settling needs a move id".into()).into());
        }
        let resp = self
            .node
            .settle_import(req.region_id, req.epoch.unwrap_or_default(), req.move_id)
            .await;
        Ok(Response::new(resp))
    }
}
