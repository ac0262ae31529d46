//! One replica of one region: its Raft group and its state machine.
//!
//! The state machine ([`RegionMachine`]) applies the region's committed
//! entries through the engine's writer: each entry's writes, the region's
//! version counter and the entry's applied mark go in one writer request
//! (atomic), and the requests of a batch of entries are queued back to back
//! so that they share one RocksDB write and its sync. Versions are numbered
//! by the entry, from the region's counter, never from the data (see
//! `specs/006-replication/spec.md`, section 5), so every replica gives a key
//! the same versions; CAS and the exactly-once check run at apply, against
//! the replica's state, which is the same on every replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use prost::Message;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{
    EpochNotMatch, NotLeader, Peer, PeerRole, Region, RegionEpoch, RegionError, Store,
};
use rdb_raft::{BatchMachine, Chunks, Entry, Member, Membership, NodeId, Reply};
use rdb_storage::{Engine, OpResult, Queued, StorageError, VersionedWrite, WriteOp};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::command::{self, Answer, Command, SplitParts};
use crate::regions::put_region_op;

/// Prefix of the meta keys of the regions' version counters.
const VERSION_PREFIX: &[u8] = b"region_version/";

/// Meta key of region `id`'s version counter: the last version it gave.
pub fn version_key(id: u64) -> Vec<u8> {
    crate::regions::record_key(VERSION_PREFIX, id)
}

/// What a region's replicas count, entry by entry, alike: the last version
/// given, and the region clock (the highest leader time of the write
/// entries applied, 0 before any entry of format 1), which places
/// exactly-once records in time buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The last version given.
    pub version: u64,
    /// The region clock, ms since the Unix epoch.
    pub clock_ms: u64,
}

/// The write that persists region `id`'s counters: the version, 8 bytes
/// big-endian, then the clock, 8 more, once it is not 0 (a store of 0.1
/// reads the 8-byte form).
fn put_counter_op(id: u64, c: Counters) -> WriteOp {
    let mut value = c.version.to_be_bytes().to_vec();
    if c.clock_ms != 0 {
        value.extend_from_slice(&c.clock_ms.to_be_bytes());
    }
    WriteOp::PutMeta {
        key: version_key(id),
        value,
    }
}

/// Region `id`'s counters; a region from before replication (no counter
/// yet) starts above every version the store gave.
pub fn load_counter(engine: &Engine, id: u64) -> crate::error::Result<Counters> {
    match engine.get_meta(&version_key(id))? {
        Some(raw) => Ok(decode_counters(&raw)?),
        None => Ok(Counters {
            version: engine.last_store_version()?,
            clock_ms: 0,
        }),
    }
}

/// Decodes a counter record: 8 bytes (version) or 16 (version, clock).
fn decode_counters(raw: &[u8]) -> rdb_storage::Result<Counters> {
    let what = "region version counter";
    match raw.len() {
        16 => Ok(Counters {
            version: rdb_storage::codec::decode_u64(&raw[..8], what)?,
            clock_ms: rdb_storage::codec::decode_u64(&raw[8..], what)?,
        }),
        _ => Ok(Counters {
            version: rdb_storage::codec::decode_u64(raw, what)?,
            clock_ms: 0,
        }),
    }
}

/// The prefixes of region `id`'s exactly-once records: kept by time
/// bucket, and from before buckets.
fn record_prefixes(id: u64) -> Vec<Vec<u8>> {
    vec![
        rdb_storage::dedup_bucket_prefix(id).to_vec(),
        rdb_storage::dedup_scope_prefix(id).to_vec(),
    ]
}

/// The writes that delete every exactly-once record of region `id` here
/// (before a snapshot brings the leader's, or with the replica).
pub fn clear_records_ops(id: u64) -> Vec<WriteOp> {
    let next = id.saturating_add(1);
    vec![
        WriteOp::ClearDedup {
            start: rdb_storage::dedup_bucket_prefix(id).to_vec(),
            end: rdb_storage::dedup_bucket_prefix(next).to_vec(),
        },
        WriteOp::ClearDedup {
            start: rdb_storage::dedup_scope_prefix(id).to_vec(),
            end: rdb_storage::dedup_scope_prefix(next).to_vec(),
        },
    ]
}

/// A Raft member record for a replica on `store`.
pub fn member(store: &Store) -> Member {
    Member {
        name: store.id.to_string(),
        address: store.address.clone(),
    }
}

/// The replica of a region just split off that campaigns at once: its
/// voter with the highest peer id (the split's proposer gives its own
/// store's replica that id).
pub fn first_campaigner(r: &Region) -> Option<u64> {
    r.peers
        .iter()
        .filter(|p| p.role != PeerRole::Learner as i32)
        .map(|p| p.id)
        .max()
}

/// The store of a Raft member record (its name is the store id).
pub fn member_store(m: &Member) -> Store {
    Store {
        id: m.name.parse().unwrap_or_default(),
        address: m.address.clone(),
        ..Default::default()
    }
}

/// What a region's state machine tells its store.
#[derive(Debug)]
pub enum Event {
    /// A split was applied here: the new region (its record and counter are
    /// on disk) needs its replica started.
    Split {
        /// The new region.
        right: Region,
    },
}

