//! Routing: PD calls, the region cache, store connections, and the loops
//! that send a call to the store serving its region and retry it while it
//! surely did not happen (region errors, unreachable stores). Reads and
//! writes share the loop; writes are sent through [`Client::send_write`]
//! (the `write` module) so that they are applied at most once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdb_proto::region::display_key;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::*;
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{self, is_transport, Error, Result};
use crate::retry::*;
use crate::write::{self, Written};
use crate::{batch, pd, Client};

pub(crate) fn invalid(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(Error::InvalidArgument)
}

pub(crate) fn ctx(route: &RegionRoute) -> Option<Context> {
    route.region.as_ref().map(|r| Context {
        region_id: r.id,
        region_epoch: r.epoch,
        stale_read: false,
    })
}

pub(crate) fn leader_address(route: &RegionRoute) -> String {
    route
        .leader
        .as_ref()
        .map(|s| s.address.clone())
        .unwrap_or_default()
}

pub(crate) fn region_of(route: &RegionRoute) -> Region {
    route.region.clone().unwrap_or_default()
}

impl Client {
    /// Calls PD, failing over between endpoints and retrying while it is
    /// unreachable; each attempt may take `pd_timeout`.
    pub(crate) async fn pd_call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(rdb_proto::v1::pd_client::PdClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.pd_call_within(self.inner.pd.timeout(), f).await
    }

