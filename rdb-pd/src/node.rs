//! One PD member: its place in the Raft group (id, initial members, join),
//! the work it does when it becomes leader, membership changes, and the
//! front service that forwards calls from a follower to the leader.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{GetMembersRequest, GetMembersResponse, PdMember};
use rdb_raft::{Group, Member, NodeId, Status};
use rdb_storage::{Engine, WriteOp};
use tokio::sync::Mutex;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::Channel;

use crate::cluster::{propose, Cluster};
use crate::error::{PdError, Result};
use crate::meta::{Command, Meta};
use crate::tso::Tso;

/// The PD group's id among the Raft groups of a process.
pub const PD_GROUP: u64 = 0;
/// Where a member keeps its own Raft node id (not replicated).
const MEMBER_ID_KEY: &[u8] = b"local/member_id";
/// Set on a call a follower forwarded, so that it is never forwarded twice.
const FORWARDED: &str = "x-flaredb-pd-forwarded";
/// A learner within this many entries of the leader's log is promoted.
const PROMOTE_LAG: u64 = 100;

/// How a member finds its place in the group at its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A group of this member alone.
    Single,
    /// One of the initial members of a new group (`initial-cluster-state = new`).
    New(BTreeMap<NodeId, Member>),
    /// A member added to a running group with `rdb-cli pd add-member`
    /// (`initial-cluster-state = existing`): the addresses to ask for its id.
    Join(Vec<String>),
}

/// Parses `pd1=ADDR1,pd2=ADDR2,...` into members with ids 1..n, in name
/// order (every member computes the same ids).
pub fn parse_initial_cluster(s: &str) -> std::result::Result<BTreeMap<NodeId, Member>, String> {
    let mut by_name = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not NAME=HOST:PORT"))?;
        let (name, addr) = (name.trim(), addr.trim());
        if name.is_empty() || addr.is_empty() {
            return Err(format!("{part:?} is not NAME=HOST:PORT"));
        }
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(format!("{addr:?} (member {name}) is not HOST:PORT"));
        }
        if by_name.insert(name.to_string(), addr.to_string()).is_some() {
            return Err(format!("member name {name:?} appears twice"));
        }
    }
    let mut addrs: Vec<&String> = by_name.values().collect();
    addrs.sort();
    addrs.dedup();
    if addrs.len() != by_name.len() {
        return Err("two members share an address".into());
    }
    Ok(by_name
        .into_iter()
        .enumerate()
        .map(|(i, (name, address))| (i as NodeId + 1, Member { name, address }))
        .collect())
}

/// This member's node id, and the members to initialize the group with on
/// its first start. The id is kept in the data directory.
pub async fn resolve_member(
    engine: &Engine,
    name: &str,
    placement: Placement,
    tls: Option<&rdb_proto::tls::ClientTls>,
) -> Result<(NodeId, Option<BTreeMap<NodeId, Member>>)> {
    if let Some(raw) = engine.get_meta(MEMBER_ID_KEY)? {
        return Ok((rdb_storage::codec::decode_u64(&raw, "member id")?, None));
    }
    let (id, init) = match placement {
        Placement::Single => {
            // The address is filled in by the caller (the bound address).
            (1, Some(BTreeMap::new()))
        }
        Placement::New(members) => {
            let id = members
                .iter()
                .find(|(_, m)| m.name == name)
                .map(|(id, _)| *id)
                .ok_or_else(|| {
                    PdError::InvalidArgument(format!(
                        "--name {name} is not one of the --initial-cluster members"
                    ))
                })?;
            (id, Some(members))
        }
        Placement::Join(addrs) => (find_my_id(name, &addrs, tls).await?, None),
    };
    engine
        .write(vec![WriteOp::PutMeta {
            key: MEMBER_ID_KEY.to_vec(),
            value: id.to_be_bytes().to_vec(),
        }])
        .await?;
    Ok((id, init))
}