/// A write's request id, with the time its record is stamped with (the
/// entry's; `None`: the writer's clock, for format-0 entries).
type RecordId = Option<(rdb_storage::RequestId, Option<rdb_storage::RecordBucket>)>;

/// A region as its replica has applied it.
#[derive(Debug, Clone)]
struct Applied {
    region: Region,
    /// The last version given, and the region clock.
    counters: Counters,
}

/// The state machine of one replica of one region.
pub struct RegionMachine {
    engine: Engine,
    /// The region's id (its group's id; never changes).
    region_id: u64,
    state: RwLock<Applied>,
    events: mpsc::UnboundedSender<Event>,
    /// A term in which this replica proposed a split not applied yet: no
    /// lease reads in it (the new region's leader may be elsewhere and take
    /// writes for keys this region still holds until the split applies here).
    split_pending_term: AtomicU64,
    /// Moves by one when a snapshot install starts and again when it ends,
    /// and once (for good) when the replica is being destroyed: odd while
    /// the replica's data is not a state it applied (cleared and filled
    /// chunk by chunk, or being deleted). A read notes it before reading
    /// and checks it after ([`RegionMachine::data_generation`]).
    data_generation: AtomicU64,
    /// The digests this replica computed lately (the consistency check).
    pub digests: crate::digest::Digests,
    /// The length of an exactly-once time bucket, ms
    /// ([`command::DEDUP_BUCKET_MS`]; a test build's failpoint
    /// `dedup-bucket-ms` shortens it, on every store alike).
    bucket_ms: u64,
}

/// The first chunk of a region's snapshot, format 0 (FlareDB 0.1): its
/// record and counter. The later chunks ([`SnapshotPart`]) carry its data
/// and the exactly-once records of its writes (so that a replica added
/// later answers a re-sent write as the others do).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SnapshotHead {
    #[serde(with = "serde_bytes")]
    region: Vec<u8>,
    counter: u64,
}

/// The first chunk of a region's snapshot, format 1:
/// `[0x00][1][postcard(SnapshotHeadV1)]`. A format-0 head never starts
/// with 0x00 (it starts with the length of a region record, never empty).
/// Sent once the region clock has moved (the cluster writes format-1
/// entries, so every store reads it).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SnapshotHeadV1 {
    #[serde(with = "serde_bytes")]
    region: Vec<u8>,
    counter: u64,
    clock_ms: u64,
}

/// Encodes a snapshot head: format 0 while the clock is 0, else format 1.
fn encode_head(region: &Region, c: Counters) -> Result<Vec<u8>, String> {
    let region = region.encode_to_vec();
    if c.clock_ms == 0 {
        return postcard::to_stdvec(&SnapshotHead {
            region,
            counter: c.version,
        })
        .map_err(|e| e.to_string());
    }
    let mut out = vec![0x00, 1];
    out.extend(
        postcard::to_stdvec(&SnapshotHeadV1 {
            region,
            counter: c.version,
            clock_ms: c.clock_ms,
        })
        .map_err(|e| e.to_string())?,
    );
    Ok(out)
}

/// Decodes a snapshot head of any format this binary knows.
fn decode_head(raw: &[u8]) -> Result<(Region, Counters), String> {
    let (region, counters) = match raw {
        [0x00, 1, body @ ..] => {
            let h: SnapshotHeadV1 = postcard::from_bytes(body).map_err(|e| e.to_string())?;
            (
                h.region,
                Counters {
                    version: h.counter,
                    clock_ms: h.clock_ms,
                },
            )
        }
        [0x00, n, ..] => {
            return Err(format!(
                "snapshot head of unknown format {n} (sent by a newer FlareDB)"
            ))
        }
        _ => {
            let h: SnapshotHead = postcard::from_bytes(raw).map_err(|e| e.to_string())?;
            (
                h.region,
                Counters {
                    version: h.counter,
                    clock_ms: 0,
                },
            )
        }
    };
    let region = Region::decode(region.as_slice()).map_err(|e| e.to_string())?;
    Ok((region, counters))
}

/// Every later chunk of a region's snapshot: a part of its data, in key
/// order, then of its exactly-once records.
#[derive(Serialize, Deserialize)]
struct SnapshotPart {
    pairs: Vec<SnapshotPair>,
    /// Key and value in the `dedup` column family.
    dedup: Vec<SnapshotRecord>,
}

/// A key with its version and value.
#[derive(Serialize, Deserialize)]
struct SnapshotPair {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    version: u64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

/// An exactly-once record.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

fn storage_err(e: StorageError) -> String {
    e.to_string()
}

impl RegionMachine {
    /// The machine of a replica of `region`, whose counters are at `counters`.
    pub fn new(
        engine: Engine,
        region: Region,
        counters: Counters,
        events: mpsc::UnboundedSender<Event>,
    ) -> RegionMachine {
        RegionMachine {
            engine,
            region_id: region.id,
            state: RwLock::new(Applied { region, counters }),
            events,
            split_pending_term: AtomicU64::new(0),
            data_generation: AtomicU64::new(0),
            digests: Default::default(),
            bucket_ms: rdb_daemon::process::failpoint_number("dedup-bucket-ms")
                .filter(|ms| *ms > 0)
                .unwrap_or(command::DEDUP_BUCKET_MS),
        }
    }

