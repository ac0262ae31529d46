//! Timestamps and cluster administration: stores, regions, splits.

use std::ops::Range;

use rdb_proto::limits::check_key;
use rdb_proto::v1::*;

use crate::cache::RegionCache;
use crate::error::{Error, Result};
use crate::retry::*;
use crate::routing::*;
use crate::Client;

/// Longest wait for a replica operator (a new replica catches up first).
const OPERATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl Client {
    /// One timestamp from PD's oracle: strictly greater than every timestamp
    /// handed out before, to any client.
    pub async fn tso(&self) -> Result<u64> {
        Ok(self.tso_batch(1).await?.start)
    }

    /// `count` consecutive timestamps, as a range.
    pub async fn tso_batch(&self, count: u32) -> Result<Range<u64>> {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            match self.inner.tso.get(count).await {
                Ok(first) => return Ok(first..first + u64::from(count)),
                Err(e) if e.is_unavailable() => {
                    // The PD members may be electing a leader: bounded by the
                    // deadline, not the attempt count.
                    let wait = retry.backoff.min(crate::pd::LEADER_CHANGE_POLL);
                    if !retry.next(cfg, Some(wait)).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// All stores registered with PD, with their state.
    pub async fn stores(&self) -> Result<Vec<Store>> {
        Ok(self
            .pd_call(|mut c| async move { c.get_all_stores(GetAllStoresRequest {}).await })
            .await?
            .stores)
    }

    /// Marks store `store_id` as draining (`cancel`: no longer): PD hands
    /// its leaderships away and moves its replicas to other stores. Returns
    /// the store at once; its `replica_count` and `leader_count` (see
    /// [`Client::stores`]) reach 0 when it is drained.
    pub async fn drain_store(&self, store_id: u64, cancel: bool) -> Result<Store> {
        let req = DrainStoreRequest { store_id, cancel };
        self.pd_call(|mut c| async move { c.drain_store(req).await })
            .await?
            .store
            .ok_or_else(|| Error::Rpc {
                code: tonic::Code::Internal,
                message: "PD answered DrainStore without the store".into(),
            })
    }

    /// PD's operators: those running, and the last finished ones (newest
    /// first).
    pub async fn operators(&self) -> Result<GetOperatorsResponse> {
        self.pd_call(|mut c| async move { c.get_operators(GetOperatorsRequest {}).await })
            .await
    }

    /// All regions in key order, with the store serving each.
    pub async fn regions(&self) -> Result<Vec<RegionRoute>> {
        let req = ScanRegionsRequest::default();
        Ok(self
            .pd_call(|mut c| {
                let req = req.clone();
                async move { c.scan_regions(req).await }
            })
            .await?
            .routes)
    }

    /// Asks PD to split the region holding `key` at `key`. The split goes
    /// through the region's Raft log: both halves keep the region's
    /// replicas and leader. Returns the (left, right) routes.
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// let (left, right) = client.split(b"m".to_vec()).await?;
    /// let id = |r: &rdb_client::RegionRoute| r.region.as_ref().map(|r| r.id);
    /// println!("[..m) is region {:?}, [m..) is region {:?}", id(&left), id(&right));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn split(&self, key: Vec<u8>) -> Result<(RegionRoute, RegionRoute)> {
        invalid(check_key(&key))?;
        let req = SplitRegionRequest { split_key: key };
        let r = self
            .pd_call_within(self.inner.config.rpc_timeout, |mut c| {
                let req = req.clone();
                async move { c.split_region(req).await }
            })
            .await?;
        match (r.left, r.right) {
            (Some(l), Some(r)) => Ok((l, r)),
            _ => Err(Error::Rpc {
                code: tonic::Code::Internal,
                message: "PD answered the split without regions".into(),
            }),
        }
    }

    /// Adds a replica of region `region_id` on store `store_id` (PD's
    /// operator: a learner that catches up from a snapshot and the log,
    /// then a voter). Returns the region with its peers and leader.
    pub async fn add_replica(&self, region_id: u64, store_id: u64) -> Result<RegionRoute> {
        let req = AddReplicaRequest {
            region_id,
            store_id,
        };
        self.operator(|mut c| async move { c.add_replica(req).await })
            .await
    }

    /// Removes region `region_id`'s replica on store `store_id` (its
    /// leadership is handed over first if it leads).
    pub async fn remove_replica(&self, region_id: u64, store_id: u64) -> Result<RegionRoute> {
        let req = RemoveReplicaRequest {
            region_id,
            store_id,
        };
        self.operator(|mut c| async move { c.remove_replica(req).await })
            .await
    }

    /// Hands region `region_id`'s leadership to its replica on store `store_id`.
    pub async fn transfer_leader(&self, region_id: u64, store_id: u64) -> Result<RegionRoute> {
        let req = TransferLeaderOperatorRequest {
            region_id,
            store_id,
        };
        self.operator(|mut c| async move { c.transfer_leader(req).await })
            .await
    }

    async fn operator<F, Fut>(&self, f: F) -> Result<RegionRoute>
    where
        F: Fn(rdb_proto::v1::pd_client::PdClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<
            Output = std::result::Result<tonic::Response<OperatorResponse>, tonic::Status>,
        >,
    {
        let r = self.pd_call_within(OPERATOR_TIMEOUT, f).await?;
        r.route.ok_or_else(|| Error::Rpc {
            code: tonic::Code::Internal,
            message: "PD answered the operator without the region".into(),
        })
    }

    /// The id of the cluster this client is bound to: the first PD that
    /// answered chose it, and every other PD endpoint must serve the same
    /// cluster ([`Error::ClusterMismatch`] otherwise). `None` before any PD answered.
    pub fn cluster_id(&self) -> Option<u64> {
        self.inner.pd.cluster_id()
    }

    /// Forgets every cached route (the next calls ask PD again).
    pub fn clear_region_cache(&self) {
        *self.inner.cache.write().unwrap_or_else(|p| p.into_inner()) = RegionCache::default();
    }
}
