//! The replica check: do a region's replicas hold the same state?
//!
//! The region's leader proposes a digest entry; every replica hashes its
//! state once it has applied that entry (see `rdb-server`'s `digest`), and
//! the client compares what each replica's store reports for that index.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::store_admin_client::StoreAdminClient;
use rdb_proto::v1::{ComputeDigestRequest, RegionDigestsRequest};

use crate::error::{Error, Result};
use crate::{pd, Client};

/// One replica's digest of its region at the check's log index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The replica's peer id.
    pub peer_id: u64,
    /// Its store.
    pub store_id: u64,
    /// The store's address.
    pub address: String,
    /// SHA-256 of the replica's state at the index; `None` when it could not
    /// be had (see `error`).
    pub digest: Option<Vec<u8>>,
    /// Keys hashed.
    pub keys: u64,
    /// Exactly-once records hashed.
    pub records: u64,
    /// Why there is no digest: the store could not be asked, the replica
    /// did not apply the index within the wait, or its digest failed.
    pub error: Option<String>,
}

/// The outcome of [`Client::check_replicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCheck {
    /// The region.
    pub region_id: u64,
    /// The log index of the digest entry.
    pub index: u64,
    /// Each replica's digest, in the region's peer order.
    pub replicas: Vec<ReplicaDigest>,
}

impl ReplicaCheck {
    /// Whether every replica has a digest and all are equal.
    pub fn agree(&self) -> bool {
        let mut digests = self.replicas.iter().map(|r| r.digest.as_ref());
        match digests.next() {
            Some(Some(first)) => digests.all(|d| d == Some(first)),
            Some(None) | None => false,
        }
    }
}

/// Tries of the digest entry while the region's leader moves.
const LEADER_TRIES: u32 = 20;

impl Client {
    /// Checks that region `region_id`'s replicas hold the same state: its
    /// leader writes a digest entry to the region's log, each replica hashes
    /// its state (keys, versions, values, version counter, exactly-once
    /// records) once it has applied that entry, and the digests are
    /// gathered from every replica's store, waiting up to `wait` for
    /// replicas still applying. Needs a cluster of FlareDB 0.2 or later.
    pub async fn check_replicas(&self, region_id: u64, wait: Duration) -> Result<ReplicaCheck> {
        let (route, index) = self.digest_entry(region_id).await?;
        let region = route.region.unwrap_or_default();
        let addresses: HashMap<u64, String> = self
            .stores()
            .await?
            .into_iter()
            .map(|s| (s.id, s.address))
            .collect();
        let deadline = Instant::now() + wait;
        let mut replicas = Vec::new();
        for p in &region.peers {
            let address = addresses.get(&p.store_id).cloned().unwrap_or_default();
            replicas.push(
                self.replica_digest(region_id, index, p, address, deadline)
                    .await,
            );
        }
        Ok(ReplicaCheck {
            region_id,
            index,
            replicas,
        })
    }

    /// Has the region's leader propose a digest entry; the route it was
    /// proposed on, and the entry's index.
    async fn digest_entry(&self, region_id: u64) -> Result<(rdb_proto::v1::RegionRoute, u64)> {
        let mut last = String::from("no leader known");
        for _ in 0..LEADER_TRIES {
            let route = self
                .regions()
                .await?
                .into_iter()
                .find(|r| r.region.as_ref().is_some_and(|g| g.id == region_id))
                .ok_or_else(|| Error::NotFound(format!("region {region_id} is not in PD's map")))?;
            let Some(leader) = route.leader.clone() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut admin =
                StoreAdminClient::new(pd::channel(&leader.address, &self.inner.config)?);
            match admin
                .compute_digest(ComputeDigestRequest { region_id })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    match r.region_error {
                        None => return Ok((route, r.index)),
                        Some(e) => {
                            last = e.message.clone();
                            if !matches!(e.error, Some(RegionErrorKind::NotLeader(_))) {
                                return Err(Error::RegionUnavailable {
                                    attempts: 1,
                                    message: e.message,
                                });
                            }
                        }
                    }
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    return Err(Error::from_status(&s))
                }
                Err(s) => last = s.message().to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(Error::RegionUnavailable {
            attempts: LEADER_TRIES,
            message: last,
        })
    }

    /// Peer `p`'s digest at `index`, asked of its store until `deadline`.
    async fn replica_digest(
        &self,
        region_id: u64,
        index: u64,
        p: &rdb_proto::v1::Peer,
        address: String,
        deadline: Instant,
    ) -> ReplicaDigest {
        let mut out = ReplicaDigest {
            peer_id: p.id,
            store_id: p.store_id,
            address: address.clone(),
            digest: None,
            keys: 0,
            records: 0,
            error: None,
        };
        let mut last = format!("did not apply index {index} in time");
        loop {
            let asked = match pd::channel(&address, &self.inner.config) {
                Ok(ch) => StoreAdminClient::new(ch)
                    .region_digests(RegionDigestsRequest { region_id })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(e.to_string()),
            };
            match asked {
                Ok(r) => {
                    if let Some(d) = r.digests.iter().find(|d| d.index == index) {
                        if !d.error.is_empty() {
                            out.error = Some(d.error.clone());
                            return out;
                        }
                        if !d.digest.is_empty() {
                            out.digest = Some(d.digest.clone());
                            out.keys = d.keys;
                            out.records = d.records;
                            return out;
                        }
                    } else if r.digests.iter().any(|d| d.index > index) {
                        out.error = Some(format!("its digest at index {index} is gone"));
                        return out;
                    }
                    if let Some(e) = r.region_error {
                        last = e.message;
                    }
                }
                Err(m) => last = m,
            }
            if Instant::now() >= deadline {
                out.error = Some(last);
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
