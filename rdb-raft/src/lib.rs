//! FlareDB's Raft groups: [openraft] 0.10 (an alpha, pinned exactly) behind
//! one small API.
//!
//! No other crate of the workspace sees openraft's types. A user (PD now,
//! the replicated regions next) gives a [`StateMachine`] and gets a
//! [`Group`]: it proposes commands ([`Group::write`]), asks whether it is a
//! leader whose lease holds ([`Group::lease_valid`]), changes the
//! membership, and watches the group's [`Status`].
//!
//! - [`log`]: the Raft log and vote of every group in the `raft` column
//!   family of an `rdb_storage::Engine`; one synced write batch per append.
//! - [`sm`]: the adapter from openraft's state machine interface to
//!   [`StateMachine`]; the applied log id, the membership and the last
//!   snapshot are written with each applied batch in the `meta` column family.
//! - [`net`]: the gRPC transport (service `flaredb.v1.Raft`): outgoing
//!   connections shared by every group of the process, and the server that
//!   hands incoming messages to the group they are for.
//! - `lane`: the Raft lane, the same messages (appends, votes, leadership
//!   transfers) framed over one plain TCP connection per pair of processes
//!   on the gRPC port, when TLS is off ([`Transport::split_incoming`]).
//! - The leader lease (see [`Group::lease_valid`] and
//!   `specs/005-ha-pd/spec.md`, "TSO fencing").
//!
//! Messages, log entries and snapshots are encoded with postcard.

// openraft's storage traits fix the error type (`StorageError`, over 200
// bytes); the helpers that build it return it as the traits do.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod formats;
mod hibernate;
mod lane;
pub mod log;
pub mod net;
pub mod sm;
mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use rdb_storage::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use lane::Incoming;
pub use net::{RaftServer, Transport};
pub use sm::{BatchMachine, Chunks, Entry, Membership, Reply, StateMachine};
pub use stage::CHUNK_BYTES;

/// A Raft node id. Never reused within a group.
pub type NodeId = u64;

/// What the group knows of a member: its name and where it is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// A unique, human-chosen name (`pd1`).
    pub name: String,
    /// `HOST:PORT` of its gRPC server.
    pub address: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.address)
    }
}

/// A command or an answer: bytes the [`StateMachine`] encodes and decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for every FlareDB group.
    pub TypeConfig:
        D = Bytes,
        R = Bytes,
        Node = Member,
);

pub(crate) type Raft = openraft::Raft<TypeConfig, sm::Adapter>;

/// Errors of a group.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This member is not the leader; the leader it knows, if any.
    #[error("not the Raft leader{}", match .leader { Some((id, m)) => format!(" (the leader is {id}, {m})"), None => String::new() })]
    NotLeader {
        /// The leader's id and member record.
        leader: Option<(NodeId, Member)>,
    },
    /// The group stopped (a storage error, or shut down).
    #[error("the Raft group stopped: {0}")]
    Stopped(String),
    /// A request the group refuses (an unknown member, a change in flight).
    #[error("{0}")]
    Refused(String),
    /// Storage trouble while starting.
    #[error(transparent)]
    Storage(#[from] rdb_storage::StorageError),
    /// Data on disk that does not decode.
    #[error("corrupted Raft state: {0}")]
    Corrupted(String),
    /// Bad settings.
    #[error("invalid Raft settings: {0}")]
    Config(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn from_raft<E: fmt::Display>(e: RaftError<TypeConfig, E>) -> Error {
    match e {
        RaftError::APIError(e) => Error::Refused(e.to_string()),
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

fn from_write(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        // The entry was appended and then dropped for another leader's log:
        // it may still commit through that leader.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => Error::Stopped(format!(
            "the proposal was discarded at a leader change; its outcome is unknown ({f})"
        )),
        RaftError::APIError(ClientWriteError::PreconditionFailed(p)) => {
            Error::Refused(p.to_string())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::Refused(c.to_string())
        }
        RaftError::Fatal(f) => Error::Stopped(f.to_string()),
    }
}

/// Timing of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The leader's heartbeat interval (and lease renewal period).
    pub heartbeat: Duration,
    /// A follower that hears nothing for a random time in
    /// `[election_min, election_max)` starts an election.
    pub election_min: Duration,
    /// See `election_min`. Also how long a follower refuses to vote after it
    /// last heard from a leader, and how long a restarted member stays quiet.
    pub election_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(800),
            election_max: Duration::from_millis(1600),
        }
    }
}

