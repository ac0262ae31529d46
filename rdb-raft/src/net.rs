//! The gRPC transport of every group in the process (service
//! `flaredb.v1.Raft`).
//!
//! Outgoing: one lazily connecting channel per peer address, shared by all
//! groups; each message names its group, its sender and its target node, so
//! a process that is not the target refuses it. Incoming: [`RaftServer`]
//! hands each message to the group it names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::RaftNetworkV2;
use rdb_proto::tls::ClientTls;
use rdb_proto::v1::raft_client::RaftClient;
use rdb_proto::v1::{RaftPing, RaftPong, RaftRequest, RaftResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::hibernate::{HibernateMsg, Sleep, FOLLOWER, LEADER};
use crate::lane::{Call, LaneError, Lanes, Rpc};
use crate::sm::SnapshotData;
use crate::stage::{self, Head};
use crate::{decode, encode, Member, NodeId, Raft, TypeConfig};

/// A snapshot stream that moves no chunk for this long is given up.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(30);
/// Longest wait, after the last chunk, for the receiver to install.
const SNAPSHOT_INSTALL: Duration = Duration::from_secs(600);

/// Largest Raft message, encoded (a snapshot chunk is about 1 MiB).
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Most refused members remembered between two [`Transport::take_missing`].
const MAX_MISSING: usize = 1024;

/// How long a message for a group not running here waits for it to start
/// before it is refused: a replica created by a split that this process
/// has not applied yet, or a process still starting its replicas. Shorter
/// than a heartbeat interval (the sender's time limit for an append); a
/// refusal makes the sender back off (200 ms, doubling up to 1 s).
const GROUP_WAIT: Duration = Duration::from_millis(100);
/// At most this many messages wait for their group at once; any more are
/// refused at once.
const MAX_GROUP_WAITERS: usize = 256;

/// The groups of this process and the connections to their peers.
#[derive(Clone)]
pub struct Transport {
    pub(crate) inner: Arc<Inner>,
}

/// This process's member of one group.
#[derive(Clone)]
struct Registered {
    node: NodeId,
    raft: Raft,
    /// Where it stages the snapshots it receives.
    staging: PathBuf,
    sleep: Arc<Sleep>,
}

/// What the pings tell of one peer process.
struct PeerLive {
    /// When it last answered.
    last_ok: Instant,
    /// The boot id it answered with (0: never answered).
    boot: u64,
    /// Whether it has been silent for an election timeout (its sleeping
    /// followers here were woken).
    dead: bool,
    /// Whether a ping to it is in flight.
    pinging: bool,
}

pub(crate) struct Inner {
    /// By group: this process's member.
    groups: RwLock<HashMap<u64, Registered>>,
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientTls>,
    /// The Raft lanes to peer processes (`lane.rs`); none with TLS.
    lanes: Option<Lanes>,
    /// Drawn at start, answered to pings.
    boot_id: u64,
    /// By peer address, from the pings.
    peers: Mutex<HashMap<String, PeerLive>>,
    /// Whether the ping loop runs.
    pinging: std::sync::atomic::AtomicBool,
    /// Notified each time a group registers.
    registered: tokio::sync::Notify,
    /// Messages waiting for their group to start.
    waiting: std::sync::atomic::AtomicUsize,
    /// Members (group, node) that messages were refused for since the last
    /// [`Transport::take_missing`]: no such group runs here.
    missing: Mutex<std::collections::BTreeSet<(u64, NodeId)>>,
    /// Moves on each ping round in which a peer process has been silent
    /// for half the longest election timeout, and when one answers again
    /// (after a silence or a restart): it stays put while every peer
    /// answers.
    liveness_changes: AtomicU64,
    /// Calls answered over a Raft lane: sent by this process, and served.
    pub(crate) lane_sent: AtomicU64,
    pub(crate) lane_served: AtomicU64,
}

impl Transport {
    /// A transport whose outgoing connections use `tls` (mutual TLS when it
    /// carries a client certificate).
    pub fn new(tls: Option<ClientTls>) -> Transport {
        #[cfg(feature = "failpoints")]
        if let Some(p) = std::env::var_os("FLAREDB_TEST_RAFT_CUT") {
            tracing::warn!(file = ?p, "test build: Raft cut switch armed");
        }
        Transport {
            inner: Arc::new(Inner {
                groups: RwLock::new(HashMap::new()),
                channels: Mutex::new(HashMap::new()),
                lanes: tls.is_none().then(Lanes::default),
                tls,
                boot_id: rand::random::<u64>() | 1,
                peers: Mutex::new(HashMap::new()),
                pinging: std::sync::atomic::AtomicBool::new(false),
                registered: tokio::sync::Notify::new(),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                missing: Mutex::new(std::collections::BTreeSet::new()),
                liveness_changes: AtomicU64::new(0),
                lane_sent: AtomicU64::new(0),
                lane_served: AtomicU64::new(0),
            }),
        }
    }

    /// Raft calls answered over the Raft lane so far: `(sent by this
    /// process, served by it)`.
    pub fn lane_calls(&self) -> (u64, u64) {
        (
            self.inner.lane_sent.load(Ordering::Relaxed),
            self.inner.lane_served.load(Ordering::Relaxed),
        )
    }

    /// The gRPC service to add to the process's server.
    pub fn service(&self) -> rdb_proto::v1::raft_server::RaftServer<RaftServer> {
        rdb_proto::v1::raft_server::RaftServer::new(RaftServer {
            transport: self.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
    }

    pub(crate) fn register(
        &self,
        group: u64,
        node: NodeId,
        raft: Raft,
        staging: PathBuf,
        sleep: Arc<Sleep>,
    ) {
        self.inner
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                group,
                Registered {
                    node,
                    raft,
                    staging,
                    sleep,
                },
            );
        self.inner.registered.notify_waiters();
    }

    pub(crate) fn unregister(&self, group: u64, node: NodeId) {
        let mut groups = self.inner.groups.write().unwrap_or_else(|p| p.into_inner());
        if groups.get(&group).is_some_and(|r| r.node == node) {
            groups.remove(&group);
        }
    }

    fn group(&self, group: u64, to: NodeId) -> Result<Registered, Status> {
        let groups = self.inner.groups.read().unwrap_or_else(|p| p.into_inner());
        match groups.get(&group) {
            Some(r) if r.node == to => Ok(r.clone()),
            Some(r) => Err(Status::failed_precondition(format!(
                "this process is node {} of Raft group {group}, not node {to}",
                r.node
            ))),
            None => Err(Status::unavailable(format!(
                "Raft group {group} is not running here"
            ))),
        }
    }

    /// The members (group, node id) that Raft messages were sent to here
    /// since the last call, and refused because no such group runs in this
    /// process (at most [`MAX_MISSING`] of them): a member its group counts
    /// on that was never created here (its store missed the split that
    /// made it), or one removed here that its group has not learned of.
    pub fn take_missing(&self) -> Vec<(u64, NodeId)> {
        let mut m = self.inner.missing.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *m).into_iter().collect()
    }

    /// Records a message refused for a group not running here.
    fn refused(
        &self,
        group: u64,
        to: NodeId,
        r: Result<Registered, Status>,
    ) -> Result<Registered, Status> {
        if let Err(e) = &r {
            if e.code() == tonic::Code::Unavailable {
                let mut m = self.inner.missing.lock().unwrap_or_else(|p| p.into_inner());
                if m.len() < MAX_MISSING {
                    m.insert((group, to));
                }
            }
        }
        r
    }

    /// This process's member `to` of `group`; a group not running here is
    /// waited for, up to [`GROUP_WAIT`] (and [`MAX_GROUP_WAITERS`] at once).
    async fn group_or_wait(&self, group: u64, to: NodeId) -> Result<Registered, Status> {
        let r = self.group_or_wait_inner(group, to).await;
        self.refused(group, to, r)
    }

    async fn group_or_wait_inner(&self, group: u64, to: NodeId) -> Result<Registered, Status> {
        let deadline = tokio::time::Instant::now() + GROUP_WAIT;
        let mut waiting = None;
        loop {
            let started = self.inner.registered.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            let e = match self.group(group, to) {
                Err(e) if e.code() == tonic::Code::Unavailable => e,
                r => return r,
            };
            if waiting.is_none() {
                if self.inner.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_GROUP_WAITERS {
                    self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(e);
                }
                waiting = Some(WaitGuard(&self.inner.waiting));
            }
            if tokio::time::timeout_at(deadline, started).await.is_err() {
                return self.group(group, to);
            }
        }
    }

    /// Asks member `to` (at `addr`) of `group` to sleep; whether it does.
    pub(crate) async fn hibernate(
        &self,
        group: u64,
        from: NodeId,
        to: NodeId,
        addr: &str,
        msg: &HibernateMsg,
        ttl: Duration,
    ) -> bool {
        if cut() {
            return false;
        }
        let Ok(ch) = self.channel(addr) else {
            return false;
        };
        let Ok(payload) = encode(msg) else {
            return false;
        };
        let req = RaftRequest {
            group_id: group,
            from,
            to,
            payload,
        };
        match tokio::time::timeout(ttl, RaftClient::new(ch).hibernate(req)).await {
            Ok(Ok(r)) => matches!(
                decode::<Result<bool, String>>(&r.into_inner().payload),
                Ok(Ok(true))
            ),
            _ => false,
        }
    }

    /// A value that stays put while every peer process answers pings (see
    /// [`Inner::liveness_changes`]).
    pub(crate) fn liveness_changes(&self) -> u64 {
        self.inner.liveness_changes.load(Ordering::Acquire)
    }

    /// How long the process at `addr` has not answered pings (zero while
    /// it answers; `None` before the first ping).
    pub(crate) fn silent_for(&self, addr: &str) -> Option<Duration> {
        let peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(addr).map(|p| p.last_ok.elapsed())
    }

    /// Starts the ping loop (once): every `interval`, each peer process
    /// this one has a connection to is pinged (unless a ping to it is still
    /// in flight). One that has not answered for `dead_after` (the longest
    /// election timeout) wakes the sleeping followers here whose leader is
    /// there; one that answers with a new boot id (it restarted) or again
    /// after being silent wakes the sleeping leaders here with a member
    /// there.
    pub(crate) fn start_pinging(&self, interval: Duration, dead_after: Duration) {
        if self.inner.pinging.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                Transport { inner }.ping_round(dead_after).await;
            }
        });
    }

    /// One round: a ping to each peer process that has none in flight
    /// (each may take up to `dead_after` to answer: a busy process is
    /// slow, not dead), and the peers silent for `dead_after` marked dead.
    async fn ping_round(&self, dead_after: Duration) {
        let addrs: Vec<(String, Channel)> = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, c)| (a.clone(), c.clone()))
            .collect();
        let now = Instant::now();
        let mut died = Vec::new();
        let mut silent = false;
        {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            for (addr, ch) in addrs {
                let p = peers.entry(addr.clone()).or_insert(PeerLive {
                    last_ok: now,
                    boot: 0,
                    dead: false,
                    pinging: false,
                });
                if !p.dead && p.last_ok.elapsed() > dead_after {
                    p.dead = true;
                    died.push(addr.clone());
                }
                silent |= p.last_ok.elapsed() > dead_after / 2;
                if !p.pinging {
                    p.pinging = true;
                    tokio::spawn(self.clone().ping_one(addr, ch, dead_after));
                }
            }
        }
        if silent {
            self.inner.liveness_changes.fetch_add(1, Ordering::AcqRel);
        }
        if !died.is_empty() {
            self.wake_groups(&died, &[]).await;
        }
    }

    async fn ping_one(self, addr: String, ch: Channel, ttl: Duration) {
        let r = if cut() {
            None
        } else {
            match tokio::time::timeout(ttl, RaftClient::new(ch).ping(RaftPing {})).await {
                Ok(Ok(r)) => Some(r.into_inner().boot_id),
                _ => None,
            }
        };
        let back = {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            let Some(p) = peers.get_mut(&addr) else {
                return;
            };
            p.pinging = false;
            match r {
                Some(boot) => {
                    let back = p.dead || (p.boot != 0 && p.boot != boot);
                    p.last_ok = Instant::now();
                    p.boot = boot;
                    p.dead = false;
                    back
                }
                None => false,
            }
        };
        if back {
            self.inner.liveness_changes.fetch_add(1, Ordering::AcqRel);
            self.wake_groups(&[], &[addr]).await;
        }
    }

    /// Wakes the sleeping followers here whose leader is at one of `died`,
    /// and the sleeping leaders here with a member at one of `back`.
    async fn wake_groups(&self, died: &[String], back: &[String]) {
        let groups: Vec<(u64, Registered)> = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(g, r)| (*g, r.clone()))
            .collect();
        for (group, r) in groups {
            match r.sleep.state() {
                FOLLOWER if r.sleep.leader_addr().is_some_and(|a| died.contains(&a)) => {
                    tracing::debug!(group, "its leader's process is silent: waking to elect");
                    r.sleep.wake(&r.raft);
                }
                LEADER => {
                    let there = {
                        use openraft::async_runtime::watch::WatchReceiver;
                        let m = r.raft.metrics();
                        let m = m.borrow_watched();
                        let there = m
                            .membership_config
                            .membership()
                            .nodes()
                            .any(|(_, n)| back.contains(&n.address));
                        there
                    };
                    if there && r.sleep.wake(&r.raft) == LEADER {
                        tracing::debug!(group, "a member's process is back: waking to reach it");
                        let _ = r.raft.trigger().heartbeat().await;
                    }
                }
                _ => {}
            }
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut chans = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = chans.get(addr) {
            return Ok(c.clone());
        }
        let ch = rdb_proto::tls::endpoint(addr, self.inner.tls.as_ref())?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        chans.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub(crate) fn factory(&self, group: u64, from: NodeId) -> Factory {
        Factory {
            transport: self.clone(),
            group,
            from,
        }
    }
}