    /// The generation of the replica's data: `None` while it is being
    /// replaced or deleted. A read served from the data between two calls
    /// that return the same `Some` saw one applied state.
    pub fn data_generation(&self) -> Option<u64> {
        let g = self.data_generation.load(Ordering::Acquire);
        g.is_multiple_of(2).then_some(g)
    }

    /// Marks the replica's data as being deleted: reads are refused from
    /// now on.
    pub fn begin_destroy(&self) {
        let _ = self
            .data_generation
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                g.is_multiple_of(2).then_some(g + 1)
            });
    }

    /// The region as applied here.
    pub fn region(&self) -> Region {
        self.read().region.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that this replica proposes a split in `term`.
    pub fn split_proposed(&self, term: u64) {
        self.split_pending_term.store(term, Ordering::Release);
    }

    /// Whether a split this replica proposed in `term` may still be pending.
    pub fn split_pending(&self, term: u64) -> bool {
        self.split_pending_term.load(Ordering::Acquire) == term
    }

    /// Queues `ops` with the entry's marks; returns the queued request.
    /// The request id's record is kept under the region's id, so that the
    /// region's snapshots carry it.
    async fn queue(
        &self,
        id: RecordId,
        ops: Vec<WriteOp>,
        marks: Vec<WriteOp>,
        first_version: Option<u64>,
    ) -> Result<Queued, String> {
        self.engine
            .enqueue_versioned(self.versioned(id, ops, marks, first_version))
            .await
            .map_err(storage_err)
    }

    /// [`queue`](Self::queue), with `done` called on the writer thread with
    /// the results.
    async fn queue_then(
        &self,
        id: RecordId,
        ops: Vec<WriteOp>,
        marks: Vec<WriteOp>,
        first_version: Option<u64>,
        done: impl FnOnce(rdb_storage::Result<Vec<OpResult>>) + Send + 'static,
    ) -> Result<(), String> {
        self.engine
            .enqueue_then(self.versioned(id, ops, marks, first_version), done)
            .await
            .map_err(storage_err)
    }

    fn versioned(
        &self,
        id: RecordId,
        ops: Vec<WriteOp>,
        marks: Vec<WriteOp>,
        first_version: Option<u64>,
    ) -> VersionedWrite {
        // The marks (the entry's applied index, the region's counter) are
        // written whatever the entry's outcome: a re-sent request id or an
        // invalid op leaves the data alone but not the bookkeeping, which
        // every replica must move alike.
        // Not synced: the group's synced log is the durable record of the
        // entry, applied again after a crash that lost this write (its
        // applied mark goes with it); a snapshot is built only after a
        // synced write (rdb-raft), before the log behind it is dropped.
        VersionedWrite {
            id: id.map(|(id, _)| id),
            bucket: id.and_then(|(_, b)| b),
            ops,
            always: marks,
            first_version,
            scope: self.region_id,
            sync: false,
        }
    }

    /// Queues a client write at the region's current epoch.
    async fn queue_write(
        &self,
        epoch_version: u64,
        request_id: Option<(u128, u64)>,
        ops: Vec<command::Op>,
        at_ms: Option<u64>,
        marks: Vec<WriteOp>,
        reply: Reply,
    ) -> Result<Waiting, String> {
        let numbered = {
            let mut st = self.write();
            if st.region.epoch_or_default().version != epoch_version {
                Err(Answer::EpochChanged(st.region.encode_to_vec()))
            } else {
                let first = st.counters.version + 1;
                let before = st.counters.clock_ms;
                st.counters.version += ops.iter().map(command::Op::versions).sum::<u64>();
                if let Some(at) = at_ms {
                    st.counters.clock_ms = before.max(at);
                }
                Ok((first, st.counters, before, st.region.id))
            }
        };
        let (first, counters, clock_before, region_id) = match numbered {
            Ok(n) => n,
            Err(answer) => {
                let q = self.queue(None, Vec::new(), marks, None).await?;
                return Ok(Waiting::Then(q, reply, Some(answer)));
            }
        };
        let ranged = ops
            .iter()
            .any(|op| matches!(op, command::Op::DeleteRange { .. }));
        let n = ops.len();
        #[allow(unused_mut)]
        let mut wops: Vec<WriteOp> = ops.iter().map(command::Op::to_write_op).collect();
        // Test builds only: this replica stores every put's value with a
        // byte more than its peers do (a replica gone wrong, for the tests
        // of the replica check).
        if rdb_daemon::process::failpoint_number("apply-tamper").is_some() {
            for op in &mut wops {
                if let WriteOp::Put { value, .. } = op {
                    value.push(b'!');
                }
            }
        }
        // The counters move with the entry even when the ops are not
        // applied (a re-sent request id): the versions were taken above.
        let mut marks = marks;
        marks.push(put_counter_op(region_id, counters));
        // A format-1 entry keeps its record in the region clock's bucket;
        // when the clock enters a new bucket, the buckets that can no
        // longer decide anything (all but this one and the one before) go.
        // A format-0 entry applied after format-1 ones (a store proposes
        // format 0 until PD tells it the cluster version, after a restart)
        // finds and keeps its record the same way, at the clock as it is:
        // its copy's record may be in a bucket already.
        let bucket = (at_ms.is_some() || counters.clock_ms > 0).then(|| {
            let (now, then) = (
                counters.clock_ms / self.bucket_ms,
                clock_before / self.bucket_ms,
            );
            if now > then && now >= 2 {
                marks.push(WriteOp::ClearDedup {
                    start: rdb_storage::dedup_bucket_start(region_id, 0),
                    end: rdb_storage::dedup_bucket_start(region_id, now - 1),
                });
            }
            rdb_storage::RecordBucket {
                at_ms: counters.clock_ms,
                bucket: now,
            }
        });
        let id = command::request_id(request_id).map(|id| (id, bucket));
        if ranged {
            let q = self.queue(id, wops, marks, Some(first)).await?;
            return Ok(Waiting::Written(q, reply, n));
        }
        // The writer thread sends the answer as soon as the write is done.
        let (tx, rx) = oneshot::channel();
        let done = move |res| {
            let sent = written(res, n).map(|a| reply.send(command::encode_answer(&a)));
            let _ = tx.send(sent);
        };
        self.queue_then(id, wops, marks, Some(first), done).await?;
        Ok(Waiting::Answered(rx))
    }

    /// Starts this replica's digest of the region as applied now, at log
    /// index `index` (see [`crate::digest`]).
    fn start_digest(&self, index: u64) -> Result<(), String> {
        let (Applied { region, counters }, view) = self.export_applied()?;
        self.digests.compute(index, &region, counters, view);
        Ok(())
    }

    /// The region as applied here, and a view of its data and records
    /// taken now, read in chunks (for a snapshot or a digest).
    fn export_applied(
        &self,
    ) -> Result<
        (
            Applied,
            mpsc::Receiver<rdb_storage::Result<rdb_storage::ExportChunk>>,
        ),
        String,
    > {
        let applied = self.read().clone();
        let region = &applied.region;
        let view = self
            .engine
            .export(
                region.start_key.clone(),
                region.end_key.clone(),
                record_prefixes(region.id),
                rdb_raft::CHUNK_BYTES,
            )
            .map_err(storage_err)?;
        Ok((applied, view))
    }

    /// Applies a split entry after the entries queued before it, and
    /// answers it.
    async fn split_entry(
        &self,
        split: SplitParts,
        marks: Vec<WriteOp>,
        reply: Reply,
        waiting: &mut Vec<Waiting>,
    ) -> Result<(), String> {
        for w in waiting.drain(..) {
            w.finish().await?;
        }
        let answer = self.apply_split(split, marks).await?;
        reply.send(command::encode_answer(&answer));
        Ok(())
    }

    /// Applies a split entry; returns its answer.
    async fn apply_split(&self, split: SplitParts, marks: Vec<WriteOp>) -> Result<Answer, String> {
        let SplitParts {
            epoch,
            split_key,
            new_region_id,
            new_peer_ids,
            members,
        } = split;
        // Test builds only: this replica applies splits late (a slow disk),
        // while its peers go on.
        rdb_daemon::process::failpoint_pause("split-apply-delay").await;
        let (region, counters) = {
            let st = self.read();
            (st.region.clone(), st.counters)
        };
        let cur = region.epoch_or_default();
        let refused = if (cur.version, cur.conf_ver) != epoch {
            Some(Answer::EpochChanged(region.encode_to_vec()))
        } else if split_key.is_empty()
            || split_key == region.start_key
            || !region.contains(&split_key)
        {
            Some(Answer::Refused(format!(
                "split key {} is not strictly inside region {}",
                rdb_proto::region::display_key(&split_key),
                region.id
            )))
        } else if new_peer_ids.len() != region.peers.len()
            || new_region_id == 0
            || new_region_id == region.id
        {
            Some(Answer::Refused(format!(
                "split of region {} needs a new region id and {} peer ids, got {new_region_id} and {}",
                region.id,
                region.peers.len(),
                new_peer_ids.len()
            )))
        } else {
            None
        };
        if let Some(answer) = refused {
            self.queue(None, Vec::new(), marks, None)
                .await?
                .wait()
                .await
                .map_err(storage_err)?;
            return Ok(answer);
        }
        let new_epoch = RegionEpoch {
            version: cur.version + 1,
            conf_ver: cur.conf_ver,
        };
        let left = Region {
            end_key: split_key.clone(),
            epoch: Some(new_epoch),
            ..region.clone()
        };
        let right = Region {
            id: new_region_id,
            start_key: split_key,
            end_key: region.end_key.clone(),
            epoch: Some(new_epoch),
            store_id: region.store_id,
            peers: region
                .peers
                .iter()
                .zip(&new_peer_ids)
                .map(|(p, id)| Peer { id: *id, ..*p })
                .collect(),
        };
        // The left half's new range is visible at once to the entries after
        // this one; the right half starts once both are on disk.
        self.write().region = left.clone();
        let mut ops = vec![
            put_region_op(&left),
            put_region_op(&right),
            put_counter_op(right.id, counters),
        ];
        if let Some(members) = members {
            ops.extend(self.seed_group(&right, members)?);
        }
        self.queue(None, ops, marks, None)
            .await?
            .wait()
            .await
            .map_err(storage_err)?;
        self.split_pending_term.store(0, Ordering::Release);
        tracing::info!(
            region_id = left.id,
            new_region_id = right.id,
            split_key = %rdb_proto::region::display_key(&right.start_key),
            "applied split"
        );
        let _ = self.events.send(Event::Split {
            right: right.clone(),
        });
        Ok(Answer::Split {
            left: left.encode_to_vec(),
            right: right.encode_to_vec(),
        })
    }

    /// The writes that create this store's member of the Raft group of
    /// `right`, a region just split off, with the group's first log entry
    /// (the same on every replica: the split entry carries `members`). None
    /// when `members` do not match the region's peers (its replica then
    /// starts as before seeding: each replica writes its own first entry).
    fn seed_group(
        &self,
        right: &Region,
        members: Vec<(u64, u64, String)>,
    ) -> Result<Vec<WriteOp>, String> {
        let ids: std::collections::BTreeSet<u64> = right.peers.iter().map(|p| p.id).collect();
        if members.len() != ids.len() || members.iter().any(|(id, _, _)| !ids.contains(id)) {
            tracing::warn!(
                region_id = right.id,
                ?members,
                "split entry's members do not match the new region's peers: group not seeded"
            );
            return Ok(Vec::new());
        }
        let voters = right
            .peers
            .iter()
            .filter(|p| p.role != PeerRole::Learner as i32)
            .map(|p| p.id)
            .collect();
        let first = first_campaigner(right).unwrap_or_default();
        let members = members
            .into_iter()
            .map(|(id, store_id, address)| {
                (
                    id,
                    Member {
                        name: store_id.to_string(),
                        address,
                    },
                )
            })
            .collect();
        rdb_raft::seed_ops(&self.engine, right.id, first, members, voters)
            .map_err(|e| format!("seeding region {}'s group: {e}", right.id))
    }

    /// Applies a membership entry: the region's peers follow the group's
    /// members (conf_ver + 1 when they change).
    fn apply_membership(&self, m: &Membership) -> Option<WriteOp> {
        let mut st = self.write();
        let role = |id: &NodeId| {
            if m.voters.contains(id) {
                PeerRole::Voter
            } else {
                PeerRole::Learner
            }
        };
        let mut peers: Vec<Peer> = st
            .region
            .peers
            .iter()
            .filter(|p| m.members.contains_key(&p.id))
            .map(|p| Peer {
                role: role(&p.id) as i32,
                ..*p
            })
            .collect();
        for (id, member) in &m.members {
            if !peers.iter().any(|p| p.id == *id) {
                peers.push(Peer {
                    id: *id,
                    store_id: member.name.parse().unwrap_or_default(),
                    role: role(id) as i32,
                });
            }
        }
        let normalize = |ps: &[Peer]| -> BTreeMap<u64, (u64, i32)> {
            ps.iter()
                .map(|p| {
                    let role = if p.role == PeerRole::Learner as i32 {
                        PeerRole::Learner as i32
                    } else {
                        PeerRole::Voter as i32
                    };
                    (p.id, (p.store_id, role))
                })
                .collect()
        };
        if normalize(&peers) == normalize(&st.region.peers) {
            return None;
        }
        let mut epoch = st.region.epoch_or_default();
        epoch.conf_ver += 1;
        st.region.peers = peers;
        st.region.epoch = Some(epoch);
        Some(put_region_op(&st.region))
    }
}

