//! A running store: its engine, its region replicas, its PD client, and
//! how it starts (registration with PD, bootstrap, then one Raft group
//! member per region replica).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdb_proto::failover::FailoverChannel;
use rdb_proto::tls::ClientTls;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{
    AllocIdRequest, IsBootstrappedRequest, Peer, PeerRole, PutStoreRequest, Region, Store,
    StoreState,
};
use rdb_storage::{DataDir, Engine, Identity};
use tokio::sync::mpsc;

use crate::bootstrap::pending_bootstrap;
use crate::error::{Result, ServerError};
use crate::operator::AddedPeer;
use crate::peer::{first_campaigner, load_counter, member, Event, RegionMachine, RegionPeer};
use crate::regions::{load_regions, put_region_op, RegionMap};

/// Raft settings of the region replicas.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Heartbeat and election timing.
    pub timing: rdb_raft::Timing,
    /// Entries between two snapshots (and kept behind one).
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            timing: rdb_raft::Timing::default(),
            snapshot_every: 10_000,
        }
    }
}

/// A running store.
pub struct Node {
    /// The storage engine.
    pub engine: Engine,
    /// The region replicas held here.
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
    /// The Raft transport shared by every replica here.
    pub transport: rdb_raft::Transport,
    /// The entry format the replicas here propose in, following the
    /// cluster version PD reports in heartbeat answers.
    pub formats: Arc<crate::command::FormatGate>,
    /// Raft settings of the replicas.
    raft: RaftSettings,
    /// Where the replicas' state machines send their events.
    events: mpsc::UnboundedSender<Event>,
    /// The events' receiving end, until [`Node::run`] takes it.
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Set while the store shuts down: a group that stops then is expected.
    stopping: AtomicBool,
    /// Notified when a replica here becomes its region's leader.
    pub(crate) leader_changed: Arc<tokio::sync::Notify>,
    /// By region led here: its size in bytes and keys at its last split
    /// check (reported to PD in heartbeats).
    pub(crate) region_sizes: Mutex<std::collections::HashMap<u64, (u64, u64)>>,
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

/// How a store starts: where PD is and how long to wait for it.
pub struct StartOptions<'a> {
    /// PD's members, comma-separated.
    pub pd: &'a str,
    /// The address clients and other stores reach this store on.
    pub address: String,
    /// How long to wait for PD at start.
    pub pd_wait: Duration,
    /// TLS towards PD and other stores.
    pub tls: Option<ClientTls>,
    /// Raft settings of the replicas.
    pub raft: RaftSettings,
}

impl Node {
    /// Registers with PD (waiting up to `pd_wait` for it), bootstraps the
    /// cluster if it is new, and starts a Raft group member for every
    /// region replica recorded here.
    pub async fn start(dir: &DataDir, engine: Engine, opts: StartOptions<'_>) -> Result<Node> {
        let StartOptions {
            pd: pd_addr,
            address,
            pd_wait,
            tls,
            raft,
        } = opts;
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
                ..Default::default()
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
        let regions = adopt_unreplicated(&mut pd, &engine, store_id, regions).await?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let node = Node {
            transport: rdb_raft::Transport::new(tls.clone()),
            formats: Arc::default(),
            engine,
            regions: RwLock::new(RegionMap::default()),
            store_id,
            cluster_id,
            address,
            pd,
            tls,
            raft,
            events,
            events_rx: Mutex::new(Some(events_rx)),
            stopping: AtomicBool::new(false),
            leader_changed: Arc::new(tokio::sync::Notify::new()),
            region_sizes: Mutex::new(std::collections::HashMap::new()),
        };
        // Replicas start side by side: a restarted member of a group of
        // several stays quiet for an election timeout first.
        // Replicas created to join a group and not filled by a snapshot yet.
        let mut empty = Vec::new();
        for (id, added) in node.added_peers()? {
            if !regions.iter().any(|r| r.id == id) {
                empty.push((id, added));
            }
        }
        let started =
            futures::future::join_all(regions.into_iter().map(|r| node.start_peer(r))).await;
        for s in started {
            s?;
        }
        for (id, added) in empty {
            node.start_empty_peer(id, added).await?;
        }
        Ok(node)
    }