/// Counts one message waiting for its group while it lives.
struct WaitGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Test builds: whether this process's Raft traffic is cut (the file named
/// by `FLAREDB_TEST_RAFT_CUT` exists), both ways. Always false otherwise.
fn cut() -> bool {
    #[cfg(feature = "failpoints")]
    {
        if let Some(p) = std::env::var_os("FLAREDB_TEST_RAFT_CUT") {
            return std::path::Path::new(&p).exists();
        }
    }
    false
}

/// openraft's connection factory for one group on this node.
pub(crate) struct Factory {
    transport: Transport,
    group: u64,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Conn {
        Conn {
            client: self
                .transport
                .channel(&node.address)
                .map(|c| RaftClient::new(c).max_decoding_message_size(MAX_MESSAGE)),
            transport: self.transport.clone(),
            addr: node.address.clone(),
            group: self.group,
            from: self.from,
            target,
        }
    }
}

/// openraft's connection to one peer of one group.
pub(crate) struct Conn {
    client: Result<RaftClient<Channel>, String>,
    transport: Transport,
    /// The peer's address (its lane's too).
    addr: String,
    group: u64,
    from: NodeId,
    target: NodeId,
}

fn net(e: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(e)))
}

/// A peer's error status as openraft takes it: `UNAVAILABLE` (the peer or
/// its group is not there) is unreachable, anything else a network error
/// (openraft retries both).
fn from_status(s: Status) -> RPCError<TypeConfig> {
    if s.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::new(&s))
    } else {
        net(s.to_string())
    }
}