/// Asks the running members for the id `rdb-cli pd add-member` gave `name`.
async fn find_my_id(
    name: &str,
    addrs: &[String],
    tls: Option<&rdb_proto::tls::ClientTls>,
) -> Result<NodeId> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for a in addrs {
            let Ok(ep) = rdb_proto::tls::endpoint(a, tls) else {
                continue;
            };
            let ch = ep.connect_timeout(Duration::from_secs(1)).connect_lazy();
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                PdClient::new(ch).get_members(GetMembersRequest {}),
            )
            .await;
            if let Ok(Ok(r)) = answer {
                let r = r.into_inner();
                if let Some(m) = r.members.iter().find(|m| m.name == name) {
                    tracing::info!(name, id = m.id, "joining the PD group");
                    return Ok(m.id);
                }
                return Err(PdError::FailedPrecondition(format!(
                    "the PD group at {a} has no member named {name}: add it first with \
                     `rdb-cli pd add-member {name} ADDR`"
                )));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(PdError::Unavailable(format!(
                "no PD member answered at {} within 60 s",
                addrs.join(",")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One PD member.
pub struct PdNode {
    /// Its Raft group.
    pub group: Group,
    /// The replicated state.
    pub meta: Arc<Meta>,
    /// The metadata service logic.
    pub cluster: Arc<Cluster>,
    /// The timestamp oracle.
    pub tso: Arc<Tso>,
    /// The term this member leads and is ready to serve in (0: none).
    ready_term: AtomicU64,
    /// Set when the daemon shuts down (the group's stop is expected then).
    stopping: std::sync::atomic::AtomicBool,
    /// Serializes membership changes.
    members_lock: Mutex<()>,
    /// The channel to the leader calls are forwarded to.
    forward: std::sync::Mutex<Option<(String, Channel)>>,
    tls: Option<rdb_proto::tls::ClientTls>,
}

impl PdNode {
    /// A member over a started group.
    pub fn new(
        group: Group,
        meta: Arc<Meta>,
        store_down_after: Duration,
        tls: Option<rdb_proto::tls::ClientTls>,
    ) -> Arc<PdNode> {
        Arc::new(PdNode {
            cluster: Arc::new(Cluster::new(meta.clone(), group.clone(), store_down_after)),
            tso: Arc::new(Tso::new(group.clone(), meta.clone())),
            group,
            meta,
            ready_term: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            members_lock: Mutex::new(()),
            forward: std::sync::Mutex::new(None),
            tls,
        })
    }

    /// Fails unless this member is the leader, fenced for its term, and
    /// holds its lease.
    pub fn check_serving(&self) -> Result<()> {
        let term = self.ready_term.load(Ordering::Acquire);
        if term != 0 && self.group.lease_valid(term) {
            return Ok(());
        }
        Err(PdError::Unavailable(if self.group.is_leader() {
            "the PD leader is not ready yet (just elected, or its lease lapsed); retry".into()
        } else {
            "this PD member is not the leader; retry".into()
        }))
    }

    /// Stops the member's Raft group (daemon shutdown).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.ready_term.store(0, Ordering::Release);
        self.group.shutdown().await;
    }

    /// Whether this member can announce itself ready: it knows the cluster
    /// id and serves (leader) or knows whom to forward to (follower).
    pub fn announceable(&self) -> bool {
        self.meta.read().cluster_id != 0
            && if self.group.is_leader() {
                self.check_serving().is_ok()
            } else {
                self.group.leader().is_some()
            }
    }

    /// Runs while the member runs: gets ready when it becomes leader, and
    /// while it leads, promotes learners that have caught up.
    pub async fn lead(self: Arc<Self>) {
        let mut rx = self.group.watch();
        loop {
            let (is_leader, term, stopped) = {
                let st = rx.borrow_and_update();
                (st.is_leader, st.term, st.stopped.clone())
            };
            if let Some(reason) = stopped {
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                // A member whose Raft group died (a storage error the engine
                // did not already stop the process for) must not linger,
                // answering with a stale view: stop, like a storage failure.
                tracing::error!(%reason, "the PD Raft group stopped; exiting");
                std::process::exit(rdb_storage::fatal::STORAGE_FAILURE_EXIT_CODE);
            }
            if !is_leader {
                self.ready_term.store(0, Ordering::Release);
            } else if self.ready_term.load(Ordering::Acquire) != term {
                match self.get_ready(term).await {
                    Ok(()) => {
                        self.ready_term.store(term, Ordering::Release);
                        tracing::info!(term, "PD leader ready");
                    }
                    Err(e) => {
                        tracing::warn!(term, error = %e, "PD leader not ready yet");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            } else {
                self.promote_learners().await;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn get_ready(&self, term: u64) -> Result<()> {
        // Everything committed before this term is applied here after this.
        self.group
            .ensure_leader()
            .await
            .map_err(|e| PdError::Unavailable(format!("confirming leadership: {e}")))?;
        if self.meta.read().cluster_id == 0 {
            // Wall-clock seconds in the high bits, randomness in the low bits,
            // so two clusters created by mistake do not share an id.
            let id = (crate::tso::now_ms() / 1000) << 32 | u64::from(rand::random::<u32>());
            propose(&self.group, &Command::InitCluster { cluster_id: id }).await?;
            tracing::info!(cluster_id = self.meta.read().cluster_id, "new cluster");
        }
        self.cluster.on_leader().await;
        self.tso.activate(term).await
    }

    async fn promote_learners(&self) {
        let st = self.group.status();
        for id in st.members.keys().filter(|id| !st.voters.contains(id)) {
            let matched = st.matched.get(id).copied().unwrap_or(0);
            if matched > 0 && matched + PROMOTE_LAG >= st.last_log_index {
                let _g = self.members_lock.lock().await;
                match self.group.promote(*id).await {
                    Ok(()) => tracing::info!(id, "PD learner promoted to voter"),
                    Err(e) => tracing::warn!(id, error = %e, "promoting a PD learner"),
                }
            }
        }
    }

    /// The members as this member sees them.
    pub fn members(&self) -> GetMembersResponse {
        let st = self.group.status();
        GetMembersResponse {
            members: members_of(&st),
            leader_id: st.leader.unwrap_or(0),
            leader_address: st
                .leader_member()
                .map(|(_, m)| m.address.clone())
                .unwrap_or_default(),
            answered_by: st.id,
            cluster_id: self.meta.read().cluster_id,
            term: st.term,
            last_log_index: st.last_log_index,
            applied_index: st.applied_index,
        }
    }

    /// Adds a member as a learner; answers it with its id.
    pub async fn add_member(&self, name: String, address: String) -> Result<(PdMember, String)> {
        self.check_serving()?;
        if name.is_empty() || name.contains([',', '=']) {
            return Err(PdError::InvalidArgument(format!(
                "bad member name {name:?}: non-empty, without ',' or '='"
            )));
        }
        parse_initial_cluster(&format!("{name}={address}")).map_err(PdError::InvalidArgument)?;
        let _g = self.members_lock.lock().await;
        let st = self.group.status();
        if let Some(m) = st
            .members
            .values()
            .find(|m| m.name == name || m.address == address)
        {
            return Err(PdError::FailedPrecondition(format!(
                "member {m} already has that name or address"
            )));
        }
        if let Some((id, m)) = st.members.iter().find(|(id, _)| !st.voters.contains(id)) {
            return Err(PdError::FailedPrecondition(format!(
                "one member change at a time: {m} (id {id}) is still a learner; start it, or \
                 remove it"
            )));
        }
        let floor = st.members.keys().max().copied().unwrap_or(0);
        let id = propose(&self.group, &Command::AllocMemberId { floor }).await?;
        let member = Member { name, address };
        self.group
            .add_learner(id, member.clone())
            .await
            .map_err(|e| PdError::FailedPrecondition(format!("adding the member: {e}")))?;
        tracing::info!(id, member = %member, "PD member added as a learner");
        let st = self.group.status();
        let initial = st
            .members
            .values()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok((
            PdMember {
                id,
                name: member.name,
                address: member.address,
                is_learner: true,
                is_leader: false,
                matched_index: 0,
            },
            initial,
        ))
    }

    /// Removes a member by name.
    pub async fn remove_member(&self, name: &str) -> Result<Vec<PdMember>> {
        self.check_serving()?;
        let _g = self.members_lock.lock().await;
        let st = self.group.status();
        let id = st
            .members
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, _)| *id)
            .ok_or_else(|| PdError::NotFound(format!("no PD member is named {name}")))?;
        if id == st.id {
            // openraft hands a removed leader's leadership straight to another
            // voter, inside the followers' lease: the timestamps this member
            // may still hand out under its lease could then overlap the new
            // leader's. Stopping the member first goes through an ordinary
            // election instead.
            return Err(PdError::FailedPrecondition(format!(
                "{name} is the PD leader: stop it (the other members elect a new leader within \
                 seconds), then remove it"
            )));
        }
        self.group
            .remove(id)
            .await
            .map_err(|e| PdError::FailedPrecondition(format!("removing member {name}: {e}")))?;
        tracing::info!(id, name, "PD member removed");
        Ok(members_of(&self.group.status()))
    }

    fn forward_channel(&self, address: &str) -> Option<Channel> {
        let mut f = self.forward.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = f.as_ref() {
            if a == address {
                return Some(ch.clone());
            }
        }
        let ch = rdb_proto::tls::endpoint(address, self.tls.as_ref())
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        *f = Some((address.to_string(), ch.clone()));
        Some(ch)
    }
}

fn members_of(st: &Status) -> Vec<PdMember> {
    st.members
        .iter()
        .map(|(id, m)| PdMember {
            id: *id,
            name: m.name.clone(),
            address: m.address.clone(),
            is_learner: !st.voters.contains(id),
            is_leader: st.leader == Some(*id),
            matched_index: st.matched.get(id).copied().unwrap_or(0),
        })
        .collect()
}

/// The `flaredb.v1.Pd` service as served: the leader answers; a follower
/// forwards the call (streams included) to the leader it knows.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    node: Arc<PdNode>,
}

impl<S> Front<S> {
    /// Wraps the PD service `inner` of `node`.
    pub fn new(inner: S, node: Arc<PdNode>) -> Front<S> {
        Front { inner, node }
    }
}

impl<S: NamedService> NamedService for Front<S> {
    const NAME: &'static str = S::NAME;
}

fn unavailable(msg: String) -> http::Response<Body> {
    tonic::Status::unavailable(msg).into_http()
}

impl<S> Service<http::Request<Body>> for Front<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, std::result::Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let local = req.uri().path().ends_with("/GetMembers") || self.node.group.is_leader();
        if local {
            return Box::pin(self.inner.call(req));
        }
        if req.headers().contains_key(FORWARDED) {
            return Box::pin(async {
                Ok(unavailable(
                    "PD leadership is changing (a forwarded call reached a follower); retry".into(),
                ))
            });
        }
        let Some((id, leader)) = self.node.group.leader() else {
            return Box::pin(async {
                Ok(unavailable(
                    "no PD leader is known yet (election in progress); retry".into(),
                ))
            });
        };
        let Some(mut ch) = self.node.forward_channel(&leader.address) else {
            return Box::pin(async move {
                Ok(unavailable(format!(
                    "bad PD leader address {}",
                    leader.address
                )))
            });
        };
        req.headers_mut()
            .insert(FORWARDED, http::HeaderValue::from_static("1"));
        Box::pin(async move {
            if let Err(e) = futures::future::poll_fn(|cx| ch.poll_ready(cx)).await {
                return Ok(unavailable(format!(
                    "cannot reach the PD leader {id} at {}: {e}",
                    leader.address
                )));
            }
            match ch.call(req).await {
                Ok(resp) => Ok(resp),
                Err(e) => Ok(unavailable(format!(
                    "forwarding to the PD leader {id} at {}: {e}",
                    leader.address
                ))),
            }
        })
    }
}

/// The members to initialize a single-member group with: this member, at
/// the address it serves on.
pub fn single(name: &str, addr: SocketAddr) -> BTreeMap<NodeId, Member> {
    BTreeMap::from([(
        1,
        Member {
            name: name.to_string(),
            address: addr.to_string(),
        },
    )])
}

/// Unit tests: a single-member PD group on `dir`, leader and ready to
/// propose.
#[cfg(test)]
pub(crate) async fn single_member_for_tests(dir: &std::path::Path) -> (Arc<Meta>, Group) {
    // A group shut down just before may still be dropping its last handles
    // on the engine: retry the open briefly.
    let mut tries = 0;
    let engine = loop {
        match Engine::open(dir, Default::default()) {
            Ok(e) => break e,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("opening the engine: {e}"),
        }
    };
    let meta = Arc::new(Meta::load(&engine).unwrap());
    let group = Group::start(
        rdb_raft::GroupConfig {
            group_id: PD_GROUP,
            node_id: 1,
            timing: rdb_raft::Timing::default(),
            snapshot_every: 1000,
            lease_on_demand: false,
            hibernate: false,
        },
        engine,
        meta.clone(),
        rdb_raft::Transport::new(None),
    )
    .await
    .unwrap();
    group
        .initialize(single("pd1", "127.0.0.1:1".parse().unwrap()))
        .await
        .unwrap();
    // Leader, with a lease for the term its status shows (the status is
    // published a moment after openraft's metrics).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while group.ensure_leader().await.is_err() || !group.lease_valid(group.status().term) {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (meta, group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use rdb_proto::v1::{Region, Store};

    #[test]
    fn initial_clusters_give_every_member_the_same_ids_and_bad_ones_are_refused() {
        let a = parse_initial_cluster("pd2=h:2,pd1=h:1, pd3=h:3").unwrap();
        let b = parse_initial_cluster("pd3=h:3,pd1=h:1,pd2=h:2").unwrap();
        assert_eq!(a, b);
        assert_eq!(a[&1].name, "pd1");
        assert_eq!(a[&3].address, "h:3");
        for bad in [
            "pd1",
            "pd1=h",
            "pd1=h:x",
            "=h:1",
            "pd1=h:1,pd1=h:2",
            "pd1=h:1,pd2=h:1",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad}");
        }
    }

    /// A data directory of a PD from before PD was replicated (metadata in
    /// the meta column family, no Raft state) opens as a group of one with
    /// its metadata, and its timestamps stay above its saved window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_directory_from_before_replication_keeps_its_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(tmp.path(), Default::default()).unwrap();
            let put = |k: &[u8], v: Vec<u8>| WriteOp::PutMeta {
                key: k.to_vec(),
                value: v,
            };
            let mut store_key = b"store/".to_vec();
            store_key.extend_from_slice(&1u64.to_be_bytes());
            let mut region_key = b"region/".to_vec();
            region_key.extend_from_slice(&2u64.to_be_bytes());
            let store = Store {
                id: 1,
                address: "127.0.0.1:9".into(),
                ..Default::default()
            };
            let region = Region {
                id: 2,
                store_id: 1,
                ..Default::default()
            };
            engine
                .write(vec![
                    put(b"cluster_id", 42u64.to_be_bytes().to_vec()),
                    put(b"bootstrapped", b"1".to_vec()),
                    put(&store_key, store.encode_to_vec()),
                    put(&region_key, region.encode_to_vec()),
                    put(b"id_alloc_end", 1000u64.to_be_bytes().to_vec()),
                    put(b"tso_window", 4_000_000_000_000u64.to_be_bytes().to_vec()),
                ])
                .await
                .unwrap();
        }
        let (meta, group) = single_member_for_tests(tmp.path()).await;
        {
            let st = meta.read();
            assert_eq!(st.cluster_id, 42);
            assert!(st.bootstrapped);
            assert_eq!(st.stores[&1].address, "127.0.0.1:9");
            assert!(st.region_for_key(b"any").is_some_and(|r| r.id == 2));
            assert_eq!(st.id_end, 1000);
        }
        let tso = crate::tso::Tso::new(group.clone(), meta.clone());
        tso.activate(group.status().term).await.unwrap();
        let ts = tso.allocate(1).await.unwrap();
        assert!(ts >> rdb_proto::limits::TSO_LOGICAL_BITS > 4_000_000_000_000);
        let cluster = Cluster::new(meta, group, Duration::from_secs(10));
        cluster.on_leader().await;
        assert!(
            cluster.alloc_id().await.unwrap() > 1000,
            "ids stay above the old window"
        );
    }
}