impl Timing {
    /// How long after the start of a successful leadership check the leader
    /// may act as the only leader: 80% of `election_min` (the 20% margin
    /// covers clocks running at different rates).
    pub fn lease(&self) -> Duration {
        self.election_min * 4 / 5
    }
}

/// Settings of one group on one member.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group (0 = PD).
    pub group_id: u64,
    /// This member's node id.
    pub node_id: NodeId,
    /// Timing.
    pub timing: Timing,
    /// A snapshot is taken every this many applied entries; the log keeps
    /// this many entries behind the snapshot too.
    pub snapshot_every: u64,
    /// Keep the leader's lease only while it is asked for: the rounds that
    /// extend it run only within two election timeouts of the last
    /// [`Group::lease_holds`] or [`Group::lease_valid`] call, so an idle
    /// leader sends nothing beyond openraft's heartbeats; the first read
    /// after a quiet spell confirms the leadership with a round of its own
    /// ([`Group::ensure_leader`]). For the regions; PD, which serves
    /// timestamps from its lease, keeps it always.
    pub lease_on_demand: bool,
    /// Let the group sleep while idle (see the `hibernate` module): a
    /// leader whose log has not moved for two election timeouts, with
    /// every member caught up and its lease not asked for, parks its
    /// heartbeats and its members their election timers, until the group
    /// is used again or the leader's process stops answering pings. For
    /// the regions (thousands per store); not for PD.
    pub hibernate: bool,
}

/// The writes that create a member of a new group `group` with the group's
/// first log entry: index 0, in term 0 under node `first`, setting
/// `members` (the `voters` among them vote; the others are learners).
/// Written with whatever creates the member (a region's split, at apply),
/// on every member alike, so that every member holds the same log: any of
/// them can be elected, and none campaigns before an election timeout
/// unless told to ([`Group::campaign`]). ([`Group::initialize`] writes
/// that entry under each member's own id instead, and campaigns at once
/// on each: then only the member with the highest id wins every vote, and
/// the first to campaign is often not that one.) None if the member
/// already has Raft state here.
pub fn seed_ops(
    engine: &Engine,
    group: u64,
    first: NodeId,
    members: BTreeMap<NodeId, Member>,
    voters: BTreeSet<NodeId>,
) -> Result<Vec<rdb_storage::WriteOp>> {
    use openraft::entry::RaftEntry;
    use openraft::type_config::alias::{EntryOf, LeaderIdOf, LogIdOf};
    use openraft::vote::RaftLeaderId;
    let membership = openraft::Membership::new(vec![voters], members)
        .map_err(|e| Error::Config(format!("group {group}'s first membership: {e}")))?;
    let leader = LeaderIdOf::<TypeConfig>::new(0, first);
    let entry = EntryOf::<TypeConfig>::new(
        LogIdOf::<TypeConfig>::new(leader.to_committed(), 0),
        openraft::EntryPayload::Membership(membership),
    );
    log::seed_ops(engine, group, &entry)
}

/// A member's view of its group, published whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// This member's id.
    pub id: NodeId,
    /// Its current term.
    pub term: u64,
    /// Whether it is the leader.
    pub is_leader: bool,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Voters and learners by id.
    pub members: BTreeMap<NodeId, Member>,
    /// The voters' ids (the rest of `members` are learners).
    pub voters: BTreeSet<NodeId>,
    /// The last log index on this member.
    pub last_log_index: u64,
    /// The last applied index on this member.
    pub applied_index: u64,
    /// For a leader: the last index known to be on each member.
    pub matched: BTreeMap<NodeId, u64>,
    /// Set when the group stopped on an error.
    pub stopped: Option<String>,
}

impl Status {
    /// The leader's member record, if known.
    pub fn leader_member(&self) -> Option<(NodeId, &Member)> {
        let id = self.leader?;
        self.members.get(&id).map(|m| (id, m))
    }
}

/// The leader lease: the instant (nanoseconds after `base`) until which
/// this member may act as the only leader of `term`.
struct Lease {
    base: Instant,
    term: AtomicU64,
    until_ns: AtomicU64,
    /// A term whose leadership this member is handing over: no lease in it
    /// any more (a transfer lets the target be elected inside the lease).
    given_up: AtomicU64,
    /// When the lease was last asked for (nanoseconds since `base`).
    wanted_ns: AtomicU64,
}

