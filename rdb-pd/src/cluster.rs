//! Cluster metadata: the cluster id, stores, regions and the id allocator.
//!
//! The state lives in the replicated [`Meta`] (every PD member has it);
//! every change is a [`Command`] proposed through Raft and applied on every
//! member. What only the leader needs (when each store last sent a
//! heartbeat, the id window it hands ids from) is in the leader's memory and
//! is reset by [`Cluster::on_leader`] when a member becomes leader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::meta::{Command, Meta, MetaState};
use crate::tso::now_ms;

use prost::Message;
use rdb_proto::v1::{Region, RegionRoute, RegionStat, Store, StoreState};
use tokio::sync::Mutex;

use crate::error::{PdError, Result};

/// Ids are reserved in steps of this many, persisted before being handed out.
const ID_STEP: u64 = 1000;

struct IdAlloc {
    next: u64,
    end: u64,
}

/// The leader's memory: heartbeat times, since when it leads, and the
/// leader of each region (store id, Raft term) as the stores report it.
struct Liveness {
    heartbeats: HashMap<u64, Instant>,
    since: Instant,
    /// By region: what its leader last reported.
    leaders: HashMap<u64, Reported>,
    /// The stores that sent a heartbeat with all their regions since
    /// this member became the leader.
    reported_all: std::collections::HashSet<u64>,
    /// Replicas their stores report missing (see [`Cluster::note_missing`]),
    /// by (region, peer): the reporting store, when it first and last
    /// reported it in one run of reports.
    missing: HashMap<(u64, u64), Missing>,
}

/// A replica its store reports missing.
#[derive(Debug, Clone, Copy)]
struct Missing {
    store: u64,
    first: Instant,
    last: Instant,
}

/// A replica reported missing this long, in heartbeats no further apart
/// than [`MISSING_GAP`], is replaced: long past a split that its store is
/// still applying (the replica is created when it does).
pub const MISSING_AFTER: Duration = Duration::from_secs(10);

/// Reports of a missing replica further apart than this start a new run.
const MISSING_GAP: Duration = Duration::from_secs(5);

/// What a region's leader last reported of it.
#[derive(Debug, Clone, Default)]
struct Reported {
    /// The leader's store.
    store: u64,
    /// Its Raft term.
    term: u64,
    /// Its peer id (0: not known). Raft leaderships are ordered by term,
    /// then by the leader's peer id: openraft's leader ids name their
    /// node, and two replicas can both win term 1 of a new region (each a
    /// quorum of its own, the later one superseding the earlier; their
    /// log ids differ, so nothing is lost), and the earlier one's report
    /// may come last.
    peer: u64,
    /// The peers it reports down.
    down: Vec<u64>,
    /// The region's approximate size in bytes and keys (0: not known).
    size: u64,
    keys: u64,
}

/// The cluster metadata, served by the PD leader.
pub struct Cluster {
    meta: Arc<Meta>,
    group: rdb_raft::Group,
    /// Serializes the changes (check, propose, apply) of the metadata.
    changes: Mutex<()>,
    ids: Mutex<IdAlloc>,
    live: std::sync::Mutex<Liveness>,
    store_down_after: Duration,
}

/// Proposes `cmd` through `group`; the answer of the state machine.
pub(crate) async fn propose(group: &rdb_raft::Group, cmd: &Command) -> Result<u64> {
    let raw = group.write(Meta::encode(cmd)).await.map_err(|e| match e {
        rdb_raft::Error::NotLeader { .. } => {
            PdError::Unavailable("this PD member is no longer the leader; retry".into())
        }
        e => PdError::Unavailable(format!("PD could not replicate a change: {e}")),
    })?;
    Meta::decode_answer(&raw)
}

impl Cluster {
    /// The metadata of `meta`, changed through `group`.
    pub fn new(meta: Arc<Meta>, group: rdb_raft::Group, store_down_after: Duration) -> Cluster {
        let id_end = meta.read().id_end;
        Cluster {
            meta,
            group,
            changes: Mutex::new(()),
            ids: Mutex::new(IdAlloc {
                next: id_end + 1,
                end: id_end,
            }),
            live: std::sync::Mutex::new(Liveness {
                heartbeats: HashMap::new(),
                since: Instant::now(),
                leaders: HashMap::new(),
                reported_all: Default::default(),
                missing: HashMap::new(),
            }),
            store_down_after,
        }
    }

    /// Called when this member became the leader and has applied every
    /// earlier command: ids resume above the replicated window (the old
    /// leader may have handed out ids up to it), and every store counts as
    /// heard from now (heartbeats rebuild the picture).
    pub async fn on_leader(&self) {
        let id_end = self.meta.read().id_end;
        *self.ids.lock().await = IdAlloc {
            next: id_end + 1,
            end: id_end,
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.heartbeats.clear();
        live.leaders.clear();
        live.reported_all.clear();
        live.since = Instant::now();
    }

    /// Records a heartbeat of `store_id` that reported `all` its regions or
    /// not; whether PD still wants one that does from that store.
    pub fn wants_all_regions(&self, store_id: u64, all: bool) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if all {
            live.reported_all.insert(store_id);
        }
        !live.reported_all.contains(&store_id)
    }

