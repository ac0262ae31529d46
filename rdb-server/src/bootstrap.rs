//! Bootstrapping a new cluster: the first store creates the first region
//! (the whole key space, one replica here), persists it with a marker, and
//! settles with PD whether PD recorded it, also across a restart. The
//! region's Raft group is then started like any other.

use std::time::{Duration, Instant};

use rdb_proto::failover::FailoverChannel;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{
    BootstrapRequest, GetRegionByIdRequest, IsBootstrappedRequest, Peer, PeerRole, Region,
    RegionEpoch,
};
use rdb_storage::{Engine, WriteOp};
use tonic::{Code, Status};

use crate::error::{Result, ServerError};
use crate::node::{alloc_id, Node};
use crate::regions::{put_region_op, region_meta_key};

/// Meta key of the marker of a bootstrap not settled with PD yet: the id of
/// the first region, persisted with that region's record.
const BOOTSTRAP_KEY: &[u8] = b"bootstrap_pending";

/// The first region whose bootstrap a previous run left unsettled, if any.
pub(crate) fn pending_bootstrap(engine: &Engine, regions: &[Region]) -> Result<Option<Region>> {
    let Some(raw) = engine.get_meta(BOOTSTRAP_KEY)? else {
        return Ok(None);
    };
    let id = rdb_storage::codec::decode_u64(&raw, "bootstrap_pending")?;
    Ok(regions.iter().find(|r| r.id == id).cloned())
}

/// What PD recorded: `None` while the cluster is not bootstrapped,
/// `Some(true)` if it was bootstrapped with region `region_id`,
/// `Some(false)` if with another region; `Err` when PD cannot say.
async fn recorded_bootstrap(
    pd: &mut PdClient<FailoverChannel>,
    region_id: u64,
) -> std::result::Result<Option<bool>, Status> {
    if !pd
        .is_bootstrapped(IsBootstrappedRequest {})
        .await?
        .into_inner()
        .bootstrapped
    {
        return Ok(None);
    }
    match pd
        .get_region_by_id(GetRegionByIdRequest { region_id })
        .await
    {
        Ok(_) => Ok(Some(true)),
        Err(s) if s.code() == Code::NotFound => Ok(Some(false)),
        Err(s) => Err(s),
    }
}

/// Whether PD's answer to `Bootstrap` says it surely did not apply it (as
/// opposed to a lost answer or an already bootstrapped cluster, which are
/// settled by asking).
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

impl Node {
    /// Creates the first region (the whole key space) here and tells PD.
    /// The region is persisted locally first, with a [`BOOTSTRAP_KEY`]
    /// marker, then settled with PD ([`Node::settle_bootstrap`]).
    pub(crate) async fn bootstrap(
        pd: &mut PdClient<FailoverChannel>,
        engine: &Engine,
        ids: (u64, u64),
        pd_wait: Duration,
    ) -> Result<Vec<Region>> {
        let id = alloc_id(pd, "the first region id").await?;
        let peer_id = alloc_id(pd, "the first peer id").await?;
        let region = Region {
            id,
            start_key: Vec::new(),
            end_key: Vec::new(),
            epoch: Some(RegionEpoch {
                version: 1,
                conf_ver: 1,
            }),
            store_id: ids.1,
            peers: vec![Peer {
                id: peer_id,
                store_id: ids.1,
                role: PeerRole::Voter as i32,
            }],
        };
        engine
            .write(vec![
                put_region_op(&region),
                WriteOp::PutMeta {
                    key: BOOTSTRAP_KEY.to_vec(),
                    value: id.to_be_bytes().to_vec(),
                },
            ])
            .await?;
        // Test builds only: a crash between the local record and PD's.
        fail::fail_point!("bootstrap-crash-before-pd", |_| {
            tracing::error!("failpoint bootstrap-crash-before-pd: aborting");
            std::process::abort()
        });
        Self::settle_bootstrap(pd, engine, ids, region, pd_wait).await
    }

    /// Brings a bootstrap PD may or may not have recorded to an end: asks PD
    /// whether the cluster is bootstrapped and with which region; sends
    /// `Bootstrap` (again) while it is not. Keeps the region here if PD
    /// recorded it, deletes it if PD recorded another store's region or
    /// refused the bootstrap outright. A bootstrap PD applied but whose
    /// answer was lost (timeout, broken connection) is thereby kept, never
    /// deleted while PD maps the key space here. If PD cannot say within
    /// `pd_wait`, the region and its marker stay and the next start settles
    /// again.
    pub(crate) async fn settle_bootstrap(
        pd: &mut PdClient<FailoverChannel>,
        engine: &Engine,
        (cluster_id, store_id): (u64, u64),
        region: Region,
        pd_wait: Duration,
    ) -> Result<Vec<Region>> {
        let deadline = Instant::now() + pd_wait;
        let id = region.id;
        let settled = |keep: bool| {
            let mut ops = vec![WriteOp::DeleteMeta {
                key: BOOTSTRAP_KEY.to_vec(),
            }];
            if !keep {
                ops.push(WriteOp::DeleteMeta {
                    key: region_meta_key(id),
                });
            }
            engine.write(ops)
        };
        loop {
            let answer = match recorded_bootstrap(pd, id).await {
                Ok(Some(ours)) => Ok(ours),
                Ok(None) => match pd
                    .bootstrap(BootstrapRequest {
                        cluster_id,
                        store_id,
                        region: Some(region.clone()),
                    })
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(s) if refused(s.code()) => {
                        settled(false).await?;
                        return Err(ServerError::remote("bootstrapping the cluster", &s));
                    }
                    Err(s) => Err(s),
                },
                Err(s) => Err(s),
            };
            match answer {
                Ok(true) => {
                    settled(true).await?;
                    tracing::info!(
                        store_id,
                        region_id = id,
                        "bootstrapped the cluster with the first region"
                    );
                    return Ok(vec![region]);
                }
                Ok(false) => {
                    settled(false).await?;
                    tracing::info!(
                        region_id = id,
                        "another store bootstrapped the cluster; first region dropped here"
                    );
                    return Ok(Vec::new());
                }
                Err(last) if Instant::now() >= deadline => {
                    return Err(ServerError::remote(
                        "bootstrapping the cluster (outcome unknown: the first region is kept \
                         and the next start settles it with PD)",
                        &last,
                    ));
                }
                Err(last) => {
                    tracing::warn!(region_id = id, error = %last.message(),
                        "bootstrap not settled with PD yet, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