impl Lease {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn valid(&self, term: u64) -> bool {
        self.wanted_ns.store(self.now_ns(), Ordering::Relaxed);
        self.term.load(Ordering::Acquire) == term
            && self.given_up.load(Ordering::Acquire) != term
            && (self.base.elapsed().as_nanos() as u64) < self.until_ns.load(Ordering::Acquire)
    }
    fn extend(&self, term: u64, from: Instant, lease: Duration) {
        let until = (from + lease)
            .saturating_duration_since(self.base)
            .as_nanos() as u64;
        if self.term.swap(term, Ordering::AcqRel) != term {
            self.until_ns.store(until, Ordering::Release);
        } else {
            self.until_ns.fetch_max(until, Ordering::AcqRel);
        }
    }
    fn clear(&self) {
        self.until_ns.store(0, Ordering::Release);
    }
}

/// One member of one Raft group.
#[derive(Clone)]
pub struct Group {
    raft: Raft,
    config: Arc<GroupConfig>,
    status: watch::Receiver<Status>,
    lease: Arc<Lease>,
    transport: Transport,
    /// The term in which [`Group::silent_members`] first saw this member
    /// lead, and when.
    leading_since: Arc<std::sync::Mutex<(u64, Instant)>>,
    /// Hibernation.
    sleep: Arc<hibernate::Sleep>,
}

impl Group {
    /// Starts this member of the group: loads its log, vote and state from
    /// `engine`, registers it with `transport` (so that it receives its
    /// messages), and starts the lease keeper. A member that already has a
    /// vote on disk (a restart) first stays quiet for `election_max`, so it
    /// never votes inside a lease it granted before it stopped.
    ///
    /// A new group must then be [`initialize`](Group::initialize)d on its
    /// first members; a member added later needs nothing more.
    pub async fn start(
        config: GroupConfig,
        engine: Engine,
        machine: Arc<dyn StateMachine>,
        transport: Transport,
    ) -> Result<Group> {
        let batched = Arc::new(sm::InMemory {
            engine: engine.clone(),
            machine,
        });
        Self::start_batched(config, engine, batched, transport).await
    }