    /// Records that `store_id` leads the regions of `stats` in their terms
    /// (a report of an older term than the one known is stale).
    pub fn follow_leaders(&self, store_id: u64, stats: &[RegionStat]) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for s in stats {
            let known = live
                .leaders
                .get(&s.region_id)
                .map_or((0, 0), |r| (r.term, r.peer));
            if (s.term, s.leader_peer_id) >= known {
                live.leaders.insert(
                    s.region_id,
                    Reported {
                        store: store_id,
                        term: s.term,
                        peer: s.leader_peer_id,
                        down: s.down_peer_ids.clone(),
                        size: s.approximate_size,
                        keys: s.approximate_keys,
                    },
                );
            }
        }
    }

    /// The cluster version: the lowest version among the stores that are
    /// up or hold a replica (an empty or unparsable version counts as
    /// 0.1.0, the first release); empty with no such store.
    pub fn cluster_version(&self) -> String {
        let st = self.meta.read();
        let holding: std::collections::HashSet<u64> = st
            .regions
            .values()
            .flat_map(|r| r.peers.iter().map(|p| p.store_id))
            .collect();
        st.stores
            .values()
            .filter(|s| holding.contains(&s.id) || self.is_up(s.id))
            .map(|s| rdb_proto::version::parse(&s.version).unwrap_or(rdb_proto::version::FIRST))
            .min()
            .map(rdb_proto::version::format)
            .unwrap_or_default()
    }

    /// Records the replicas that `store_id` reports missing: members of
    /// their regions' groups that it received Raft messages for and runs
    /// no replica of (it missed the split that made them, having caught
    /// up on the parent region by a snapshot).
    pub fn note_missing(&self, store_id: u64, missing: &[rdb_proto::v1::MissingReplica]) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.missing
            .retain(|_, m| now.duration_since(m.last) < MISSING_AFTER + MISSING_GAP);
        for m in missing {
            let e = live
                .missing
                .entry((m.region_id, m.peer_id))
                .or_insert(Missing {
                    store: store_id,
                    first: now,
                    last: now,
                });
            if e.store != store_id || now.duration_since(e.last) >= MISSING_GAP {
                *e = Missing {
                    store: store_id,
                    first: now,
                    last: now,
                };
            }
            e.last = now;
        }
    }

    /// Records that peer `peer_id` on store `store_id` leads region
    /// `region_id` in Raft term `term` (an operator saw the leadership
    /// move). Reports of an older term are
    /// stale from then on. (Guessing the new term as the last one plus one
    /// was wrong: a term known from an earlier guess, or a report, could
    /// put the guess above the real term, and the real leader's reports
    /// were then dropped as stale, its down peers and sizes with them.)
    pub fn set_leader(&self, region_id: u64, store_id: u64, peer_id: u64, term: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = live.leaders.entry(region_id).or_default();
        entry.store = store_id;
        // The term the store answered with; if it gave none (an older
        // store), the old leader's term and peer: the new leader reports
        // its own, higher, and a late report of the old leader's is then
        // accepted as well until it does.
        if (term, peer_id) > (entry.term, entry.peer) {
            (entry.term, entry.peer) = (term, peer_id);
        }
        entry.down.clear();
    }

    /// What the leader of region `r` last reported (before any report:
    /// the store its record names, nothing else known).
    fn leader_of(&self, r: &Region) -> Reported {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leaders
            .get(&r.id)
            .cloned()
            .unwrap_or_else(|| Reported {
                store: r.store_id,
                ..Default::default()
            })
    }

    async fn propose(&self, cmd: &Command) -> Result<u64> {
        propose(&self.group, cmd).await
    }

    /// This cluster's id (0 until the first leader has set it).
    pub fn cluster_id(&self) -> u64 {
        self.meta.read().cluster_id
    }

    /// Fails unless `got` is this cluster's id.
    pub fn check_cluster(&self, got: u64) -> Result<()> {
        let want = self.cluster_id();
        if got != want {
            return Err(PdError::ClusterMismatch { got, want });
        }
        Ok(())
    }

    /// Allocates a cluster-unique id (never 0, never repeated, also across
    /// restarts and leader changes).
    pub async fn alloc_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().await;
        if ids.next > ids.end {
            let want = ids.end.max(ids.next - 1) + ID_STEP;
            let end = self.propose(&Command::SetIdEnd { end: want }).await?;
            ids.next = ids.next.max(end + 1 - ID_STEP);
            ids.end = end;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Whether the cluster has its first region.
    pub async fn is_bootstrapped(&self) -> bool {
        self.meta.read().bootstrapped
    }

    /// Records the first region, covering the whole key space, on `store_id`.
    pub async fn bootstrap(&self, store_id: u64, region: Region) -> Result<()> {
        if !region.start_key.is_empty() || !region.end_key.is_empty() {
            return Err(PdError::InvalidArgument(
                "the first region must cover the whole key space".into(),
            ));
        }
        if region.id == 0 || region.store_id != store_id {
            return Err(PdError::InvalidArgument(
                "the first region needs an id and must be on the bootstrapping store".into(),
            ));
        }
        let _changes = self.changes.lock().await;
        {
            let st = self.meta.read();
            if st.bootstrapped {
                return Err(PdError::AlreadyBootstrapped);
            }
            if !st.stores.contains_key(&store_id) {
                return Err(PdError::FailedPrecondition(format!(
                    "store {store_id} must register (PutStore) before bootstrapping"
                )));
            }
        }
        let applied = self
            .propose(&Command::Bootstrap {
                region: region.encode_to_vec(),
            })
            .await?;
        if applied == 0 {
            return Err(PdError::AlreadyBootstrapped);
        }
        tracing::info!(store_id, region_id = region.id, "cluster bootstrapped");
        Ok(())
    }

    /// Registers or updates a store.
    pub async fn put_store(&self, mut store: Store) -> Result<Store> {
        if store.id == 0 {
            return Err(PdError::InvalidArgument(
                "store id must not be 0 (get one from AllocId)".into(),
            ));
        }
        if store.address.is_empty() {
            return Err(PdError::InvalidArgument(
                "store address must not be empty".into(),
            ));
        }
        let _changes = self.changes.lock().await;
        {
            let st = self.meta.read();
            if let Some(other) = st
                .stores
                .values()
                .find(|s| s.address == store.address && s.id != store.id)
            {
                if self.is_up(other.id) {
                    return Err(PdError::FailedPrecondition(format!(
                        "address {} is already used by live store {}",
                        store.address, other.id
                    )));
                }
            }
        }
        store.state = StoreState::Up as i32;
        // A drain outlives the store's restarts: only DrainStore changes it.
        store.draining = self
            .meta
            .read()
            .stores
            .get(&store.id)
            .is_some_and(|s| s.draining);
        let mut persisted = store.clone();
        persisted.last_heartbeat_ms = 0;
        persisted.replica_count = 0;
        persisted.leader_count = 0;
        self.propose(&Command::PutStore {
            store: persisted.encode_to_vec(),
        })
        .await?;
        store.last_heartbeat_ms = now_ms();
        self.touch(store.id);
        tracing::info!(store_id = store.id, address = %store.address, "store registered");
        Ok(store)
    }

    fn touch(&self, store_id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeats
            .insert(store_id, Instant::now());
    }

    fn last_heard(&self, id: u64) -> Instant {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.heartbeats.get(&id).copied().unwrap_or(live.since)
    }

    fn is_up(&self, id: u64) -> bool {
        self.last_heard(id).elapsed() < self.store_down_after
    }

    fn view_store(&self, s: &Store) -> Store {
        let mut s = s.clone();
        let last = self.last_heard(s.id);
        s.state = if last.elapsed() < self.store_down_after {
            StoreState::Up
        } else {
            StoreState::Down
        } as i32;
        s.last_heartbeat_ms = now_ms().saturating_sub(last.elapsed().as_millis() as u64);
        s
    }

    /// Replicas and reported leaderships per store.
    fn counts(&self, st: &MetaState) -> HashMap<u64, (u64, u64)> {
        let mut counts: HashMap<u64, (u64, u64)> = HashMap::new();
        for p in st.regions.values().flat_map(|r| r.peers.iter()) {
            counts.entry(p.store_id).or_default().0 += 1;
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (region, r) in &live.leaders {
            if st.regions.contains_key(region) {
                counts.entry(r.store).or_default().1 += 1;
            }
        }
        counts
    }

    /// [`Cluster::view_store`] with the store's replica and leader counts.
    fn view_store_counted(&self, s: &Store, counts: &HashMap<u64, (u64, u64)>) -> Store {
        let mut s = self.view_store(s);
        let (replicas, leaders) = counts.get(&s.id).copied().unwrap_or_default();
        s.replica_count = replicas;
        s.leader_count = leaders;
        s
    }

    /// One store, with its state computed from heartbeats and its counts.
    pub async fn get_store(&self, id: u64) -> Result<Store> {
        let st = self.meta.read();
        let s = st
            .stores
            .get(&id)
            .ok_or_else(|| PdError::NotFound(format!("store {id} is not registered")))?;
        Ok(self.view_store_counted(s, &self.counts(&st)))
    }

    /// Marks store `id` as draining (or not): the replica checker moves its
    /// leaderships and replicas away and places nothing new on it.
    pub async fn set_draining(&self, id: u64, draining: bool) -> Result<Store> {
        let _changes = self.changes.lock().await;
        let mut s = self
            .meta
            .read()
            .stores
            .get(&id)
            .cloned()
            .ok_or_else(|| PdError::NotFound(format!("store {id} is not registered")))?;
        if s.draining != draining {
            s.draining = draining;
            self.propose(&Command::PutStore {
                store: s.encode_to_vec(),
            })
            .await?;
            tracing::info!(store_id = id, draining, "store drain mark changed");
        }
        drop(_changes);
        self.get_store(id).await
    }

    /// How many regions PD knows.
    pub async fn region_count(&self) -> usize {
        self.meta.read().regions.len()
    }

    /// All stores, ordered by id.
    pub async fn all_stores(&self) -> Vec<Store> {
        let st = self.meta.read();
        let counts = self.counts(&st);
        st.stores
            .values()
            .map(|s| self.view_store_counted(s, &counts))
            .collect()
    }

    /// Records a heartbeat and adopts region updates the store reports
    /// (a region PD does not know yet, or a newer epoch of one it knows).
    pub async fn heartbeat(&self, store_id: u64, regions: Vec<Region>) -> Result<()> {
        if !self.meta.read().stores.contains_key(&store_id) {
            return Err(PdError::NotFound(format!(
                "store {store_id} is not registered"
            )));
        }
        self.touch(store_id);
        let _changes = self.changes.lock().await;
        let (put, delete, adopted) = {
            let st = self.meta.read();
            adopt(&st, store_id, regions)
        };
        if !put.is_empty() {
            self.propose(&Command::PutRegions { put, delete }).await?;
            tracing::info!(store_id, regions = ?adopted, "adopted region updates from heartbeat");
        }
        Ok(())
    }

    /// Stores region records (after a split or a move) and drops overlapping stale ones.
    pub async fn update_regions(&self, regions: Vec<Region>) -> Result<()> {
        let _changes = self.changes.lock().await;
        let put: Vec<Vec<u8>> = {
            let st = self.meta.read();
            regions
                .iter()
                .filter(|r| {
                    st.regions.get(&r.id).is_none_or(|known| {
                        r.epoch_or_default().is_at_least(&known.epoch_or_default())
                    })
                })
                .map(|r| r.encode_to_vec())
                .collect()
        };
        if !put.is_empty() {
            self.propose(&Command::PutRegions {
                put,
                delete: Vec::new(),
            })
            .await?;
        }
        Ok(())
    }

    fn route(&self, st: &MetaState, r: &Region) -> RegionRoute {
        let reported = self.leader_of(r);
        let mut region = r.clone();
        region.store_id = reported.store;
        RegionRoute {
            region: Some(region),
            leader: st.stores.get(&reported.store).map(|s| self.view_store(s)),
            down_peer_ids: reported.down,
            approximate_size: reported.size,
            approximate_keys: reported.keys,
        }
    }

    /// The region that holds `key`.
    pub async fn region_by_key(&self, key: &[u8]) -> Result<RegionRoute> {
        let st = self.meta.read();
        if !st.bootstrapped {
            return Err(PdError::NotBootstrapped);
        }
        let r = st.region_for_key(key).ok_or_else(|| {
            PdError::NotFound(format!(
                "no region holds key {}",
                rdb_proto::region::display_key(key)
            ))
        })?;
        Ok(self.route(&st, r))
    }

    /// A region by id.
    pub async fn region_by_id(&self, id: u64) -> Result<RegionRoute> {
        let st = self.meta.read();
        let r = st
            .regions
            .get(&id)
            .ok_or_else(|| PdError::NotFound(format!("region {id} does not exist")))?;
        Ok(self.route(&st, r))
    }

    /// Regions overlapping `[start, end)` in key order (at most `limit`, 0 = all).
    pub async fn scan_regions(&self, start: &[u8], end: &[u8], limit: usize) -> Vec<RegionRoute> {
        let st = self.meta.read();
        let first = st
            .region_for_key(start)
            .map(|r| r.start_key.clone())
            .unwrap_or_else(|| start.to_vec());
        let limit = if limit == 0 { usize::MAX } else { limit };
        st.by_start
            .range(first..)
            .filter_map(|(_, id)| st.regions.get(id))
            .take_while(|r| end.is_empty() || r.start_key.as_slice() < end)
            .take(limit)
            .map(|r| self.route(&st, r))
            .collect()
    }

    /// A live store other than `exclude`, preferring the one with the fewest regions.
    pub async fn pick_other_store(&self, exclude: u64) -> Option<Store> {
        let st = self.meta.read();
        st.stores
            .values()
            .filter(|s| s.id != exclude && self.is_up(s.id))
            .min_by_key(|s| {
                (
                    st.regions.values().filter(|r| r.store_id == s.id).count(),
                    s.id,
                )
            })
            .map(|s| self.view_store(s))
    }

    /// The replica checker's work for this round, one fix per region at
    /// most, for the regions whose leader has reported to this PD leader
    /// (its picture of the region is current):
    ///
    /// - fewer voters than `max_replicas`, or than the stores that are up,
    ///   whichever is less: promote a learner left behind, or add a replica;
    /// - more voters than `max_replicas` (a replacement or a balance move
    ///   added one): remove the one on a dead store, else on a down one,
    ///   else on the store holding the most replicas (not the leader when
    ///   another ties);
    /// - a voter on a store silent for `max_store_down` (dead) or on a
    ///   draining store: add a replacement elsewhere (the rule above then
    ///   removes the dead or draining one, as it is not up for placement);
    /// - a leader on a draining store: hand the leadership to another voter
    ///   (before anything else for that region).
    ///
    /// Draining stores count as neither up nor as targets.
    ///
    /// When no region needs any of these, balance: one replica moves from
    /// the store holding the most to the one holding the fewest when they
    /// differ by two or more (added there; the excess rule then removes it
    /// from the fuller store), and one leadership likewise.
    ///
    /// Stores are picked by how few replicas they hold, counting the fixes
    /// already planned.
    pub fn replica_fixes(&self, rules: &ReplicaRules) -> Vec<ReplicaFix> {
        let st = self.meta.read();
        // Each reported region's leader store.
        let leaders: HashMap<u64, u64> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leaders
            .iter()
            .filter(|(id, _)| st.regions.contains_key(id))
            .map(|(id, r)| (*id, r.store))
            .collect();
        // The stores that can take replicas and leaderships: up, not draining.
        let up: Vec<u64> = st
            .stores
            .values()
            .filter(|s| !s.draining && self.is_up(s.id))
            .map(|s| s.id)
            .collect();
        let draining = |id: u64| st.stores.get(&id).is_some_and(|s| s.draining);
        let dead = |id: u64| {
            !st.stores.contains_key(&id) || self.last_heard(id).elapsed() >= rules.max_store_down
        };
        let want = rules.max_replicas.min(up.len());
        let mut load: HashMap<u64, usize> = up.iter().map(|id| (*id, 0)).collect();
        for p in st.regions.values().flat_map(|r| r.peers.iter()) {
            if let Some(n) = load.get_mut(&p.store_id) {
                *n += 1;
            }
        }
        // Replicas their stores have reported missing for a while.
        let missing: std::collections::HashSet<(u64, u64, u64)> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.missing
                .iter()
                .filter(|(_, m)| {
                    m.last.elapsed() < MISSING_GAP
                        && m.last.duration_since(m.first) >= MISSING_AFTER
                })
                .map(|((region, peer), m)| (*region, *peer, m.store))
                .collect()
        };
        let lost =
            |r: &Region, p: &rdb_proto::v1::Peer| missing.contains(&(r.id, p.id, p.store_id));
        let reported = || st.regions.values().filter(|r| leaders.contains_key(&r.id));
        let mut fixes = Vec::new();
        for r in reported() {
            let voters = r.peers.iter().filter(|p| is_voter(p)).count();
            // A draining store's leaderships go first, to the voter on the
            // store holding the fewest replicas.
            if let Some(from) = leaders.get(&r.id).copied().filter(|s| draining(*s)) {
                let to = r
                    .peers
                    .iter()
                    .filter(|p| is_voter(p) && load.contains_key(&p.store_id))
                    .min_by_key(|p| (load[&p.store_id], p.store_id));
                if let Some(to) = to {
                    fixes.push(ReplicaFix::TransferLeader {
                        region_id: r.id,
                        from,
                        to: to.store_id,
                    });
                    continue;
                }
            }
            // A learner on a dead store never catches up: it goes.
            if let Some(l) = r.peers.iter().find(|p| !is_voter(p) && dead(p.store_id)) {
                fixes.push(ReplicaFix::Remove {
                    region_id: r.id,
                    store_id: l.store_id,
                    voters,
                });
                continue;
            }
            // A replica its store reports missing never catches up: it is
            // replaced on another store when one can take it (added first,
            // then removed by the excess rule), else removed first, and a
            // new replica (a new peer id, filled by a snapshot) is added
            // on the next round, on its store if that is the one free.
            if let Some(m) = r.peers.iter().find(|p| lost(r, p)) {
                let spare = up.iter().any(|s| !r.peers.iter().any(|p| p.store_id == *s));
                if !is_voter(m) || !spare || voters > rules.max_replicas {
                    if !is_voter(m) || voters > 1 {
                        fixes.push(ReplicaFix::Remove {
                            region_id: r.id,
                            store_id: m.store_id,
                            voters,
                        });
                    }
                    continue;
                }
            }
            let add_up_to =
                if voters < want {
                    // A learner left behind by an operator that stopped halfway
                    // (its PD leader died) is promoted before any replica is added.
                    if let Some(l) = r
                        .peers
                        .iter()
                        .find(|p| !is_voter(p) && load.contains_key(&p.store_id))
                    {
                        fixes.push(ReplicaFix::Promote {
                            region_id: r.id,
                            store_id: l.store_id,
                            voters,
                        });
                        continue;
                    }
                    want
                } else if voters > rules.max_replicas {
                    let leader = leaders.get(&r.id).copied();
                    let victim = r.peers.iter().filter(|p| is_voter(p)).max_by_key(|p| {
                        (
                            lost(r, p),
                            dead(p.store_id),
                            !load.contains_key(&p.store_id),
                            load.get(&p.store_id).copied().unwrap_or(0),
                            Some(p.store_id) != leader,
                            p.store_id,
                        )
                    });
                    if let Some(v) = victim {
                        fixes.push(ReplicaFix::Remove {
                            region_id: r.id,
                            store_id: v.store_id,
                            voters,
                        });
                    }
                    continue;
                } else if r.peers.iter().any(|p| {
                    is_voter(p) && (dead(p.store_id) || draining(p.store_id) || lost(r, p))
                }) {
                    voters + 1
                } else {
                    continue;
                };
            let mut stores: Vec<u64> = up
                .iter()
                .copied()
                .filter(|s| !r.peers.iter().any(|p| p.store_id == *s))
                .collect();
            stores.sort_by_key(|s| (load[s], *s));
            if let Some(first) = stores.first() {
                if let Some(n) = load.get_mut(first) {
                    *n += 1;
                }
                fixes.push(ReplicaFix::Add {
                    region_id: r.id,
                    stores,
                    voters: add_up_to,
                });
            }
        }
        if !fixes.is_empty() {
            return fixes;
        }
        // Balance, on a picture where every reported region is whole.
        // (`up`, and so the extremes, are ordered by store id.)
        let healthy = |r: &&Region| {
            r.peers
                .iter()
                .all(|p| is_voter(p) && load.contains_key(&p.store_id))
        };
        let fullest = up.iter().copied().max_by_key(|s| (load[s], *s));
        let emptiest = up.iter().copied().min_by_key(|s| (load[s], *s));
        if let (Some(from), Some(to)) = (fullest, emptiest) {
            if load[&from] >= load[&to] + 2 {
                let moved = reported().filter(healthy).find(|r| {
                    r.peers.iter().any(|p| p.store_id == from)
                        && !r.peers.iter().any(|p| p.store_id == to)
                });
                if let Some(r) = moved {
                    fixes.push(ReplicaFix::Add {
                        region_id: r.id,
                        stores: vec![to],
                        voters: r.peers.len() + 1,
                    });
                    return fixes;
                }
            }
        }
        let mut led: HashMap<u64, usize> = up.iter().map(|id| (*id, 0)).collect();
        for store in leaders.values() {
            if let Some(n) = led.get_mut(store) {
                *n += 1;
            }
        }
        let most = up.iter().copied().max_by_key(|s| (led[s], *s));
        let fewest = up.iter().copied().min_by_key(|s| (led[s], *s));
        if let (Some(from), Some(to)) = (most, fewest) {
            if led[&from] >= led[&to] + 2 {
                let handed = reported().filter(healthy).find(|r| {
                    leaders.get(&r.id) == Some(&from) && r.peers.iter().any(|p| p.store_id == to)
                });
                if let Some(r) = handed {
                    fixes.push(ReplicaFix::TransferLeader {
                        region_id: r.id,
                        from,
                        to,
                    });
                }
            }
        }
        fixes
    }

    /// Whether a store is registered and up (no await: for filters).
    pub fn is_up_now(&self, id: u64) -> bool {
        self.meta.read().stores.contains_key(&id) && self.is_up(id)
    }

    /// Whether a store is registered and up.
    pub async fn store_is_up(&self, id: u64) -> bool {
        self.is_up_now(id)
    }
}