impl Conn {
    /// Sends `req`; the remote answers `Result<Resp, String>` (a remote
    /// Raft error is a network error here: openraft retries it).
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        if self.target == self.from {
            return Err(net(format!("node {} would send to itself", self.from)));
        }
        if cut() {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("Raft traffic cut (test switch)"),
            )));
        }
        let payload = encode(req).map_err(net)?;
        let payload = match &self.transport.inner.lanes {
            Some(lanes) => {
                let r = lanes
                    .call(
                        &self.addr,
                        Call::new(rpc, self.group, self.from, self.target, payload),
                        ttl,
                    )
                    .await;
                if matches!(r, Ok(_) | Err(LaneError::Status(_))) {
                    self.transport
                        .inner
                        .lane_sent
                        .fetch_add(1, Ordering::Relaxed);
                }
                match r {
                    Ok(p) => return Self::answer(&p, self.target),
                    Err(LaneError::NoLane) => encode(req).map_err(net)?,
                    Err(LaneError::TimedOut) => return Err(net("timed out".into())),
                    Err(LaneError::Unreachable(e)) => {
                        return Err(RPCError::Unreachable(Unreachable::new(
                            &std::io::Error::other(e),
                        )))
                    }
                    Err(LaneError::Status(s)) => return Err(from_status(s)),
                }
            }
            None => payload,
        };
        let client = self.client.as_mut().map_err(|e| net(e.clone()))?;
        let msg = RaftRequest {
            group_id: self.group,
            from: self.from,
            to: self.target,
            payload,
        };
        let fut = async {
            match rpc {
                Rpc::Append => client.append_entries(msg).await,
                Rpc::Vote => client.vote(msg).await,
                Rpc::PreVote => client.pre_vote(msg).await,
                Rpc::TransferLeader => client.transfer_leader(msg).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(net("timed out".into())),
            Ok(Err(s)) => return Err(from_status(s)),
            Ok(Ok(r)) => r.into_inner(),
        };
        Self::answer(&resp.payload, self.target)
    }

    /// Decodes a member's answer (`Result<Resp, String>`).
    fn answer<Resp: DeserializeOwned>(
        payload: &[u8],
        target: NodeId,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let answer: Result<Resp, String> = decode(payload).map_err(net)?;
        answer.map_err(|e| net(format!("node {target}: {e}")))
    }

    /// Streams a snapshot: the head, its chunks as they are read, the end.
    /// Gives up when no chunk moves for [`SNAPSHOT_IDLE`], or when the
    /// receiver has not installed it [`SNAPSHOT_INSTALL`] after the last.
    async fn stream_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
    ) -> Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> {
        if self.target == self.from {
            return Err(net(format!("node {} would send to itself", self.from)));
        }
        if cut() {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("Raft traffic cut (test switch)"),
            )));
        }
        let chunks = match snapshot.snapshot {
            SnapshotData::Chunks(c) => c,
            SnapshotData::Staged(p) => stage::read_chunks(&p)
                .await
                .map_err(|e| net(format!("reading staged snapshot {}: {e}", p.display())))?,
        };
        let head = encode(&Head {
            vote,
            meta: snapshot.meta,
        })
        .map_err(net)?;
        let (group, from, to) = (self.group, self.from, self.target);
        let failed = Arc::new(Mutex::new(None));
        // Progress: when a message last left, in ms since `start`.
        let start = Instant::now();
        let moved = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (moved2, ended2) = (moved.clone(), ended.clone());
        let msgs = futures::stream::once(async move { head })
            .chain(stage::frames(chunks, failed.clone()))
            .map(move |payload| {
                moved2.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                RaftRequest {
                    group_id: group,
                    from,
                    to,
                    payload,
                }
            })
            .chain(
                futures::stream::once(async move {
                    ended2.store(true, Ordering::Relaxed);
                    None
                })
                .filter_map(|x: Option<RaftRequest>| async move { x }),
            );
        let client = self.client.as_mut().map_err(|e| net(e.clone()))?;
        let call = client.install_snapshot(msgs);
        tokio::pin!(call);
        let resp = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let idle = start.elapsed().saturating_sub(Duration::from_millis(moved.load(Ordering::Relaxed)));
                    let limit = if ended.load(Ordering::Relaxed) { SNAPSHOT_INSTALL } else { SNAPSHOT_IDLE };
                    if idle > limit {
                        return Err(net(format!("snapshot to node {to}: nothing moved for {idle:?}")));
                    }
                }
            }
        };
        if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(net(format!("reading the snapshot to send: {e}")));
        }
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(from_status(s)),
        };
        let answer: Result<SnapshotResponse<TypeConfig>, String> =
            decode(&resp.payload).map_err(net)?;
        answer.map_err(|e| net(format!("node {to}: {e}")))
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.stream_snapshot(vote, snapshot) => r.map_err(StreamingError::from),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, option.hard_ttl())
            .await
    }
}