    /// [`start`](Group::start) for a machine that writes its own changes.
    pub async fn start_batched(
        config: GroupConfig,
        engine: Engine,
        machine: Arc<dyn BatchMachine>,
        transport: Transport,
    ) -> Result<Group> {
        let t = config.timing;
        let raft_config = openraft::Config {
            cluster_name: format!("flaredb-group-{}", config.group_id),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_min.as_millis() as u64,
            election_timeout_max: t.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.snapshot_every,
            // A member cut off from its group (paused, partitioned) asks
            // before it campaigns: it gets no pre-votes while the leader's
            // lease holds, so it never raises the term, and its return costs
            // the leader nothing (etcd's PreVote with CheckQuorum).
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(e.to_string()))?;
        let logs = log::LogStore::new(engine.clone(), config.group_id);
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut machine = sm::Adapter::open(&engine, config.group_id, machine, started.clone())?;
        machine.resume_install().await?;
        // A member alone in its group grants no lease to anyone; alone by
        // its applied membership and by every membership its log holds
        // beyond it (a membership that adds voters may be committed and not
        // applied here yet: those voters count on this member's lease).
        let voters = match machine.voters() {
            n if n > 1 => n,
            n => n.max(
                logs.most_voters_after(machine.applied_index())
                    .map_err(|e| Error::Corrupted(format!("reading the log at start: {e}")))?,
            ),
        };
        if logs.has_vote()? && voters > 1 {
            tracing::info!(
                group = config.group_id,
                quiet_ms = t.election_max.as_millis() as u64,
                "restarting Raft member: quiet for one election timeout first"
            );
            tokio::time::sleep(t.election_max).await;
        }
        let network = transport.factory(config.group_id, config.node_id);
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            logs,
            machine,
        )
        .await
        .map_err(|e| Error::Stopped(e.to_string()))?;
        started.store(true, Ordering::Release);
        let sleep = Arc::new(hibernate::Sleep::default());
        transport.register(
            config.group_id,
            config.node_id,
            raft.clone(),
            sm::staging_dir(&engine),
            sleep.clone(),
        );
        if config.hibernate {
            transport.start_pinging(t.heartbeat, t.election_max);
        }
        let (tx, status) = watch::channel(Status::default());
        let lease = Arc::new(Lease {
            base: Instant::now(),
            term: AtomicU64::new(0),
            until_ns: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            wanted_ns: AtomicU64::new(0),
        });
        tokio::spawn(publish_status(raft.clone(), sleep.clone(), tx));
        let group = Group {
            raft,
            config: Arc::new(config),
            status,
            lease,
            transport,
            leading_since: Arc::new(std::sync::Mutex::new((0, Instant::now()))),
            sleep,
        };
        tokio::spawn(keep_lease(group.clone()));
        Ok(group)
    }

    /// Campaigns at once (without a pre-vote round) instead of after an
    /// election timeout: for the member chosen to lead a group just
    /// created from seeded logs ([`seed_ops`]).
    pub async fn campaign(&self) -> Result<()> {
        self.sleep.wake(&self.raft);
        self.raft
            .trigger()
            .elect(false)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Creates the group with `members` as its voters. Every initial member
    /// may call it with the same members; a member that already has a log
    /// (it was initialized before, or joined) ignores it.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(from_raft(e)),
        }
    }

    /// Whether this member has Raft state (a log, a vote, a snapshot): it
    /// was initialized, or has heard from its group.
    pub async fn is_initialized(&self) -> Result<bool> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// For a leader: the other members that acknowledged none of its
    /// messages (heartbeats, appends) for longer than `after`, counting a
    /// member never heard from in this term as silent since the term began
    /// (as first seen by this call). Empty on a follower.
    /// While the group sleeps (no heartbeats to acknowledge), a member is
    /// silent when its process has not answered the transport's pings.
    pub fn silent_members(&self, after: Duration) -> Vec<NodeId> {
        use openraft::Instant as _;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let Some(acks) = m.heartbeat.as_ref() else {
            return Vec::new();
        };
        if self.sleep.state() == hibernate::LEADER {
            return m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != m.id)
                .filter(|(_, n)| {
                    self.transport
                        .silent_for(&n.address)
                        .is_some_and(|d| d > after)
                })
                .map(|(id, _)| *id)
                .collect();
        }
        let woke = self.sleep.awake_for();
        let term_age = {
            let mut since = self.leading_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.0 != m.current_term {
                *since = (m.current_term, Instant::now());
            }
            since.1.elapsed()
        };
        acks.iter()
            .filter(|(id, _)| **id != m.id)
            .filter(|(_, at)| match at {
                // Acknowledgements stop while the group sleeps.
                Some(at) => at.elapsed().min(woke) > after,
                None => term_age.min(woke) > after,
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The group's timing.
    pub fn timing(&self) -> Timing {
        self.config.timing
    }

    /// This member's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// `f` of the current status, read in place (no copy of it).
    pub fn with_status<R>(&self, f: impl FnOnce(&Status) -> R) -> R {
        f(&self.status.borrow())
    }

    /// Whether this member is the leader, as far as it knows (cheap).
    pub fn is_leader(&self) -> bool {
        self.status.borrow().is_leader
    }

    /// The leader this member knows, with its record (cheap).
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let st = self.status.borrow();
        st.leader_member().map(|(id, m)| (id, m.clone()))
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Proposes `command`; answers the state machine's answer once the
    /// command is committed and applied here. Only the leader accepts
    /// commands ([`Error::NotLeader`] otherwise). An error other than
    /// `NotLeader` leaves the outcome unknown: the command may still commit.
    pub async fn write(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        if self.touch().await {
            // A leader that slept sent no heartbeats: its quorum lease has
            // run out, and openraft refuses a write until acknowledgements
            // renew it (`ForwardReason::LeaseExpired`, naming no leader). A
            // round of heartbeats a quorum answers renews it first.
            self.ensure_leader().await?;
        }
        self.raft
            .client_write(Bytes(command))
            .await
            .map(|r| r.data.0)
            .map_err(from_write)
    }

    /// Confirms this member is the leader with a round of heartbeats a
    /// quorum answers, and waits until everything committed before the
    /// round is applied here (ReadIndex). On success the lease is extended
    /// from the start of the round.
    pub async fn ensure_leader(&self) -> Result<()> {
        self.touch().await;
        let term = self.raft.metrics().borrow_watched().current_term;
        let started = Instant::now();
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) if self.raft.metrics().borrow_watched().current_term == term => {
                self.lease.extend(term, started, self.config.timing.lease());
                Ok(())
            }
            Ok(_) => Err(Error::Refused(
                "the term changed during the leadership check; retry".into(),
            )),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(Error::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            }),
            Err(e) => Err(from_raft(e)),
        }
    }

    /// Whether this member is the leader of `term` and its lease holds: no
    /// other member can have been elected since the lease started. Cheap
    /// (two atomic loads and a clock read): meant for every request.
    pub fn lease_valid(&self, term: u64) -> bool {
        self.wake_for_lease();
        self.lease.valid(term)
    }

    /// A sleeping leader asked for its lease wakes (the lease keeper then
    /// renews it); one atomic load otherwise.
    fn wake_for_lease(&self) {
        if self.sleep.state() == hibernate::LEADER {
            self.sleep.touch(&self.raft);
        }
    }

    /// Whether this member leads its current term and its lease holds (see
    /// [`lease_valid`](Group::lease_valid)); cheap, for every read.
    pub fn lease_holds(&self) -> bool {
        let (is_leader, term) = {
            let st = self.status.borrow();
            (st.is_leader, st.term)
        };
        self.wake_for_lease();
        is_leader && self.lease.valid(term)
    }

    /// The current term, as this member knows it (cheap).
    pub fn term(&self) -> u64 {
        self.status.borrow().term
    }

    /// Hands leadership to member `to`: this member gives up its lease for
    /// the current term at once (the target is elected without waiting out
    /// the followers' lease, so a lease of this term could overlap the new
    /// leader's), then asks `to` to campaign. Returns once the request is
    /// sent; watch the status for the outcome.
    ///
    /// If the target never takes over (it was unreachable), this member
    /// stays leader of the term without a lease until the next election:
    /// callers that serve from the lease (PD's TSO) must not transfer
    /// without a way out of that (not offered to PD yet; see
    /// `specs/006-replication/spec.md`, step 1).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        let st = self.status();
        if !st.is_leader {
            return Err(Error::NotLeader {
                leader: st.leader_member().map(|(id, m)| (id, m.clone())),
            });
        }
        if !st.voters.contains(&to) || to == st.id {
            return Err(Error::Refused(format!("{to} is not another voter")));
        }
        self.touch().await;
        let term = self.raft.metrics().borrow_watched().current_term;
        self.lease.given_up.store(term, Ordering::Release);
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Adds `member` as a learner with a new id `id` (the caller allocates
    /// ids through its state machine, never reusing one). Does not wait for
    /// the learner to catch up.
    pub async fn add_learner(&self, id: NodeId, member: Member) -> Result<()> {
        let st = self.status();
        if let Some((other, _)) = st
            .members
            .iter()
            .find(|(i, m)| **i != id && (m.name == member.name || m.address == member.address))
        {
            return Err(Error::Refused(format!(
                "member {other} already has the name {:?} or the address {}",
                member.name, member.address
            )));
        }
        self.touch().await;
        self.raft
            .add_learner(id, member, false)
            .await
            .map(|_| ())
            .map_err(from_write)
    }

    /// Makes the learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<()> {
        self.touch().await;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map(|_| ())
            .map_err(from_write)
    }

    /// Removes member `id` (voter or learner) from the group. Removing this
    /// member while it leads gives up its lease first: once the change is
    /// committed openraft hands the leadership to another voter at once,
    /// inside the followers' lease (as [`transfer_leader`](Group::transfer_leader) does).
    pub async fn remove(&self, id: NodeId) -> Result<()> {
        let st = self.status();
        if !st.members.contains_key(&id) {
            return Err(Error::Refused(format!("{id} is not a member")));
        }
        self.touch().await;
        if id == st.id && st.is_leader {
            let term = self.raft.metrics().borrow_watched().current_term;
            self.lease.given_up.store(term, Ordering::Release);
        }
        if st.voters.contains(&id) {
            if st.voters.len() == 1 {
                return Err(Error::Refused("cannot remove the last voter".into()));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(from_write)?;
        }
        if self.status().members.contains_key(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(from_write)?;
        }
        Ok(())
    }

    /// Takes a snapshot of the state applied here and drops the log up to
    /// it (waits at most `timeout`): a member added afterwards catches up
    /// from a snapshot instead of replaying the log from the group's first
    /// entry (which holds only what happened since the group was created:
    /// a region made by a split started with its parent's data).
    pub async fn compact_log(&self, timeout: Duration) -> Result<()> {
        let applied = self.raft.metrics().borrow_watched().last_applied;
        let Some(applied) = applied else {
            return Ok(());
        };
        let upto = applied.index();
        self.touch().await;
        let stopped = |e: &dyn fmt::Display| Error::Stopped(e.to_string());
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| stopped(&e))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.as_ref().is_some_and(|s| s.index() >= upto),
                "snapshot of the applied state",
            )
            .await
            .map_err(|e| Error::Refused(format!("log compaction: {e}")))?;
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|e| stopped(&e))?;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.purged.as_ref().is_some_and(|p| p.index() >= upto),
                "log purged up to the snapshot",
            )
            .await
            .map_err(|e| Error::Refused(format!("log compaction: {e}")))?;
        Ok(())
    }

    /// Wakes a sleeping leader before it is asked something (its
    /// heartbeats resume at once) and keeps it from falling asleep in the
    /// middle.
    /// Whether it woke a sleeping leader.
    async fn touch(&self) -> bool {
        if self.sleep.touch(&self.raft) == hibernate::LEADER {
            tracing::debug!(group = self.config.group_id, "waking");
            let _ = self.raft.trigger().heartbeat().await;
            return true;
        }
        false
    }

    /// Whether this member sleeps (see [`GroupConfig::hibernate`]).
    pub fn is_asleep(&self) -> bool {
        self.sleep.state() != hibernate::AWAKE
    }

    /// While this member sleeps as its group's leader: a value that stays
    /// the same for as long as nothing can change in what it would report
    /// (its status, its log, its members' liveness as the transport's
    /// pings see it); `None` while awake.
    pub fn quiet_leader(&self) -> Option<(u64, u64)> {
        let nap = self.sleep.leader_nap()?;
        Some((nap, self.transport.liveness_changes()))
    }

    /// The group's id.
    pub fn group_id(&self) -> u64 {
        self.config.group_id
    }

    /// Stops the member (unregisters it from the transport first).
    pub async fn shutdown(&self) {
        self.transport
            .unregister(self.config.group_id, self.config.node_id);
        self.lease.clear();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "stopping the Raft group");
        }
    }
}