/// Whether `p` votes (is not a learner).
pub(crate) fn is_voter(p: &rdb_proto::v1::Peer) -> bool {
    p.role != rdb_proto::v1::PeerRole::Learner as i32
}

/// What the replica checker aims for.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaRules {
    /// Voters every region should have.
    pub max_replicas: usize,
    /// A store silent this long is dead: its replicas are replaced.
    pub max_store_down: Duration,
}

/// One step of the replica checker for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaFix {
    /// Promote the region's learner on `store_id` to a voter; if it cannot
    /// be (it did not catch up), remove it (a fresh replica is added on
    /// the next round).
    Promote {
        /// The region.
        region_id: u64,
        /// The learner's store.
        store_id: u64,
        /// The voters the region has: the learner is not removed if that
        /// changed.
        voters: usize,
    },
    /// Add a replica on the first of `stores` that takes it (best first).
    Add {
        /// The region.
        region_id: u64,
        /// Stores that are up and hold no replica of it, fewest replicas first.
        stores: Vec<u64>,
        /// The voters the region should have: nothing is added once it has them.
        voters: usize,
    },
    /// Remove the region's replica on `store_id`: a voter when the region
    /// has one more than `max-replicas`, or a learner on a dead store.
    Remove {
        /// The region.
        region_id: u64,
        /// The store whose replica goes.
        store_id: u64,
        /// The voters the region has: nothing is removed if that changed.
        voters: usize,
    },
    /// Hand the region's leadership from store `from` to its voter on `to`.
    TransferLeader {
        /// The region.
        region_id: u64,
        /// The store that leads it (nothing is done if that changed).
        from: u64,
        /// The store that should.
        to: u64,
    },
}

