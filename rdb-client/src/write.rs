//! Writes that are applied once, even when they have to be sent again.
//!
//! Every write RPC carries a [`RequestId`]: this client's random 16-byte id
//! and a sequence number drawn once per request. A store records the id with
//! the write's results in the same RocksDB write as the data and answers a
//! second copy of the request with those results instead of applying it
//! again (`rdb_storage`'s dedup records). So when the connection fails after
//! a write was sent (timeout, reset, store killed), the client re-sends the
//! same request, with the same id, to the same region at the same epoch:
//!
//! - the answer comes back: done, exactly once;
//! - the store answers with a region error (the region split or moved
//!   meanwhile): the first copy may or may not have been applied and the
//!   store that knows is no longer asked, so the call fails with
//!   [`Error::Undetermined`] rather than risk a second application
//!   elsewhere;
//! - no answer within the budget, or older than
//!   [`ClientConfig::max_resend_age`](crate::ClientConfig::max_resend_age)
//!   (stores forget ids after their dedup window): [`Error::Undetermined`].
//!
//! Before any copy may have arrived (a region error, a busy store, a
//! connection that was never established), nothing was applied and the
//! request is routed afresh like a read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{RegionError, RegionRoute, RequestId};
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{classify, describe, Error, Failure, Result};
use crate::retry::{Attempt, Retry};
use crate::routing::leader_address;
use crate::Client;

/// Hands out this client's request ids.
pub(crate) struct RequestIds {
    /// 16 random bytes naming this client (per `Client::connect`).
    client: Vec<u8>,
    /// The last sequence number handed out.
    seq: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            client: rand::random::<[u8; 16]>().to_vec(),
            seq: AtomicU64::new(0),
        }
    }

    /// A new id, never handed out before by this client.
    pub fn next(&self) -> RequestId {
        RequestId {
            client: self.client.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// How one [`Client::send_write`] ended when it did not fail.
pub(crate) enum Written<T> {
    /// Applied (once); the results.
    Done(T),
    /// Surely not applied: route again and retry.
    NotApplied {
        /// The region error the store answered, if any (else the store
        /// could not be connected to).
        region_error: Option<RegionError>,
        /// The backoff a busy store asked for.
        busy: Option<Duration>,
        /// What went wrong, for the final error.
        message: String,
    },
}

/// The leader a `NotLeader` error names, when it names one with an address.
fn not_leader_hint(e: &RegionError) -> Option<rdb_proto::v1::Store> {
    match &e.error {
        Some(RegionErrorKind::NotLeader(n)) => n.leader.clone().filter(|s| !s.address.is_empty()),
        _ => None,
    }
}

/// The backoff a `ServerIsBusy` error asks for.
pub(crate) fn busy_hint(e: &RegionError) -> Option<Duration> {
    match &e.error {
        Some(RegionErrorKind::ServerIsBusy(b)) => Some(Duration::from_millis(b.backoff_ms.max(1))),
        _ => None,
    }
}

impl Client {
    /// The route of region `region_id` as PD knows it now, if the region is
    /// unchanged (still at `epoch`) and has a leader.
    pub(crate) async fn same_region_now(
        &self,
        region_id: u64,
        epoch: Option<rdb_proto::v1::RegionEpoch>,
    ) -> Option<RegionRoute> {
        let resp = self
            .pd_call(|mut c| async move {
                c.get_region_by_id(rdb_proto::v1::GetRegionByIdRequest { region_id })
                    .await
            })
            .await
            .ok()?;
        let now = resp.route?;
        let same = now.region.as_ref()?.epoch == epoch;
        (same && now.leader.is_some()).then_some(now)
    }

    /// A new request id for one write.
    pub(crate) fn request_id(&self) -> RequestId {
        self.inner.ids.next()
    }

    /// Sends one write request to `route` and re-sends the same request (one
    /// id for all copies) while its outcome is unknown; see the module docs.
    /// `f` sends one copy.
    pub(crate) async fn send_write<T, F, Fut>(
        &self,
        route: &RegionRoute,
        f: &F,
    ) -> Result<Written<T>>
    where
        F: Fn(KvClient<Channel>, RegionRoute, RequestId) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let id = self.request_id();
        let mut address = leader_address(route);
        let mut route = route.clone();
        let first_sent = Instant::now();
        let mut retry = Retry::new(cfg);
        // Set once a copy may have reached the store.
        let mut unknown: Option<String> = None;
        loop {
            let outcome = f(self.kv(&address)?, route.clone(), id.clone()).await;
            let (busy, message) = match outcome {
                Ok(Attempt::Done(t)) => return Ok(Written::Done(t)),
                Ok(Attempt::Failed(e)) => return Err(e),
                Ok(Attempt::Region(e)) => match (&unknown, busy_hint(&e)) {
                    (None, busy) => {
                        return Ok(Written::NotApplied {
                            busy,
                            message: e.message.clone(),
                            region_error: Some(e),
                        })
                    }
                    // Busy: this copy was not applied; wait and send it again.
                    (Some(_), Some(busy)) => (Some(busy), e.message),
                    // Another replica of the same region leads now: the
                    // copy goes there, with the same id. The replicas share
                    // one log, so the request is applied once whichever
                    // leader got the first copy.
                    (Some(_), None) if not_leader_hint(&e).is_some() => {
                        if let Some(leader) = not_leader_hint(&e) {
                            address = leader.address.clone();
                            route.leader = Some(leader);
                        }
                        (None, e.message)
                    }
                    (Some(first), None) => {
                        return Err(Error::Undetermined {
                            address,
                            message: format!(
                                "{first}; re-sent, the store answered: {} (the first copy may have been applied)",
                                e.message
                            ),
                        })
                    }
                },
                Err(s) => match classify(&s) {
                    Failure::Answered => return Err(Error::from_status(&s)),
                    failure => {
                        self.forget_store(&address);
                        let message = describe(&s, cfg.tls.as_ref());
                        if failure == Failure::NeverSent && unknown.is_none() {
                            return Ok(Written::NotApplied {
                                region_error: None,
                                busy: None,
                                message: format!("store {address}: {message}"),
                            });
                        }
                        if failure == Failure::Unreachable && unknown.is_none() {
                            tracing::debug!(%address, seq = id.seq, error = %message,
                                "write outcome unknown, re-sending the same request");
                            unknown = Some(message.clone());
                        }
                        // The copy goes to the region's leader as PD knows
                        // it now, if the region is unchanged (its replicas
                        // share one log: applied once either way).
                        let region = route.region.as_ref();
                        let (rid, epoch) = (region.map_or(0, |r| r.id), region.and_then(|r| r.epoch));
                        if let Some(now) = self.same_region_now(rid, epoch).await {
                            address = leader_address(&now);
                            route = now;
                        }
                        (None, message)
                    }
                },
            };
            let first = unknown.clone().unwrap_or_default();
            if first_sent.elapsed() >= cfg.max_resend_age || !retry.next(cfg, busy).await {
                return Err(Error::Undetermined {
                    address,
                    message: format!("{first}; last re-send: {message}"),
                });
            }
        }
    }
}