#[tonic::async_trait]
impl BatchMachine for RegionMachine {
    async fn apply(&self, entries: Vec<Entry>) -> Result<(), String> {
        // Queued and not yet written, in entry order.
        let mut waiting: Vec<Waiting> = Vec::new();
        for e in entries {
            let Entry {
                index,
                command,
                membership,
                marks,
                reply,
            } = e;
            let cmd = match (command, membership) {
                (Some(raw), _) => match command::decode_entry(&raw) {
                    Ok((c, _format)) => c,
                    // Written by a newer binary: the peers that read it
                    // apply it, so this replica must not go on without it.
                    Err(e @ command::DecodeError::UnknownFormat(_)) => {
                        tracing::error!(index, error = %e, "cannot apply an entry: upgrade this store");
                        return Err(format!("entry {index}: {e}"));
                    }
                    // Malformed in a format this binary reads: every replica
                    // of this version refuses it alike.
                    Err(e @ command::DecodeError::Malformed { .. }) => {
                        tracing::error!(index, error = %e, "skipping an undecodable entry");
                        let q = self.queue(None, Vec::new(), marks, None).await?;
                        waiting.push(Waiting::Then(
                            q,
                            reply,
                            Some(Answer::Refused(e.to_string())),
                        ));
                        continue;
                    }
                },
                (None, Some(m)) => {
                    let ops: Vec<WriteOp> = self.apply_membership(&m).into_iter().collect();
                    let q = self.queue(None, ops, marks, None).await?;
                    waiting.push(Waiting::Then(q, reply, None));
                    continue;
                }
                (None, None) => {
                    let q = self.queue(None, Vec::new(), marks, None).await?;
                    waiting.push(Waiting::Then(q, reply, None));
                    continue;
                }
            };
            match cmd {
                Command::Write {
                    epoch_version,
                    request_id,
                    ops,
                    at_ms,
                } => match self
                    .queue_write(epoch_version, request_id, ops, at_ms, marks, reply)
                    .await?
                {
                    // A counted range deletion waits for its count in the
                    // writer: the entries after it wait for it.
                    w @ Waiting::Written(..) => w.finish().await?,
                    w => waiting.push(w),
                },
                Command::Split {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                } => {
                    let split = SplitParts {
                        epoch,
                        split_key,
                        new_region_id,
                        new_peer_ids,
                        members: None,
                    };
                    self.split_entry(split, marks, reply, &mut waiting).await?;
                }
                Command::SplitSeeded {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                    members,
                } => {
                    let split = SplitParts {
                        epoch,
                        split_key,
                        new_region_id,
                        new_peer_ids,
                        members: Some(members),
                    };
                    self.split_entry(split, marks, reply, &mut waiting).await?;
                }
                Command::ComputeDigest => {
                    // The view is taken once every entry before this one
                    // is written, and before any after it is.
                    for w in waiting.drain(..) {
                        w.finish().await?;
                    }
                    self.start_digest(index)?;
                    let q = self.queue(None, Vec::new(), marks, None).await?;
                    waiting.push(Waiting::Then(q, reply, Some(Answer::DigestAt(index))));
                }
            }
        }
        for w in waiting {
            w.finish().await?;
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Chunks, String> {
        // The view is taken now (no apply runs during this call); the
        // chunks are read from it while the region goes on.
        let (Applied { region, counters }, rx) = self.export_applied()?;
        let head = encode_head(&region, counters)?;
        let parts = futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            let part = chunk.map_err(storage_err).and_then(|c| {
                postcard::to_stdvec(&SnapshotPart {
                    pairs: c
                        .pairs
                        .into_iter()
                        .map(|e| SnapshotPair {
                            key: e.key,
                            version: e.version,
                            value: e.value,
                        })
                        .collect(),
                    dedup: c
                        .dedup
                        .into_iter()
                        .map(|(key, value)| SnapshotRecord { key, value })
                        .collect(),
                })
                .map_err(|e| e.to_string())
            });
            Some((part, rx))
        });
        Ok(futures::stream::once(async move { Ok(head) })
            .chain(parts)
            .boxed())
    }