/// The `flaredb.v1.Raft` service: hands each message to its group.
#[derive(Clone)]
pub struct RaftServer {
    transport: Transport,
}

impl RaftServer {
    async fn dispatch(
        &self,
        rpc: Rpc,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        let payload = self.transport.dispatch(rpc, req.get_ref()).await?;
        Ok(Response::new(RaftResponse { payload }))
    }

    async fn open<T: DeserializeOwned>(
        &self,
        req: &RaftRequest,
    ) -> Result<(Registered, T), Status> {
        if cut() {
            return Err(Status::unavailable("Raft traffic cut (test switch)"));
        }
        let r = self.transport.group_or_wait(req.group_id, req.to).await?;
        let msg = decode(&req.payload).map_err(Status::invalid_argument)?;
        Ok((r, msg))
    }
}

impl Registered {
    /// A leader's `Raft.Hibernate`: sleeps if this member follows that
    /// leader in that term and holds its whole log.
    fn sleep_as_follower(&self, msg: &HibernateMsg) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let follows = m.current_term == msg.term
                && m.current_leader == Some(msg.leader)
                && matches!(
                    m.state,
                    openraft::ServerState::Follower | openraft::ServerState::Learner
                )
                && m.last_log_index.unwrap_or(0) >= msg.last_log_index;
            if !follows {
                return false;
            }
            m.membership_config
                .membership()
                .get_node(&msg.leader)
                .map(|n| n.address.clone())
        };
        let Some(addr) = addr else {
            return false;
        };
        let seen = self.sleep.activity();
        let asleep = self
            .sleep
            .fall_asleep(&self.raft, FOLLOWER, msg.term, addr, seen);
        if asleep {
            tracing::debug!(
                term = msg.term,
                leader = msg.leader,
                "group asleep (following)"
            );
        }
        asleep
    }

    /// After a message of its group was handled: a sleeping member has
    /// heard from its group, and its election timer restarts from there.
    fn heard(&self) {
        self.sleep.wake(&self.raft);
    }
}