/// The region records of a heartbeat from `store_id` that PD adopts: new
/// regions and newer epochs, with the ids of the stale records they
/// replace, and the adopted ids (for the log).
fn adopt(
    st: &MetaState,
    store_id: u64,
    regions: Vec<Region>,
) -> (Vec<Vec<u8>>, Vec<u64>, Vec<u64>) {
    // Most heartbeats report nothing new: no copy of the map for them.
    let news = |r: &Region| {
        r.store_id == store_id
            && r.id != 0
            && st
                .regions
                .get(&r.id)
                .is_none_or(|known| r.epoch_or_default().supersedes(&known.epoch_or_default()))
    };
    if !regions.iter().any(news) {
        return (Vec::new(), Vec::new(), Vec::new());
    }
    // A working copy, so that later reports of the same heartbeat see the
    // earlier ones.
    let mut view = st.regions.clone();
    let mut adopted = std::collections::BTreeSet::new();
    let mut deleted = std::collections::BTreeSet::new();
    for r in regions {
        if r.store_id != store_id || r.id == 0 {
            continue;
        }
        let epoch = r.epoch_or_default();
        if let Some(known) = view.get(&r.id) {
            if !epoch.supersedes(&known.epoch_or_default()) {
                continue;
            }
        }
        let overlapping: Vec<u64> = view
            .values()
            .filter(|o| o.id != r.id && o.overlaps(&r.start_key, &r.end_key))
            .map(|o| o.id)
            .collect();
        if overlapping
            .iter()
            .any(|id| view[id].epoch_or_default().version > epoch.version)
        {
            continue; // A newer split already covers this range: the report is stale.
        }
        for id in overlapping {
            view.remove(&id);
            deleted.insert(id);
        }
        adopted.insert(r.id);
        view.insert(r.id, r);
    }
    // Deletions are applied before the records, and a record adopted first
    // may have been replaced by a later one of the same heartbeat.
    let adopted: Vec<u64> = adopted
        .into_iter()
        .filter(|id| view.contains_key(id))
        .collect();
    let put = adopted.iter().map(|id| view[id].encode_to_vec()).collect();
    let delete = deleted
        .into_iter()
        .filter(|id| !view.contains_key(id))
        .collect();
    (put, delete, adopted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::RegionEpoch;

    fn region(id: u64, s: &[u8], e: &[u8], version: u64, conf_ver: u64, store_id: u64) -> Region {
        Region {
            id,
            start_key: s.to_vec(),
            end_key: e.to_vec(),
            epoch: Some(RegionEpoch { version, conf_ver }),
            store_id,
            peers: Vec::new(),
        }
    }

    /// Store `store` reports that it leads `regions` in term 1.
    fn led_by(c: &Cluster, store: u64, regions: &[u64]) {
        let stats: Vec<RegionStat> = regions
            .iter()
            .map(|id| RegionStat {
                region_id: *id,
                term: 1,
                ..Default::default()
            })
            .collect();
        c.follow_leaders(store, &stats);
    }

    #[tokio::test]
    async fn a_new_leader_asks_each_store_once_for_all_its_regions() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        assert!(c.wants_all_regions(1, false), "no full report yet");
        assert!(!c.wants_all_regions(1, true), "this one was");
        assert!(!c.wants_all_regions(1, false), "changes only from now on");
        assert!(c.wants_all_regions(2, false), "another store");
        c.on_leader().await;
        assert!(c.wants_all_regions(1, false), "a new leader knows nothing");
    }

    #[tokio::test]
    async fn leaders_reports_are_followed_by_term_from_the_term_a_transfer_saw() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        for id in 1..=2 {
            c.put_store(store(id)).await.unwrap();
        }
        c.bootstrap(1, region(10, b"", b"", 1, 1, 1)).await.unwrap();
        // Store s's replica is peer s.
        let report = |store: u64, term: u64, size: u64| {
            c.follow_leaders(
                store,
                &[RegionStat {
                    region_id: 10,
                    term,
                    leader_peer_id: store,
                    approximate_size: size,
                    approximate_keys: size / 10,
                    ..Default::default()
                }],
            )
        };
        let seen = |c: &Cluster| {
            let r = c.leader_of(&region(10, b"", b"", 1, 1, 1));
            (r.store, r.size, r.keys)
        };
        report(1, 3, 100);
        assert_eq!(seen(&c), (1, 100, 10));
        // A transfer saw store 2 take over in term 4.
        c.set_leader(10, 2, 2, 4);
        assert_eq!(seen(&c).0, 2);
        // The old leader's late report is stale; the new leader's own, in
        // the term the transfer saw, is taken.
        report(1, 3, 100);
        assert_eq!(seen(&c).0, 2);
        report(2, 4, 200);
        assert_eq!(seen(&c), (2, 200, 20));
        // Two leaders of one term: peer 3 superseded peer 2 (a higher
        // leader id); peer 2's late report is stale.
        report(3, 5, 300);
        report(2, 5, 200);
        assert_eq!(seen(&c), (3, 300, 30));
        // A transfer answered without a term (an older store) guesses none.
        c.set_leader(10, 1, 1, 0);
        report(1, 6, 400);
        assert_eq!(seen(&c), (1, 400, 40));
    }

    fn store(id: u64) -> Store {
        Store {
            id,
            address: format!("127.0.0.1:{id}"),
            ..Default::default()
        }
    }

    async fn cluster(dir: &std::path::Path) -> (Cluster, rdb_raft::Group) {
        let (meta, group) = crate::node::single_member_for_tests(dir).await;
        (
            Cluster::new(meta, group.clone(), Duration::from_secs(10)),
            group,
        )
    }

    fn rules(max_replicas: usize) -> ReplicaRules {
        ReplicaRules {
            max_replicas,
            max_store_down: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn the_replica_checker_fills_reported_regions_up_to_the_stores_that_are_up() {
        use rdb_proto::v1::{Peer, PeerRole};
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        let peer = |id, store_id, learner: bool| Peer {
            id,
            store_id,
            role: if learner {
                PeerRole::Learner
            } else {
                PeerRole::Voter
            } as i32,
        };
        let with_peers = |mut r: Region, peers: Vec<Peer>| {
            r.peers = peers;
            r
        };
        c.put_store(store(1)).await.unwrap();
        c.bootstrap(
            1,
            with_peers(region(10, b"", b"", 1, 1, 1), vec![peer(100, 1, false)]),
        )
        .await
        .unwrap();
        let led = |ids: &[u64]| led_by(&c, 1, ids);
        // One store: one replica is all there can be.
        led(&[10]);
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        c.put_store(store(2)).await.unwrap();
        c.put_store(store(3)).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![2, 3],
                voters: 3
            }]
        );
        assert_eq!(c.replica_fixes(&rules(1)), vec![]);
        // Two regions short of a replica: the second goes where the first did not.
        c.heartbeat(
            1,
            vec![
                with_peers(region(10, b"", b"m", 2, 1, 1), vec![peer(100, 1, false)]),
                with_peers(
                    region(11, b"m", b"", 2, 1, 1),
                    vec![peer(101, 1, false), peer(102, 3, false)],
                ),
            ],
        )
        .await
        .unwrap();
        // Region 11 has not reported from its leader: not touched yet.
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![2, 3],
                voters: 3
            }]
        );
        led(&[10, 11]);
        assert_eq!(
            c.replica_fixes(&rules(2)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![2, 3],
                voters: 2
            }]
        );
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![
                ReplicaFix::Add {
                    region_id: 10,
                    stores: vec![2, 3],
                    voters: 3
                },
                ReplicaFix::Add {
                    region_id: 11,
                    stores: vec![2],
                    voters: 3
                },
            ]
        );
        // A learner left behind is promoted rather than a replica added.
        c.heartbeat(
            1,
            vec![with_peers(
                region(10, b"", b"m", 2, 3, 1),
                vec![peer(100, 1, false), peer(103, 3, true)],
            )],
        )
        .await
        .unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3))[0],
            ReplicaFix::Promote {
                region_id: 10,
                store_id: 3,
                voters: 1
            }
        );
    }

    #[tokio::test]
    async fn the_replica_checker_replaces_the_replicas_of_dead_stores_only() {
        use rdb_proto::v1::{Peer, PeerRole};
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        let voter = |id, store_id| Peer {
            id,
            store_id,
            role: PeerRole::Voter as i32,
        };
        for id in 1..=4 {
            c.put_store(store(id)).await.unwrap();
        }
        let mut r = region(10, b"", b"", 1, 3, 1);
        r.peers = vec![voter(100, 1), voter(101, 2), voter(102, 3)];
        c.bootstrap(1, r.clone()).await.unwrap();
        led_by(&c, 1, &[10]);
        let silent_for = |store: u64, secs: u64| {
            let at = Instant::now()
                .checked_sub(Duration::from_secs(secs))
                .unwrap();
            c.live.lock().unwrap().heartbeats.insert(store, at);
        };
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        // Down (silent 20 s) but not dead (60 s): nothing moves yet.
        silent_for(3, 20);
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        // Dead: a replacement first, on the one store without a replica.
        silent_for(3, 100);
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![4],
                voters: 4
            }]
        );
        // Then the dead replica goes.
        r.epoch = Some(RegionEpoch {
            version: 1,
            conf_ver: 5,
        });
        r.peers.push(voter(103, 4));
        c.heartbeat(1, vec![r.clone()]).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 3,
                voters: 4
            }]
        );
        // With no store to take a replacement, the dead replica stays.
        r.peers.pop();
        r.epoch = Some(RegionEpoch {
            version: 1,
            conf_ver: 7,
        });
        c.heartbeat(1, vec![r.clone()]).await.unwrap();
        silent_for(4, 100);
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        // A learner on a dead store (an addition cut short) goes.
        r.peers.push(Peer {
            id: 104,
            store_id: 4,
            role: PeerRole::Learner as i32,
        });
        r.epoch = Some(RegionEpoch {
            version: 1,
            conf_ver: 8,
        });
        c.heartbeat(1, vec![r]).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 4,
                voters: 3
            }]
        );
    }

    #[tokio::test]
    async fn a_replica_its_store_reports_missing_for_a_while_is_replaced() {
        use rdb_proto::v1::{MissingReplica, Peer, PeerRole};
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        let voter = |id, store_id| Peer {
            id,
            store_id,
            role: PeerRole::Voter as i32,
        };
        for id in 1..=3 {
            c.put_store(store(id)).await.unwrap();
        }
        let mut r = region(10, b"", b"", 1, 3, 1);
        r.peers = vec![voter(100, 1), voter(101, 2), voter(102, 3)];
        c.bootstrap(1, r.clone()).await.unwrap();
        led_by(&c, 1, &[10]);
        let report = |store: u64, peer: u64, first_secs_ago: u64| {
            c.note_missing(
                store,
                &[MissingReplica {
                    region_id: 10,
                    peer_id: peer,
                }],
            );
            let mut live = c.live.lock().unwrap();
            let m = live.missing.get_mut(&(10, peer)).unwrap();
            m.first = Instant::now()
                .checked_sub(Duration::from_secs(first_secs_ago))
                .unwrap();
        };
        // Just reported (a split its store is still applying): nothing.
        report(3, 102, 0);
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        // Reported by a store that does not hold that peer: nothing.
        report(2, 102, 30);
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        // Reported by its store for longer than MISSING_AFTER, with no
        // other store to take a replacement: removed first.
        report(3, 102, 30);
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 3,
                voters: 3
            }]
        );
        // With a fourth store up, a replacement is added there first.
        c.put_store(store(4)).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![4],
                voters: 4
            }]
        );
        // Then the excess rule takes the missing one, not another.
        r.epoch = Some(RegionEpoch {
            version: 1,
            conf_ver: 5,
        });
        r.peers.push(voter(103, 4));
        c.heartbeat(1, vec![r.clone()]).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 3,
                voters: 4
            }]
        );
    }

    #[tokio::test]
    async fn the_balancer_moves_replicas_then_leaderships_to_the_emptiest_store() {
        use rdb_proto::v1::{Peer, PeerRole};
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        let with = |id: u64, s: &[u8], e: &[u8], conf_ver: u64, stores: &[u64]| {
            let mut r = region(id, s, e, 3, conf_ver, 1);
            r.peers = stores
                .iter()
                .map(|st| Peer {
                    id: id * 10 + st,
                    store_id: *st,
                    role: PeerRole::Voter as i32,
                })
                .collect();
            r
        };
        for id in 1..=3 {
            c.put_store(store(id)).await.unwrap();
        }
        let mut first = with(10, b"", b"", 3, &[1, 2, 3]);
        first.epoch = Some(RegionEpoch {
            version: 1,
            conf_ver: 3,
        });
        c.bootstrap(1, first).await.unwrap();
        c.heartbeat(
            1,
            vec![
                with(10, b"", b"f", 3, &[1, 2, 3]),
                with(11, b"f", b"p", 3, &[1, 2, 3]),
                with(12, b"p", b"", 3, &[1, 2, 3]),
            ],
        )
        .await
        .unwrap();
        led_by(&c, 1, &[10, 11, 12]);
        // Replicas even, leaderships not: one is handed over.
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::TransferLeader {
                region_id: 10,
                from: 1,
                to: 2
            }]
        );
        // A new empty store: replicas move first (added there), then...
        c.put_store(store(4)).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![4],
                voters: 4
            }]
        );
        // ...the extra replica goes from a fullest store, not the leader's.
        c.heartbeat(1, vec![with(10, b"", b"f", 5, &[1, 2, 3, 4])])
            .await
            .unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 3,
                voters: 4
            }]
        );
        // Balanced within one replica: no more moves of replicas.
        c.heartbeat(
            1,
            vec![
                with(10, b"", b"f", 7, &[1, 2, 4]),
                with(11, b"f", b"p", 5, &[1, 3, 4]),
            ],
        )
        .await
        .unwrap();
        assert!(!c
            .replica_fixes(&rules(3))
            .iter()
            .any(|f| matches!(f, ReplicaFix::Add { .. } | ReplicaFix::Remove { .. })));
    }

    #[tokio::test]
    async fn a_draining_store_hands_over_its_leaderships_then_its_replicas() {
        use rdb_proto::v1::{Peer, PeerRole};
        let tmp = tempfile::tempdir().unwrap();
        let (c, _group) = cluster(tmp.path()).await;
        let with = |conf_ver: u64, stores: &[u64]| {
            let mut r = region(10, b"", b"", 1, conf_ver, 1);
            r.peers = stores
                .iter()
                .map(|st| Peer {
                    id: 100 + st,
                    store_id: *st,
                    role: PeerRole::Voter as i32,
                })
                .collect();
            r
        };
        for id in 1..=4 {
            c.put_store(store(id)).await.unwrap();
        }
        c.bootstrap(1, with(3, &[1, 2, 3])).await.unwrap();
        led_by(&c, 1, &[10]);
        let s = c.set_draining(1, true).await.unwrap();
        assert!(s.draining);
        assert_eq!((s.replica_count, s.leader_count), (1, 1));
        // The mark survives the store registering again (a restart).
        assert!(c.put_store(store(1)).await.unwrap().draining);
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::TransferLeader {
                region_id: 10,
                from: 1,
                to: 2
            }]
        );
        c.set_leader(10, 2, 2, 2);
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Add {
                region_id: 10,
                stores: vec![4],
                voters: 4
            }]
        );
        c.heartbeat(1, vec![with(5, &[1, 2, 3, 4])]).await.unwrap();
        assert_eq!(
            c.replica_fixes(&rules(3)),
            vec![ReplicaFix::Remove {
                region_id: 10,
                store_id: 1,
                voters: 4
            }]
        );
        c.heartbeat(1, vec![with(7, &[2, 3, 4])]).await.unwrap();
        assert_eq!(c.replica_fixes(&rules(3)), vec![]);
        let s = c.get_store(1).await.unwrap();
        assert_eq!((s.replica_count, s.leader_count), (0, 0));
        // Cancelled: it takes replicas again (balance).
        assert!(!c.set_draining(1, false).await.unwrap().draining);
    }

    #[tokio::test]
    async fn heartbeats_repair_the_region_map_and_everything_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, group) = cluster(tmp.path()).await;
        c.put_store(store(1)).await.unwrap();
        c.put_store(store(2)).await.unwrap();
        assert!(c
            .put_store(Store {
                id: 3,
                address: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .await
            .is_err());
        c.bootstrap(1, region(10, b"", b"", 1, 1, 1)).await.unwrap();
        assert!(matches!(
            c.bootstrap(1, region(11, b"", b"", 1, 1, 1)).await,
            Err(PdError::AlreadyBootstrapped)
        ));

        // A split PD never heard of (it crashed mid-split) arrives by heartbeat.
        c.heartbeat(
            1,
            vec![
                region(12, b"m", b"", 2, 1, 1),
                region(10, b"", b"m", 2, 1, 1),
            ],
        )
        .await
        .unwrap();
        let routes = c.scan_regions(b"", b"", 0).await;
        let ids: Vec<u64> = routes
            .iter()
            .map(|r| r.region.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids, vec![10, 12]);
        assert_eq!(c.region_by_key(b"z").await.unwrap().region.unwrap().id, 12);

        // A stale report (older epoch) is ignored; a newer one (moved to store 2) is adopted.
        c.heartbeat(1, vec![region(10, b"", b"", 1, 1, 1)])
            .await
            .unwrap();
        assert_eq!(c.region_by_key(b"z").await.unwrap().region.unwrap().id, 12);
        c.heartbeat(2, vec![region(12, b"m", b"", 2, 2, 2)])
            .await
            .unwrap();
        assert_eq!(c.region_by_key(b"z").await.unwrap().leader.unwrap().id, 2);
        // A report stale in one component (a later version, an older
        // membership) is ignored, component by component.
        c.heartbeat(2, vec![region(12, b"m", b"", 3, 1, 2)])
            .await
            .unwrap();
        let epoch = |c: RegionRoute| c.region.unwrap().epoch.unwrap();
        assert_eq!(epoch(c.region_by_id(12).await.unwrap()).conf_ver, 2);
        assert_eq!(epoch(c.region_by_id(12).await.unwrap()).version, 2);
        // A store reporting a region on another store is ignored.
        c.heartbeat(1, vec![region(12, b"m", b"", 9, 9, 2)])
            .await
            .unwrap();
        assert_eq!(
            c.region_by_id(12)
                .await
                .unwrap()
                .region
                .unwrap()
                .epoch
                .unwrap()
                .version,
            2
        );

        let id = c.alloc_id().await.unwrap();
        drop(c);
        group.shutdown().await;
        drop(group);
        let (c, _group) = cluster(tmp.path()).await;
        c.on_leader().await;
        assert!(c.is_bootstrapped().await);
        assert_eq!(c.all_stores().await.len(), 2);
        assert_eq!(c.scan_regions(b"", b"", 0).await.len(), 2);
        assert_eq!(
            c.region_by_key(b"z")
                .await
                .unwrap()
                .region
                .unwrap()
                .store_id,
            2
        );
        assert!(
            c.alloc_id().await.unwrap() > id,
            "ids never repeat across restarts"
        );
        assert_eq!(c.scan_regions(b"a", b"b", 0).await.len(), 1);
        assert_eq!(c.scan_regions(b"", b"", 1).await.len(), 1);
    }
}