async fn publish_status(raft: Raft, sleep: Arc<hibernate::Sleep>, tx: watch::Sender<Status>) {
    let mut metrics = raft.metrics();
    loop {
        let st = {
            let m = metrics.borrow_watched();
            let mem = m.membership_config.membership();
            Status {
                id: m.id,
                term: m.current_term,
                is_leader: m.state == ServerState::Leader,
                leader: m.current_leader,
                members: mem.nodes().map(|(id, n)| (*id, n.clone())).collect(),
                voters: mem.voter_ids().collect(),
                last_log_index: m.last_log_index.unwrap_or(0),
                applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
                matched: m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, l)| (*id, l.as_ref().map_or(0, |l| l.index())))
                            .collect()
                    })
                    .unwrap_or_default(),
                stopped: m.running_state.as_ref().err().map(|e| e.to_string()),
            }
        };
        // A sleeping member whose term or role changed wakes: a leader
        // deposed, or a follower that voted or heard of a new leader (its
        // ticker must run in the new term).
        match sleep.state() {
            hibernate::LEADER if !st.is_leader || st.term != sleep.term() => {
                sleep.wake(&raft);
            }
            hibernate::FOLLOWER if st.is_leader || st.term != sleep.term() => {
                sleep.wake(&raft);
            }
            _ => {}
        }
        tx.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// While this member leads, confirms its leadership every heartbeat