/// Encodes a member's answer: the response, or its error as text.
fn answer<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftResponse>, Status> {
    Ok(Response::new(RaftResponse {
        payload: encode_answer(r)?,
    }))
}

impl Transport {
    /// Hands one message (from gRPC or a lane) to its group; the encoded
    /// answer.
    pub(crate) async fn dispatch(&self, rpc: Rpc, req: &RaftRequest) -> Result<Vec<u8>, Status> {
        if cut() {
            return Err(Status::unavailable("Raft traffic cut (test switch)"));
        }
        let r = self.group_or_wait(req.group_id, req.to).await?;
        fn msg<T: DeserializeOwned>(req: &RaftRequest) -> Result<T, Status> {
            decode(&req.payload).map_err(Status::invalid_argument)
        }
        let out = match rpc {
            Rpc::Append => encode_answer(r.raft.append_entries(msg(req)?).await),
            Rpc::Vote => encode_answer(r.raft.vote(msg(req)?).await),
            Rpc::PreVote => encode_answer(r.raft.pre_vote(msg(req)?).await),
            Rpc::TransferLeader => encode_answer(r.raft.handle_transfer_leader(msg(req)?).await),
        };
        r.heard();
        out
    }
}

/// A member's answer, encoded: the response, or its error as text.
fn encode_answer<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    encode(&r).map_err(Status::internal)
}

