//! A running store: its engine, its regions, its PD client, and how it
//! starts (registration with PD, then bootstrap or recovery).

use std::time::{Duration, Instant};

use rdb_proto::failover::FailoverChannel;
use rdb_proto::tls::ClientTls;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{
    AllocIdRequest, IsBootstrappedRequest, MoveRecord, PutStoreRequest, Store, StoreState,
};
use rdb_storage::{DataDir, Engine, Identity};
use tokio::sync::RwLock;

use crate::bootstrap::pending_bootstrap;
use crate::error::{Result, ServerError};
use crate::regions::{load_regions, RegionMap};

/// A running store.
pub struct Node {
    /// The storage engine.
    pub engine: Engine,
    /// The regions served here.
    pub regions: RwLock<RegionMap>,
    /// This store's id.
    pub store_id: u64,
    /// The cluster this store belongs to.
    pub cluster_id: u64,
    /// The address clients and other stores reach this store on.
    pub address: String,
    /// PD: for heartbeats, and to settle bootstraps and moves.
    pub(crate) pd: PdClient<FailoverChannel>,
    /// How this store connects to PD and other stores over TLS (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Moves a previous run left unsettled (see [`crate::moves`]).
    pub(crate) pending_moves: std::sync::Mutex<Vec<MoveRecord>>,
}

/// Connects to PD lazily (over TLS with `tls`); calls fail until PD answers.
/// `pd` lists the PD members, comma-separated: a call that fails on one
/// (unreachable, paused, no leader) makes the next call go to the next.
pub fn pd_client(pd: &str, tls: Option<&ClientTls>) -> Result<PdClient<FailoverChannel>> {
    let mut channels = Vec::new();
    for addr in pd.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let ch = rdb_proto::tls::endpoint(addr, tls)
            .map_err(|e| ServerError::InvalidArgument(format!("PD address: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(PD_CALL_TIMEOUT)
            .connect_lazy();
        channels.push((addr.to_string(), ch));
    }
    let ch = FailoverChannel::new(channels)
        .map_err(|e| ServerError::InvalidArgument(format!("PD addresses: {e}")))?;
    Ok(PdClient::new(ch))
}

/// Longest wait for one PD call: a paused PD member must not hold up
/// heartbeats for long (the next call goes to the next member).
const PD_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh id from PD for `what` (for the error message).
pub(crate) async fn alloc_id(pd: &mut PdClient<FailoverChannel>, what: &str) -> Result<u64> {
    let resp = pd
        .alloc_id(AllocIdRequest {})
        .await
        .map_err(|s| ServerError::remote(&format!("allocating {what}"), &s))?;
    Ok(resp.into_inner().id)
}

impl Node {
    /// Registers with PD (waiting up to `pd_wait` for it), bootstraps the
    /// cluster if it is new, and loads the regions this store serves.
    pub async fn start(
        dir: &DataDir,
        engine: Engine,
        pd_addr: &str,
        address: String,
        pd_wait: Duration,
        tls: Option<ClientTls>,
    ) -> Result<Node> {
        let identity = dir.check_role("server")?;
        let mut pd = pd_client(pd_addr, tls.as_ref())?;
        let deadline = Instant::now() + pd_wait;
        let boot = loop {
            match pd.is_bootstrapped(IsBootstrappedRequest {}).await {
                Ok(r) => break r.into_inner(),
                Err(s) if Instant::now() < deadline => {
                    tracing::warn!(pd = pd_addr, error = %s.message(), "PD not reachable yet, retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => {
                    return Err(ServerError::remote(
                        &format!("cannot reach PD at {pd_addr}"),
                        &s,
                    ))
                }
            }
        };
        let cluster_id = boot.cluster_id;
        let store_id = match identity {
            Some(id) => {
                dir.check_cluster(&id, cluster_id)?;
                id.node_id
            }
            None => {
                let id = alloc_id(&mut pd, "a store id").await?;
                dir.write_identity(&Identity {
                    role: "server".into(),
                    cluster_id,
                    node_id: id,
                })?;
                id
            }
        };
        pd.put_store(PutStoreRequest {
            cluster_id,
            store: Some(Store {
                id: store_id,
                address: address.clone(),
                state: StoreState::Up as i32,
                last_heartbeat_ms: 0,
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        })
        .await
        .map_err(|s| ServerError::remote("registering with PD", &s))?;
        let mut regions = load_regions(&engine)?;
        let ids = (cluster_id, store_id);
        if let Some(first) = pending_bootstrap(&engine, &regions)? {
            // A previous run did not learn whether PD recorded its bootstrap.
            tracing::warn!(
                region_id = first.id,
                "settling a bootstrap whose outcome a previous run did not learn"
            );
            regions = Self::settle_bootstrap(&mut pd, &engine, ids, first, pd_wait).await?;
        } else if !boot.bootstrapped && regions.is_empty() {
            regions = Self::bootstrap(&mut pd, &engine, ids, pd_wait).await?;
        }
        let node = Node {
            engine,
            regions: RwLock::new(RegionMap::new(regions)),
            store_id,
            cluster_id,
            address,
            pd,
            tls,
            pending_moves: std::sync::Mutex::new(Vec::new()),
        };
        node.drop_stale_regions().await?;
        node.pause_unsettled_moves().await?;
        Ok(node)
    }
}