    async fn restore(&self, mut chunks: Chunks, marks: Vec<WriteOp>) -> Result<(), String> {
        let head = chunks
            .next()
            .await
            .ok_or_else(|| "a region snapshot without its head".to_string())??;
        let (region, counters) = decode_head(&head)?;
        let old = self.region();
        // Reads are refused from here until the install is done: the data
        // is cleared, then filled chunk by chunk.
        self.data_generation.fetch_add(1, Ordering::AcqRel);
        // First whatever the replica held (or an earlier, cut short run of
        // this restore wrote), its records included, then the data chunk by chunk, then the
        // region, its counter and the marks in one last write.
        let mut clear = vec![WriteOp::ClearRange {
            start: region.start_key.clone(),
            end: region.end_key.clone(),
        }];
        // The replica's own records go too: the snapshot carries the ones
        // its peers hold, and a record only this replica kept would make
        // it decide a re-sent request differently.
        clear.extend(clear_records_ops(region.id));
        if !old.peers.is_empty()
            && (old.start_key.as_slice(), old.end_key.as_slice())
                != (region.start_key.as_slice(), region.end_key.as_slice())
        {
            clear.push(WriteOp::ClearRange {
                start: old.start_key.clone(),
                end: old.end_key.clone(),
            });
        }
        self.engine.write(clear).await.map_err(storage_err)?;
        // Test builds only: the install pauses with the replica's data
        // cleared (a large snapshot arriving slowly).
        rdb_daemon::process::failpoint_pause("snapshot-restore-pause").await;
        let mut pairs = 0usize;
        while let Some(chunk) = chunks.next().await {
            let part: SnapshotPart = postcard::from_bytes(&chunk?).map_err(|e| e.to_string())?;
            pairs += part.pairs.len();
            let mut ops: Vec<WriteOp> = part
                .pairs
                .into_iter()
                .map(|p| WriteOp::Import {
                    key: p.key,
                    value: p.value,
                    version: p.version,
                })
                .collect();
            ops.extend(part.dedup.into_iter().map(|r| WriteOp::PutDedup {
                key: r.key,
                value: r.value,
            }));
            if !ops.is_empty() {
                self.engine.write(ops).await.map_err(storage_err)?;
            }
            // Test builds only: a crash in the middle of an install.
            fail::fail_point!("snapshot-restore-crash", |_| {
                tracing::error!("failpoint snapshot-restore-crash: aborting");
                std::process::abort()
            });
        }
        let mut ops = vec![put_region_op(&region), put_counter_op(region.id, counters)];
        ops.extend(marks);
        self.engine.write(ops).await.map_err(storage_err)?;
        tracing::info!(region_id = region.id, keys = pairs, "installed a snapshot");
        *self.write() = Applied { region, counters };
        self.data_generation.fetch_add(1, Ordering::AcqRel);
        // Test builds only: the entries after the snapshot wait to be applied.
        rdb_daemon::process::failpoint_pause("snapshot-installed-pause").await;
        Ok(())
    }
}