    /// The regions map, read-locked (never held across an await).
    pub fn regions(&self) -> std::sync::RwLockReadGuard<'_, RegionMap> {
        self.regions.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn regions_mut(&self) -> std::sync::RwLockWriteGuard<'_, RegionMap> {
        self.regions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts this store's member of `region`'s group. A group with no Raft
    /// state yet (a region just bootstrapped or split here) is initialized
    /// with the region's peers: every replica does the same with the same
    /// peers.
    pub async fn start_peer(&self, region: Region) -> Result<()> {
        // An added replica may hold a membership without itself for a
        // while (a snapshot from just before its addition): its record
        // names it.
        let added = self.added_peer(region.id)?;
        let mine = region.peers.iter().find(|p| p.store_id == self.store_id);
        let peer_id = match (added, mine) {
            (Some(a), _) => a.peer_id,
            (None, Some(me)) => me.id,
            (None, None) => {
                tracing::warn!(
                    region_id = region.id,
                    "region record names no replica on this store: not started"
                );
                return Ok(());
            }
        };
        let joined_after = added.map_or(0, |a| a.after_conf_ver);
        let counters = load_counter(&self.engine, region.id)?;
        let (group, machine) = self.start_group(region.clone(), peer_id, counters).await?;
        let internal = |what: &str, e: rdb_raft::Error| {
            ServerError::Internal(format!("{what} region {}: {e}", region.id))
        };
        if !group
            .is_initialized()
            .await
            .map_err(|e| internal("starting", e))?
        {
            let members = self.members_of(&region).await?;
            group
                .initialize(members)
                .await
                .map_err(|e| internal("initializing", e))?;
        }
        // A region just split off, its group created from the same first
        // entry on every replica: the replica on the split's proposer (the
        // highest peer id) campaigns at once; the others wait for it (or,
        // if it is gone, an election timeout).
        let st = group.status();
        if st.term == 0 && st.leader.is_none() && first_campaigner(&region) == Some(peer_id) {
            if let Err(e) = group.campaign().await {
                tracing::warn!(region_id = region.id, error = %e, "first campaign failed");
            }
        }
        tracing::debug!(region_id = region.id, peer_id, "region replica started");
        self.regions_mut().insert(
            region.id,
            Arc::new(RegionPeer {
                group,
                machine,
                joined_after,
                formats: self.formats.clone(),
            }),
        );
        Ok(())
    }

    /// Starts the Raft group member `peer_id` of `region` (its counters at
    /// `counters`) with its state machine.
    async fn start_group(
        &self,
        region: Region,
        peer_id: u64,
        counters: crate::peer::Counters,
    ) -> Result<(rdb_raft::Group, Arc<RegionMachine>)> {
        let region_id = region.id;
        // Test builds only: snapshots (and log purges) this often, so that a
        // test reaches a purged log in a few dozen writes.
        let snapshot_every = rdb_daemon::process::failpoint_number("raft-snapshot-every")
            .unwrap_or(self.raft.snapshot_every);
        let machine = Arc::new(RegionMachine::new(
            self.engine.clone(),
            region,
            counters,
            self.events.clone(),
        ));
        let group = rdb_raft::Group::start_batched(
            rdb_raft::GroupConfig {
                group_id: region_id,
                node_id: peer_id,
                timing: self.raft.timing,
                snapshot_every,
                lease_on_demand: true,
                hibernate: true,
            },
            self.engine.clone(),
            machine.clone(),
            self.transport.clone(),
        )
        .await
        .map_err(|e| ServerError::Internal(format!("starting region {region_id}: {e}")))?;
        tokio::spawn(watch_leadership(group.watch(), self.leader_changed.clone()));
        Ok((group, machine))
    }