/// interval and extends the lease from the start of each confirmed round;
/// with [`GroupConfig::hibernate`], puts the group to sleep once it is
/// idle, and waits while it sleeps.
async fn keep_lease(g: Group) {
    let (raft, lease, t) = (&g.raft, &g.lease, g.config.timing);
    let idle_after = (2 * t.election_max).as_nanos() as u64;
    let metrics = raft.metrics();
    let mut tick = tokio::time::interval(t.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last log index seen, and since when.
    let mut quiet = (0u64, Instant::now());
    loop {
        if g.sleep.state() != hibernate::AWAKE {
            let woken = g.sleep.woken.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let mut status = g.status.clone();
            // Only a change from now on (a clone starts from what the
            // original last marked seen).
            status.borrow_and_update();
            if g.sleep.state() != hibernate::AWAKE {
                // No timer while asleep: woken, or the status moved (or
                // the group stopped).
                tokio::select! {
                    _ = woken => {}
                    r = status.changed() => if r.is_err() { return },
                }
            }
            if g.status.has_changed().is_err() {
                return;
            }
            quiet = (0, Instant::now());
            continue;
        }
        tick.tick().await;
        let (is_leader, term, stopped) = {
            let m = metrics.borrow_watched();
            (
                m.state == ServerState::Leader,
                m.current_term,
                m.running_state.is_err(),
            )
        };
        if g.status.has_changed().is_err() || stopped {
            lease.clear();
            return;
        }
        if !is_leader {
            lease.clear();
            continue;
        }
        let lease_idle = lease
            .now_ns()
            .saturating_sub(lease.wanted_ns.load(Ordering::Relaxed))
            > idle_after;
        if g.config.hibernate && lease_idle {
            let st = g.status();
            if st.last_log_index != quiet.0 {
                quiet = (st.last_log_index, Instant::now());
            } else if quiet.1.elapsed() > 2 * t.election_max {
                hibernate_group(&g, &st).await;
                continue;
            }
        }
        if g.config.lease_on_demand && lease_idle {
            // Nobody read from this leader lately: let the lease lapse.
            continue;
        }
        let started = Instant::now();
        match tokio::time::timeout(
            t.election_min,
            raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(_)) if metrics.borrow_watched().current_term == term => {
                lease.extend(term, started, t.lease())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "leadership check failed"),
            Err(_) => tracing::debug!("leadership check timed out"),
        }
    }
}