/// A queued write of an entry, and how its answer goes out.
enum Waiting {
    /// A client write: the writer thread sends its answer, then reports
    /// here.
    Answered(oneshot::Receiver<Result<(), String>>),
    /// Answered with this answer (`None`: an empty one) once written.
    Then(Queued, Reply, Option<Answer>),
    /// A client write of `n` ops answered from its results once written.
    Written(Queued, Reply, usize),
}

impl Waiting {
    /// Waits until the write is done and its answer sent.
    async fn finish(self) -> Result<(), String> {
        match self {
            Waiting::Answered(rx) => rx
                .await
                .map_err(|_| "the storage writer stopped".to_string())?,
            Waiting::Then(q, reply, answer) => {
                q.wait().await.map_err(storage_err)?;
                reply.send(
                    answer
                        .map(|a| command::encode_answer(&a))
                        .unwrap_or_default(),
                );
                Ok(())
            }
            Waiting::Written(q, reply, n) => {
                let answer = written(q.wait().await, n)?;
                reply.send(command::encode_answer(&answer));
                Ok(())
            }
        }
    }
}

/// The answer of a queued client write of `n` ops (the results of the
/// counter and marks written with it are dropped).
fn written(r: rdb_storage::Result<Vec<OpResult>>, n: usize) -> Result<Answer, String> {
    match r {
        Ok(results) => Ok(Answer::Written(results.into_iter().take(n).collect())),
        // Refused as a whole before anything was written: the same on every
        // replica (the checks depend only on the entry).
        Err(StorageError::InvalidArgument(m)) => Ok(Answer::Refused(m)),
        Err(e) => Err(storage_err(e)),
    }
}