    /// [`pd_call`](Client::pd_call) whose attempts may take `limit` (a
    /// split that moves a region's data takes longer than a lookup).
    pub(crate) async fn pd_call_within<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T>
    where
        F: Fn(rdb_proto::v1::pd_client::PdClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            let result = match self.inner.pd.client().await {
                Ok(c) => pd::within(limit, f(c)).await,
                Err(pd::PdFailure::Transport(s)) => Err(s),
                Err(pd::PdFailure::Fatal(e)) => return Err(e),
            };
            match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if is_transport(&s) => {
                    retry.last = error::describe(&s, cfg.tls.as_ref());
                    self.inner.pd.failed(&s);
                    // PD answered that it cannot serve now (its members are
                    // electing a leader): that ends within seconds, so the
                    // wait does not count as an attempt (the deadline bounds it).
                    let hint = pd::changing_leader(&s)
                        .then_some(retry.backoff.min(pd::LEADER_CHANGE_POLL));
                    if !retry.next(cfg, hint).await {
                        return Err(Error::PdUnavailable {
                            endpoints: self.inner.pd.endpoints(),
                            message: retry.last,
                        });
                    }
                }
                Err(s) => return Err(Error::from_status(&s)),
            }
        }
    }

    /// Waits, within the call's time budget, until PD says the cluster is
    /// bootstrapped: right after the daemons start, PD answers before the
    /// first store has created the first region, and that is not an error
    /// a caller should have to script around.
    pub(crate) async fn ensure_bootstrapped(&self) -> Result<()> {
        if self.inner.bootstrapped.load(Ordering::Acquire) {
            return Ok(());
        }
        let cfg = &self.inner.config;
        let started = Instant::now();
        let mut wait = cfg.initial_backoff;
        loop {
            let r = self
                .pd_call(|mut c| async move { c.is_bootstrapped(IsBootstrappedRequest {}).await })
                .await?;
            if r.bootstrapped {
                self.inner.bootstrapped.store(true, Ordering::Release);
                return Ok(());
            }
            let left = cfg.retry_deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::NotBootstrapped {
                    waited: started.elapsed(),
                });
            }
            tracing::debug!("cluster not bootstrapped yet, waiting");
            tokio::time::sleep(wait.min(left)).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    pub(crate) fn kv(&self, address: &str) -> Result<KvClient<Channel>> {
        let mut stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = stores.get(address) {
            return Ok(c.clone());
        }
        let cfg = &self.inner.config;
        // Without coalescing, every call is its own RPC: the connection
        // gathers the bytes of calls issued together into one write. With
        // it, the coalescer already sends them as one batch RPC, and a
        // deferred flush would only delay each batch.
        let channel = if cfg.coalesce {
            pd::channel(address, cfg)?
        } else {
            pd::store_channel(address, cfg)?
        };
        let c = KvClient::new(channel)
            .max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        stores.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The request coalescer of the store at `address` (using `kv`, its client).
    pub(crate) fn batcher(&self, address: &str, kv: KvClient<Channel>) -> Arc<batch::StoreBatcher> {
        let mut batchers = self
            .inner
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        batchers
            .entry(address.to_string())
            .or_insert_with(|| {
                let cfg = &self.inner.config;
                let weak = Arc::downgrade(&self.inner);
                let relocate: batch::Relocate = Arc::new(move |ctx: Context| {
                    let weak = weak.clone();
                    Box::pin(async move {
                        let client = Client {
                            inner: weak.upgrade()?,
                        };
                        let now = client
                            .same_region_now(ctx.region_id, ctx.region_epoch)
                            .await?;
                        client.kv(&leader_address(&now)).ok()
                    })
                });
                Arc::new(batch::StoreBatcher::new(
                    kv,
                    cfg.max_coalesced,
                    cfg.max_coalesced_in_flight,
                    batch::Resend {
                        ids: self.inner.ids.clone(),
                        address: address.to_string(),
                        initial_backoff: cfg.initial_backoff,
                        max_backoff: cfg.max_backoff,
                        budget: cfg.retry_deadline.min(cfg.max_resend_age),
                        relocate,
                    },
                ))
            })
            .clone()
    }

    pub(crate) fn forget_store(&self, address: &str) {
        self.inner
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
        self.inner
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
        self.inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .invalidate_store(address);
    }

    pub(crate) fn invalidate(&self, err: &RegionError, region_id: u64) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        if let Some(RegionErrorKind::NotLeader(n)) = &err.error {
            // Another replica leads: follow the hint, keep the region.
            if let Some(leader) = n.leader.clone().filter(|s| !s.address.is_empty()) {
                if cache.set_leader(region_id, leader) {
                    return;
                }
            }
        }
        cache.invalidate(region_id);
        if let Some(RegionErrorKind::EpochNotMatch(e)) = &err.error {
            for r in &e.current_regions {
                cache.invalidate(r.id);
            }
        }
    }

    /// The route of the region holding `key`, from the cache or PD.
    pub(crate) async fn locate(&self, key: &[u8]) -> Result<RegionRoute> {
        if let Some(r) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_key(key)
        {
            return Ok(r);
        }
        self.ensure_bootstrapped().await?;
        let k = key.to_vec();
        let resp = self
            .pd_call(|mut c| {
                let key = k.clone();
                async move { c.get_region(GetRegionRequest { key }).await }
            })
            .await?;
        let route = resp
            .route
            .filter(|r| r.leader.is_some() && r.region.is_some())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "PD has no serving store for key {}",
                    display_key(key)
                ))
            })?;
        self.inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route.clone());
        Ok(route)
    }

    /// The route of the region holding the keys just below `upper` (empty = end of key space).
    pub(crate) async fn locate_before(&self, lower: &[u8], upper: &[u8]) -> Result<RegionRoute> {
        if let Some(r) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .before(upper)
        {
            return Ok(r);
        }
        self.ensure_bootstrapped().await?;
        let (start_key, end_key) = (lower.to_vec(), upper.to_vec());
        let resp = self
            .pd_call(|mut c| {
                let req = ScanRegionsRequest {
                    start_key: start_key.clone(),
                    end_key: end_key.clone(),
                    limit: 0,
                };
                async move { c.scan_regions(req).await }
            })
            .await?;
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        for r in resp.routes {
            cache.insert(r);
        }
        cache.before(upper).ok_or_else(|| {
            Error::NotFound(format!("PD has no region below {}", display_key(upper)))
        })
    }

    /// Sends one read attempt to `route` (`f` does the call) and says what
    /// came of it; a failed connection drops the store's cached client.
    pub(crate) async fn send_read<T, F, Fut>(
        &self,
        route: &RegionRoute,
        f: &F,
    ) -> Result<Written<T>>
    where
        F: Fn(KvClient<Channel>, RegionRoute) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let address = leader_address(route);
        match f(self.kv(&address)?, route.clone()).await {
            Ok(Attempt::Done(t)) => Ok(Written::Done(t)),
            Ok(Attempt::Failed(e)) => Err(e),
            Ok(Attempt::Region(e)) => Ok(Written::NotApplied {
                busy: write::busy_hint(&e),
                message: e.message.clone(),
                region_error: Some(e),
            }),
            Err(s) if is_transport(&s) => {
                self.forget_store(&address);
                Ok(Written::NotApplied {
                    region_error: None,
                    busy: None,
                    message: format!(
                        "store {address}: {}",
                        error::describe(&s, self.inner.config.tls.as_ref())
                    ),
                })
            }
            Err(s) => Err(Error::from_status(&s)),
        }
    }

    /// Runs one region-scoped call with routing retries: `pick` chooses the
    /// region (by key, or "before" for reverse walks), `send` makes the call
    /// ([`send_read`](Client::send_read) or [`send_write`](Client::send_write))
    /// and, while the call surely did not happen, the route is refreshed and
    /// the call tried again within the budget.
    pub(crate) async fn routed<T, P, PF, S, SF>(&self, pick: P, send: S) -> Result<(RegionRoute, T)>
    where
        P: Fn() -> PF,
        PF: Future<Output = Result<RegionRoute>>,
        S: Fn(RegionRoute) -> SF,
        SF: Future<Output = Result<Written<T>>>,
    {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            let route = pick().await?;
            let region_id = route.region.as_ref().map(|r| r.id).unwrap_or_default();
            match send(route.clone()).await? {
                Written::Done(t) => return Ok((route, t)),
                Written::NotApplied {
                    region_error,
                    busy,
                    message,
                } => {
                    if let Some(e) = &region_error {
                        tracing::debug!(region_id, error = %e.message, "region error, refreshing route");
                        self.invalidate(e, region_id);
                    }
                    retry.last = message;
                    if !retry.next(cfg, busy).await {
                        return Err(match region_error {
                            Some(_) => Error::RegionUnavailable {
                                attempts: retry.attempts,
                                message: retry.last,
                            },
                            None => Error::StoreUnavailable {
                                address: leader_address(&route),
                                message: retry.last,
                            },
                        });
                    }
                }
            }
        }
    }

    /// A read on one region, routed by `pick`, retried while it fails.
    pub(crate) async fn on_region<T, P, PF, F, Fut>(
        &self,
        pick: P,
        f: F,
    ) -> Result<(RegionRoute, T)>
    where
        P: Fn() -> PF,
        PF: Future<Output = Result<RegionRoute>>,
        F: Fn(KvClient<Channel>, RegionRoute) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        self.routed(pick, |route| {
            let f = &f;
            async move { self.send_read(&route, f).await }
        })
        .await
    }

    /// A write on one region, routed by `pick`, applied at most once (see
    /// the `write` module).
    pub(crate) async fn on_write<T, P, PF, F, Fut>(&self, pick: P, f: F) -> Result<(RegionRoute, T)>
    where
        P: Fn() -> PF,
        PF: Future<Output = Result<RegionRoute>>,
        F: Fn(KvClient<Channel>, RegionRoute, RequestId) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        self.routed(pick, |route| {
            let f = &f;
            async move { self.send_write(&route, f).await }
        })
        .await
    }

    /// Runs a single-key read.
    pub(crate) async fn read_key<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<Context>) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let (_, t) = self
            .on_region(|| self.locate(key), |c, route| f(c, ctx(&route)))
            .await?;
        Ok(t)
    }

    /// Runs a single-key write, applied at most once.
    pub(crate) async fn write_key<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<Context>, RequestId) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let (_, t) = self
            .on_write(|| self.locate(key), |c, route, id| f(c, ctx(&route), id))
            .await?;
        Ok(t)
    }

    /// Runs a single-key call through the coalescer of the store serving
    /// `key`, with the usual routing retries (the coalescer re-sends a put
    /// whose outcome is unknown itself, with its request id).
    pub(crate) async fn coalesced<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T>
    where
        F: Fn(Arc<batch::StoreBatcher>, Option<Context>) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let (_, t) = self
            .on_region(
                || self.locate(key),
                |c, route| f(self.batcher(&leader_address(&route), c), ctx(&route)),
            )
            .await?;
        Ok(t)
    }

    /// Groups items by region and runs `f` per region in parallel, re-routing
    /// the items of a region whose call surely did not happen (a region
    /// error, a store that could not be reached). With `write`, each
    /// region's call carries a request id and is re-sent while its outcome
    /// is unknown ([`send_write`](Client::send_write)). Results come back
    /// tagged with each item's index.
    pub(crate) async fn per_region<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        key_of: fn(&I) -> &[u8],
        write: bool,
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        I: Clone,
        F: Fn(KvClient<Channel>, Option<Context>, Vec<I>, Option<RequestId>) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<Vec<T>>, Status>>,
    {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        let mut pending: Vec<(usize, I)> = items.into_iter().enumerate().collect();
        let mut out = Vec::new();
        while !pending.is_empty() {
            let mut groups: HashMap<u64, (RegionRoute, Vec<(usize, I)>)> = HashMap::new();
            for (i, item) in pending.drain(..) {
                let route = self.locate(key_of(&item)).await?;
                let id = route.region.as_ref().map(|r| r.id).unwrap_or_default();
                groups
                    .entry(id)
                    .or_insert_with(|| (route, Vec::new()))
                    .1
                    .push((i, item));
            }
            let calls = groups.into_values().map(|(route, group)| {
                let items: Vec<I> = group.iter().map(|(_, it)| it.clone()).collect();
                let f = &f;
                async move {
                    let res = if write {
                        let send =
                            |c, route: RegionRoute, id| f(c, ctx(&route), items.clone(), Some(id));
                        self.send_write(&route, &send).await
                    } else {
                        let send = |c, route: RegionRoute| f(c, ctx(&route), items.clone(), None);
                        self.send_read(&route, &send).await
                    };
                    (route, group, res)
                }
            });
            let mut hint = None;
            for (route, group, res) in futures::future::join_all(calls).await {
                match res? {
                    Written::Done(results) => {
                        out.extend(group.iter().map(|(i, _)| *i).zip(results));
                    }
                    Written::NotApplied {
                        region_error,
                        busy,
                        message,
                    } => {
                        if let Some(e) = &region_error {
                            let region_id = route.region.as_ref().map(|r| r.id);
                            self.invalidate(e, region_id.unwrap_or_default());
                        }
                        hint = hint.or(busy);
                        retry.last = message;
                        pending.extend(group);
                    }
                }
            }
            if !pending.is_empty() && !retry.next(cfg, hint).await {
                return Err(Error::RegionUnavailable {
                    attempts: retry.attempts,
                    message: retry.last,
                });
            }
        }
        out.sort_by_key(|(i, _)| *i);
        Ok(out)
    }
}