/// Puts an idle group led here to sleep if every member holds the whole
/// log: the leader parks its heartbeats first (so none wakes a member that
/// already agreed), then asks each member; if one does not agree (or
/// cannot be reached), the leader wakes again and its heartbeats wake the
/// others.
async fn hibernate_group(g: &Group, st: &Status) {
    let last = st.last_log_index;
    let caught_up = st.applied_index == last
        && st
            .members
            .keys()
            .filter(|id| **id != st.id)
            .all(|id| st.matched.get(id).copied() == Some(last));
    if !caught_up {
        return;
    }
    let seen = g.sleep.activity();
    if !g
        .sleep
        .fall_asleep(&g.raft, hibernate::LEADER, st.term, String::new(), seen)
    {
        return;
    }
    let msg = hibernate::HibernateMsg {
        term: st.term,
        leader: st.id,
        last_log_index: last,
    };
    let asks = st
        .members
        .iter()
        .filter(|(id, _)| **id != st.id)
        .map(|(id, m)| {
            g.transport.hibernate(
                g.config.group_id,
                st.id,
                *id,
                &m.address,
                &msg,
                g.config.timing.heartbeat,
            )
        });
    // Asleep, it keeps no lease: the members' election timers are parked
    // and nothing measures one.
    g.lease.clear();
    let agreed = futures::future::join_all(asks).await;
    if agreed.iter().all(|ok| *ok) {
        tracing::debug!(group = g.config.group_id, term = st.term, "group asleep");
    } else if g.sleep.wake(&g.raft) == hibernate::LEADER {
        let _ = g.raft.trigger().heartbeat().await;
    }
}

/// The writes that delete a stopped member's Raft state from its engine
/// (log, vote, applied mark, membership), for a member removed from its
/// group: its id is never used again, so nothing of it is kept. The caller
/// writes them with the deletion of its own state, atomically.
pub fn delete_member_ops(group_id: u64) -> Vec<rdb_storage::WriteOp> {
    let mut ops = log::delete_group_ops(group_id);
    ops.extend(sm::delete_group_ops(group_id));
    ops
}

/// Encodes a value with rdb-raft's encoding.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v).map_err(|e| format!("encoding: {e}"))
}

/// Decodes a value encoded by [`encode`].
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, String> {
    postcard::from_bytes(raw).map_err(|e| format!("decoding: {e}"))
}