/// One replica of a region on this store.
pub struct RegionPeer {
    /// Its Raft group member.
    pub group: rdb_raft::Group,
    /// Its state machine.
    pub machine: Arc<RegionMachine>,
    /// The conf_ver its addition to the group followed (see
    /// [`crate::operator::AddedPeer`]); 0 for a replica its region was
    /// created with (at bootstrap or a split), a member from the start.
    pub joined_after: u64,
    /// The entry format this store proposes in (shared by its replicas).
    pub formats: Arc<command::FormatGate>,
}

/// Why a proposal did not give an answer.
#[derive(Debug)]
pub enum ProposeError {
    /// Not the leader: nothing was proposed.
    NotLeader(RegionError),
    /// The outcome is unknown (the group stopped or lost leadership after
    /// the entry was appended): it may still be applied.
    Unknown(String),
    /// Not proposed: the cluster's entry format cannot carry the command.
    Refused(String),
}

impl RegionPeer {
    /// The region as applied here.
    pub fn region(&self) -> Region {
        self.machine.region()
    }

    /// The `NotLeader` error naming the leader this replica knows, never
    /// itself: a replica that believes it leads but cannot act as leader (cut
    /// off from its peers, its term over) names no leader, so that a client
    /// asks PD instead of coming back here.
    pub fn not_leader(&self, leader: Option<(NodeId, Member)>) -> RegionError {
        let region_id = self.region().id;
        let me = self.group.node_id();
        let leader = leader
            .filter(|(id, _)| *id != me)
            .map(|(_, m)| member_store(&m));
        RegionError::new(
            match &leader {
                Some(s) => format!(
                    "this store does not lead region {region_id}; store {} ({}) does",
                    s.id, s.address
                ),
                None => format!("this store does not lead region {region_id}; no leader known"),
            },
            RegionErrorKind::NotLeader(NotLeader { region_id, leader }),
        )
    }