#[tonic::async_trait]
impl rdb_proto::v1::raft_server::Raft for RaftServer {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        self.dispatch(Rpc::Append, req).await
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        self.dispatch(Rpc::Vote, req).await
    }

    async fn pre_vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        self.dispatch(Rpc::PreVote, req).await
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<RaftResponse>, Status> {
        let mut msgs = req.into_inner();
        let first = msgs
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        if cut() {
            return Err(Status::unavailable("Raft traffic cut (test switch)"));
        }
        let reg = self
            .transport
            .group_or_wait(first.group_id, first.to)
            .await?;
        reg.heard();
        let raft = reg.raft.clone();
        let head: Head = decode(&first.payload).map_err(Status::invalid_argument)?;
        let path = stage::new_path(&reg.staging, first.group_id);
        let frames = msgs.map(|m| m.map(|r| r.payload).map_err(|s| s.to_string()));
        stage::write(&path, &head.meta, frames)
            .await
            .map_err(|e| Status::aborted(format!("snapshot not staged: {e}")))?;
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta: head.meta,
            snapshot: SnapshotData::Staged(path.clone()),
        };
        let r = raft.install_full_snapshot(head.vote, snapshot).await;
        // Installed (the install removed it) or refused (a stale vote):
        // not needed. A group that failed while installing stops its
        // process; the file is kept for the restart to install again.
        if r.is_ok() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        answer(r)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        self.dispatch(Rpc::TransferLeader, req).await
    }

    async fn hibernate(&self, req: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        let (r, msg) = self.open::<HibernateMsg>(req.get_ref()).await?;
        let asleep = r.sleep_as_follower(&msg);
        if let Some(addr) = r.sleep.leader_addr() {
            // Pinged from now on (a follower may never have called its
            // leader's process).
            let _ = self.transport.channel(&addr);
        }
        answer(Ok::<bool, String>(asleep))
    }

    async fn ping(&self, _: Request<RaftPing>) -> Result<Response<RaftPong>, Status> {
        if cut() {
            return Err(Status::unavailable("Raft traffic cut (test switch)"));
        }
        Ok(Response::new(RaftPong {
            boot_id: self.transport.inner.boot_id,
        }))
    }
}