    /// Starts an empty replica of region `region_id` added to its group
    /// (`added`): a Raft member that waits for its leader's snapshot,
    /// serving nothing.
    pub(crate) async fn start_empty_peer(&self, region_id: u64, added: AddedPeer) -> Result<()> {
        let region = Region {
            id: region_id,
            ..Default::default()
        };
        let peer_id = added.peer_id;
        let (group, machine) = self
            .start_group(region, peer_id, crate::peer::Counters::default())
            .await?;
        tracing::info!(
            region_id,
            peer_id,
            "empty replica started, waiting for a snapshot"
        );
        self.regions_mut().insert(
            region_id,
            Arc::new(RegionPeer {
                group,
                machine,
                joined_after: added.after_conf_ver,
                formats: self.formats.clone(),
            }),
        );
        Ok(())
    }

    /// The voters of `region` as Raft members (their stores' addresses
    /// from PD; this store's own address without asking).
    async fn members_of(
        &self,
        region: &Region,
    ) -> Result<BTreeMap<rdb_raft::NodeId, rdb_raft::Member>> {
        let mut members = BTreeMap::new();
        for p in &region.peers {
            if p.role == PeerRole::Learner as i32 {
                continue;
            }
            let store = if p.store_id == self.store_id {
                Store {
                    id: self.store_id,
                    address: self.address.clone(),
                    ..Default::default()
                }
            } else {
                self.pd
                    .clone()
                    .get_store(rdb_proto::v1::GetStoreRequest {
                        store_id: p.store_id,
                    })
                    .await
                    .map_err(|s| ServerError::remote("looking up a peer's store", &s))?
                    .into_inner()
                    .store
                    .unwrap_or_default()
            };
            members.insert(p.id, member(&store));
        }
        Ok(members)
    }

    /// Handles the replicas' events and watches their groups until the
    /// process stops. A group that stops on its own (a storage error the
    /// engine did not already stop the process for) stops the store, with
    /// the storage failure's exit code: a store must not go on serving
    /// some regions with a broken disk.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = self
            .events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Split { right }) => {
                        let id = right.id;
                        if let Err(e) = self.start_peer(right).await {
                            tracing::error!(region_id = id, error = %e, "cannot start the replica of a new region");
                        }
                    }
                    None => return,
                },
                _ = check.tick() => self.check_groups(),
            }
        }
    }

    fn check_groups(&self) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        for p in self.regions().peers() {
            if let Some(reason) = p.group.with_status(|s| s.stopped.clone()) {
                tracing::error!(region_id = p.region().id, %reason, "a region's Raft group stopped; exiting");
                std::process::exit(rdb_storage::fatal::STORAGE_FAILURE_EXIT_CODE);
            }
        }
    }

    /// Stops every replica's group.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        let peers = self.regions().peers();
        futures::future::join_all(peers.iter().map(|p| p.group.shutdown())).await;
    }
}

/// Notifies `changed` each time the member of `status` becomes a leader,
/// until its group stops.
async fn watch_leadership(
    mut status: tokio::sync::watch::Receiver<rdb_raft::Status>,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut was_leader = false;
    loop {
        let is_leader = status.borrow_and_update().is_leader;
        if is_leader && !was_leader {
            changed.notify_one();
            crate::metrics::LEADERSHIPS_WON.inc();
        }
        was_leader = is_leader;
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Gives every region recorded before replication (no peers) its replica
/// here, with a peer id from PD, and a new conf_ver (so that PD adopts the
/// record with its peers from the next heartbeat).
async fn adopt_unreplicated(
    pd: &mut PdClient<FailoverChannel>,
    engine: &Engine,
    store_id: u64,
    regions: Vec<Region>,
) -> Result<Vec<Region>> {
    let mut out = Vec::with_capacity(regions.len());
    for mut r in regions {
        if r.peers.is_empty() {
            let id = alloc_id(pd, "a peer id").await?;
            r.peers.push(Peer {
                id,
                store_id,
                role: PeerRole::Voter as i32,
            });
            let mut epoch = r.epoch_or_default();
            epoch.conf_ver += 1;
            r.epoch = Some(epoch);
            r.store_id = store_id;
            engine.write(vec![put_region_op(&r)]).await?;
            tracing::info!(
                region_id = r.id,
                peer_id = id,
                "region from before replication: replica recorded"
            );
        }
        out.push(r);
    }
    Ok(out)
}
