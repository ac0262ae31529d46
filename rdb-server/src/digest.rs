//! Replica digests: the consistency check (TiKV's `ComputeHash` is the
//! anchor; see `specs/008-replica-consistency/spec.md`, section 4).
//!
//! A digest entry (`Command::ComputeDigest`) is applied by every replica of
//! a region at the same log index; each takes a view of its state there
//! (after every earlier entry is written) and hashes it off the apply path:
//! the region's id, range and epoch, its version counter and clock, every key with its
//! version and value, and every exactly-once record of the region (its key
//! and answer; not its time, which format-0 entries left to each replica's
//! clock). Replicas that agree have equal digests at equal indexes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rdb_proto::v1::{ComputeDigestResponse, Region, RegionDigest, RegionDigestsResponse};
use rdb_storage::ExportChunk;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::command::{Answer, Command};
use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::peer::ProposeError;
use crate::regions::not_found;

impl Node {
    /// Has every replica of `region_id` compute its digest at one entry
    /// (on the leader); the entry's index.
    pub async fn compute_digest(&self, region_id: u64) -> Result<ComputeDigestResponse> {
        let Some(peer) = self.regions().get(region_id) else {
            return Ok(ComputeDigestResponse {
                region_error: Some(not_found(region_id)),
                index: 0,
            });
        };
        match peer.propose(&Command::ComputeDigest).await {
            Ok(Answer::DigestAt(index)) => Ok(ComputeDigestResponse {
                region_error: None,
                index,
            }),
            Ok(other) => Err(ServerError::Internal(format!(
                "unexpected answer to a digest entry: {other:?}"
            ))),
            Err(ProposeError::NotLeader(e)) => Ok(ComputeDigestResponse {
                region_error: Some(e),
                index: 0,
            }),
            Err(ProposeError::Unknown(m)) => Err(ServerError::Unavailable(format!(
                "the digest entry of region {region_id} may or may not be applied: {m}"
            ))),
            Err(ProposeError::Refused(m)) => Err(ServerError::FailedPrecondition(m)),
        }
    }

    /// The digests this store's replica of `region_id` computed lately.
    pub fn region_digests(&self, region_id: u64) -> RegionDigestsResponse {
        match self.regions().get(region_id) {
            Some(peer) => RegionDigestsResponse {
                region_error: None,
                digests: peer.machine.digests.list(),
            },
            None => RegionDigestsResponse {
                region_error: Some(not_found(region_id)),
                digests: Vec::new(),
            },
        }
    }
}

/// The digests a replica keeps: the last few.
const KEPT: usize = 8;

/// The digests of one replica, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Digests(Arc<Mutex<VecDeque<RegionDigest>>>);

impl Digests {
    /// The digests kept, oldest first.
    pub fn list(&self) -> Vec<RegionDigest> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RegionDigest>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, d: RegionDigest) {
        let mut l = self.lock();
        match l.iter_mut().find(|x| x.index == d.index) {
            Some(x) => *x = d,
            None => {
                l.push_back(d);
                while l.len() > KEPT {
                    l.pop_front();
                }
            }
        }
    }

    /// Hashes the view `chunks` of `region` (whose counters are `counters`) as
    /// of log index `index`, in a task of its own; the digest is listed at
    /// once, empty until done.
    pub fn compute(
        &self,
        index: u64,
        region: &Region,
        counters: crate::peer::Counters,
        chunks: mpsc::Receiver<rdb_storage::Result<ExportChunk>>,
    ) {
        self.set(RegionDigest {
            index,
            ..Default::default()
        });
        let head = head(region, counters);
        let me = self.clone();
        let region_id = region.id;
        tokio::spawn(async move {
            let d = match hash(head, chunks).await {
                Ok((digest, keys, records)) => RegionDigest {
                    index,
                    digest,
                    keys,
                    records,
                    error: String::new(),
                },
                Err(e) => {
                    tracing::warn!(region_id, index, error = %e, "replica digest failed");
                    RegionDigest {
                        index,
                        error: e.to_string(),
                        ..Default::default()
                    }
                }
            };
            tracing::info!(region_id, index, keys = d.keys, records = d.records, digest = %hex(&d.digest), "replica digest");
            me.set(d);
        });
    }
}

/// What the digest says of the region itself.
fn head(region: &Region, counters: crate::peer::Counters) -> Vec<u8> {
    let epoch = region.epoch_or_default();
    let mut h = Vec::new();
    h.extend_from_slice(b"flaredb-region-digest-1");
    h.extend_from_slice(&region.id.to_be_bytes());
    field(&mut h, &region.start_key);
    field(&mut h, &region.end_key);
    h.extend_from_slice(&epoch.version.to_be_bytes());
    h.extend_from_slice(&epoch.conf_ver.to_be_bytes());
    h.extend_from_slice(&counters.version.to_be_bytes());
    h.extend_from_slice(&counters.clock_ms.to_be_bytes());
    h
}

/// A length-prefixed field (lengths are below 4 GiB: keys and values are
/// capped far lower).
fn field(h: &mut Vec<u8>, bytes: &[u8]) {
    h.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    h.extend_from_slice(bytes);
}

/// SHA-256 over the head, then the data's and the records' own hashes (so
/// that how the view was cut into chunks does not matter); with the
/// numbers of keys and records.
async fn hash(
    head: Vec<u8>,
    mut chunks: mpsc::Receiver<rdb_storage::Result<ExportChunk>>,
) -> rdb_storage::Result<(Vec<u8>, u64, u64)> {
    let (mut data, mut recs) = (Sha256::new(), Sha256::new());
    let (mut keys, mut records) = (0u64, 0u64);
    let mut buf = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        for p in chunk.pairs {
            buf.clear();
            field(&mut buf, &p.key);
            buf.extend_from_slice(&p.version.to_be_bytes());
            field(&mut buf, &p.value);
            data.update(&buf);
            keys += 1;
        }
        for (k, v) in chunk.dedup {
            buf.clear();
            field(&mut buf, &k);
            field(&mut buf, &rdb_storage::codec::dedup_without_time(&v)?);
            recs.update(&buf);
            records += 1;
        }
    }
    let mut all = Sha256::new();
    all.update(&head);
    all.update(data.finalize());
    all.update(recs.finalize());
    Ok((all.finalize().to_vec(), keys, records))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