    /// Checks that this replica may serve a linearizable read now: it
    /// leads, and its lease holds (no round trip) or a ReadIndex round
    /// confirms it (which also waits until everything committed before it
    /// is applied here).
    pub async fn ready_to_read(&self) -> Result<(), RegionError> {
        let term = self.group.term();
        if self.group.lease_holds() && !self.machine.split_pending(term) {
            return Ok(());
        }
        // A leader cut off from its replicas gets no answer to its round:
        // after an election timeout it cannot be sure it still leads.
        let wait = self.group.timing().election_max;
        match tokio::time::timeout(wait, self.group.ensure_leader()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(rdb_raft::Error::NotLeader { leader })) => Err(self.not_leader(leader)),
            Ok(Err(e)) => Err(self.not_leader_because(&e)),
            Err(_) => Err(self.not_leader_because(&rdb_raft::Error::Refused(format!(
                "no majority confirmed the leadership within {wait:?}"
            )))),
        }
    }

    /// Whether this replica may serve a stale read: it holds the region's
    /// data (initialized, and a member of its own applied membership).
    pub fn ready_to_read_stale(&self) -> Result<(), RegionError> {
        let region = self.region();
        let me = self.group.node_id();
        if region.peers.iter().any(|p| p.id == me) {
            Ok(())
        } else {
            let mut err = self.not_leader(self.group.leader());
            err.message = format!(
                "{}: this replica does not hold the region's data yet",
                err.message
            );
            Err(err)
        }
    }

    fn not_leader_because(&self, e: &rdb_raft::Error) -> RegionError {
        let mut err = self.not_leader(self.group.leader());
        err.message = format!("{}: {e}", err.message);
        err
    }

    /// Proposes `cmd` and waits until it is applied here.
    pub async fn propose(&self, cmd: &Command) -> Result<Answer, ProposeError> {
        if matches!(cmd, Command::Split { .. } | Command::SplitSeeded { .. }) {
            self.machine.split_proposed(self.group.term());
        }
        // A proposal that no majority commits (a leader cut off from its
        // replicas) is answered as unknown after two election timeouts: the
        // client re-sends it, with its request id, to the leader PD knows.
        let wait = 2 * self.group.timing().election_max;
        let entry = command::encode_entry(cmd, self.formats.get())
            .map_err(|e| ProposeError::Refused(e.to_string()))?;
        match tokio::time::timeout(wait, self.group.write(entry)).await {
            Ok(Ok(raw)) => command::decode_answer(&raw).map_err(ProposeError::Unknown),
            Ok(Err(rdb_raft::Error::NotLeader { leader })) => {
                Err(ProposeError::NotLeader(self.not_leader(leader)))
            }
            Ok(Err(e)) => Err(ProposeError::Unknown(e.to_string())),
            Err(_) => Err(ProposeError::Unknown(format!(
                "not committed within {wait:?} (no majority answers this replica)"
            ))),
        }
    }
}

/// The `EpochNotMatch` error for a region as it is now.
pub fn epoch_changed(current: Region) -> RegionError {
    let e = current.epoch_or_default();
    RegionError::new(
        format!(
            "region {} changed while the request waited (now {{version {}, conf_ver {}}})",
            current.id, e.version, e.conf_ver
        ),
        RegionErrorKind::EpochNotMatch(EpochNotMatch {
            current_regions: vec![current],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::hex;

    fn region() -> Region {
        Region {
            id: 2,
            ..Default::default()
        }
    }

    /// Golden bytes of the snapshot heads and counter records that shipped:
    /// they decode forever, and each is still written the same way.
    #[test]
    fn shipped_snapshot_heads_and_counter_records_decode_forever() {
        let v0 = Counters {
            version: 7,
            clock_ms: 0,
        };
        let v1 = Counters {
            version: 7,
            clock_ms: 1000,
        };
        // Format 0 (0.1): postcard of (region record, counter).
        assert_eq!(encode_head(&region(), v0).unwrap(), hex("02 08 02 07"));
        assert_eq!(decode_head(&hex("02 08 02 07")).unwrap(), (region(), v0));
        // Format 1 (0.2, once the region clock moved).
        let raw = hex("00 01 02 08 02 07 e8 07");
        assert_eq!(encode_head(&region(), v1).unwrap(), raw);
        assert_eq!(decode_head(&raw).unwrap(), (region(), v1));
        assert!(decode_head(&hex("00 02 02 08 02 07"))
            .unwrap_err()
            .contains("unknown format 2"));
        // Counter records: 8 bytes (0.1), 16 with the clock (0.2).
        let WriteOp::PutMeta { value, .. } = put_counter_op(2, v0) else {
            panic!("a meta write")
        };
        assert_eq!(value, hex("00 00 00 00 00 00 00 07"));
        assert_eq!(decode_counters(&value).unwrap(), v0);
        let WriteOp::PutMeta { value, .. } = put_counter_op(2, v1) else {
            panic!("a meta write")
        };
        assert_eq!(
            value,
            hex("00 00 00 00 00 00 00 07 00 00 00 00 00 00 03 e8")
        );
        assert_eq!(decode_counters(&value).unwrap(), v1);
        assert!(decode_counters(&hex("01 02 03")).is_err());
        // Every later chunk of a snapshot (unchanged since 0.1).
        let part = SnapshotPart {
            pairs: vec![SnapshotPair {
                key: b"k".to_vec(),
                version: 7,
                value: b"v".to_vec(),
            }],
            dedup: vec![SnapshotRecord {
                key: vec![1],
                value: vec![2],
            }],
        };
        let raw = hex("01 01 6b 07 01 76 01 01 01 01 02");
        assert_eq!(postcard::to_stdvec(&part).unwrap(), raw);
        let back: SnapshotPart = postcard::from_bytes(&raw).unwrap();
        assert_eq!(
            (
                back.pairs[0].key.as_slice(),
                back.pairs[0].version,
                back.pairs[0].value.as_slice()
            ),
            (&b"k"[..], 7, &b"v"[..])
        );
        assert_eq!(
            (back.dedup[0].key.as_slice(), back.dedup[0].value.as_slice()),
            (&[1u8][..], &[2u8][..])
        );
    }
}
