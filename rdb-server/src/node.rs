//! A store node: its engine, its regions, and its relationship with PD
//! (registration, bootstrap, heartbeats).

use std::time::{Duration, Instant};

use rdb_proto::tls::ClientTls;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::*;
use rdb_storage::{DataDir, Engine, Identity, WriteOp};
use tokio::sync::RwLock;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Result, ServerError};
use crate::moves::{load_moves, move_meta_key, move_region_id};
use crate::regions::{load_regions, put_region_op, region_meta_key, RegionMap};

/// Meta key of the marker of a bootstrap not settled with PD yet: the id of
/// the first region, persisted with that region's record.
const BOOTSTRAP_KEY: &[u8] = b"bootstrap_pending";

/// The first region whose bootstrap a previous run left unsettled, if any.
fn pending_bootstrap(engine: &Engine, regions: &[Region]) -> Result<Option<Region>> {
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
    pd: &mut PdClient<Channel>,
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
    pub(crate) pd: PdClient<Channel>,
    /// How this store connects to PD and other stores over TLS (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Moves a previous run left unsettled (see [`crate::moves`]).
    pending_moves: std::sync::Mutex<Vec<MoveRecord>>,
}

/// Connects to PD lazily (over TLS with `tls`); calls fail until PD answers.
pub fn pd_client(pd: &str, tls: Option<&ClientTls>) -> Result<PdClient<Channel>> {
    let ch = rdb_proto::tls::endpoint(pd, tls)
        .map_err(|e| ServerError::InvalidArgument(format!("PD address: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    Ok(PdClient::new(ch))
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
                let id = pd
                    .alloc_id(AllocIdRequest {})
                    .await
                    .map_err(|s| ServerError::remote("allocating a store id", &s))?
                    .into_inner()
                    .id;
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

    /// Creates the first region (the whole key space) here and tells PD.
    /// The region is persisted locally first, with a [`BOOTSTRAP_KEY`]
    /// marker, then settled with PD ([`Node::settle_bootstrap`]).
    async fn bootstrap(
        pd: &mut PdClient<Channel>,
        engine: &Engine,
        ids: (u64, u64),
        pd_wait: Duration,
    ) -> Result<Vec<Region>> {
        let id = pd
            .alloc_id(AllocIdRequest {})
            .await
            .map_err(|s| ServerError::remote("allocating the first region id", &s))?
            .into_inner()
            .id;
        let region = Region {
            id,
            start_key: Vec::new(),
            end_key: Vec::new(),
            epoch: Some(RegionEpoch {
                version: 1,
                conf_ver: 1,
            }),
            store_id: ids.1,
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
    async fn settle_bootstrap(
        pd: &mut PdClient<Channel>,
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

    /// Pauses the regions whose move a previous run left unsettled; they are
    /// settled by [`Node::resume_moves`] once the store serves.
    async fn pause_unsettled_moves(&self) -> Result<()> {
        let mut pending = Vec::new();
        for rec in load_moves(&self.engine)? {
            let id = move_region_id(&rec);
            let mut map = self.regions.write().await;
            match map.get_mut(id) {
                Some(st) => {
                    st.moving = true;
                    pending.push(rec);
                }
                None => {
                    // The region is gone already (dropped as stale): nothing to settle.
                    drop(map);
                    self.engine
                        .write(vec![WriteOp::DeleteMeta {
                            key: move_meta_key(id),
                        }])
                        .await?;
                }
            }
        }
        *self.pending_moves.lock().unwrap_or_else(|p| p.into_inner()) = pending;
        Ok(())
    }

    /// Starts settling the moves a previous run left unsettled.
    pub fn resume_moves(self: &std::sync::Arc<Self>) {
        let pending =
            std::mem::take(&mut *self.pending_moves.lock().unwrap_or_else(|p| p.into_inner()));
        for rec in pending {
            tracing::warn!(
                region_id = move_region_id(&rec),
                "a region move was interrupted; the region stays paused until it is settled"
            );
            self.settle_in_background(rec);
        }
    }

    /// Drops regions that PD knows moved to another store with a newer epoch
    /// (left behind when this store died during a move).
    async fn drop_stale_regions(&self) -> Result<()> {
        let local = self.regions.read().await.regions();
        let mut pd = self.pd.clone();
        for r in local {
            let Ok(resp) = pd
                .get_region_by_id(GetRegionByIdRequest { region_id: r.id })
                .await
            else {
                continue;
            };
            let Some(known) = resp.into_inner().route.and_then(|rt| rt.region) else {
                continue;
            };
            if known.store_id != self.store_id
                && known
                    .epoch_or_default()
                    .is_newer_than(&r.epoch_or_default())
            {
                tracing::warn!(
                    region_id = r.id,
                    now_on = known.store_id,
                    "dropping a region that moved away"
                );
                self.drop_local_region(&r).await?;
            }
        }
        Ok(())
    }

    /// Stops serving a region that now lives on another store and deletes
    /// it here: its record, its data and any move record, in one batch;
    /// then gives the data's disk space back.
    pub(crate) async fn drop_local_region(&self, r: &Region) -> Result<()> {
        self.regions.write().await.remove(r.id);
        self.engine
            .write(vec![
                WriteOp::DeleteMeta {
                    key: region_meta_key(r.id),
                },
                WriteOp::DeleteMeta {
                    key: move_meta_key(r.id),
                },
                WriteOp::ClearRange {
                    start: r.start_key.clone(),
                    end: r.end_key.clone(),
                },
            ])
            .await?;
        // The range is no longer served (and no longer recorded): nobody
        // reads it while its files go.
        if let Err(e) = self
            .engine
            .reclaim_range(r.start_key.clone(), r.end_key.clone())
            .await
        {
            tracing::warn!(region_id = r.id, error = %e, "disk space of a dropped region not reclaimed");
        }
        Ok(())
    }

    /// Sends one heartbeat with the regions served here.
    pub async fn heartbeat(&self) -> Result<()> {
        let regions = self.regions.read().await.regions();
        let engine = self.engine.clone();
        let (keys, size) = tokio::task::spawn_blocking(move || engine.approximate_stats())
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        self.pd
            .clone()
            .store_heartbeat(StoreHeartbeatRequest {
                cluster_id: self.cluster_id,
                store_id: self.store_id,
                regions,
                approximate_keys: keys,
                approximate_size: size,
            })
            .await
            .map_err(|s| ServerError::remote("heartbeat", &s))?;
        Ok(())
    }

    /// Heartbeats every `interval` until the process stops.
    pub async fn heartbeat_loop(self: std::sync::Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let result = self.heartbeat().await;
            let label = if result.is_ok() { "ok" } else { "failed" };
            crate::metrics::HEARTBEATS.with_label_values(&[label]).inc();
            match result {
                Ok(()) if failing => {
                    tracing::info!("heartbeats to PD work again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "heartbeat to PD failed");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "heartbeat to PD failed"),
            }
        }
    }
}
