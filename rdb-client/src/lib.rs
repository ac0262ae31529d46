//! FlareDB smart client.
//!
//! The client asks PD where keys live, caches the region map (ordered by
//! start key), and sends each call straight to the store that serves the
//! key. Batch calls are split per region and sent in parallel; scans and
//! range deletes walk the regions in order. When a store answers with a
//! region error (the region split or moved, the epoch is stale) or cannot be
//! reached, the client drops the stale route, asks PD again and retries with
//! bounded exponential backoff. Timestamp requests from many tasks are
//! batched onto one stream to PD.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rdb_client::Error> {
//! use rdb_client::{CasExpect, Client};
//!
//! let client = Client::connect(["127.0.0.1:2379"]).await?;
//! client.put(b"greeting".to_vec(), b"hello".to_vec()).await?;
//! let v = client.get(b"greeting".to_vec()).await?.expect("just written");
//! assert_eq!(v.value, b"hello");
//!
//! // Compare-and-swap on the version we read: no lost updates.
//! let r = client
//!     .compare_and_swap(b"greeting".to_vec(), CasExpect::Version(v.version), Some(b"hi".to_vec()))
//!     .await?;
//! assert!(r.succeeded);
//!
//! let ts = client.tso().await?;
//! # let _ = ts;
//! # Ok(())
//! # }
//! ```

mod batch;
mod cache;
mod error;
mod pd;
mod tso;

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdb_proto::limits::{check_batch_len, check_key, check_range, check_value, MAX_SCAN_LIMIT};
use rdb_proto::region::display_key;
use rdb_proto::v1::cas_condition::Condition;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::*;
use tonic::transport::Channel;
use tonic::Status;

pub use error::{Error, Result};
pub use rdb_proto::tls::{ClientTls, TlsError};
pub use rdb_proto::v1::{KvPair, Region, RegionRoute, Store, StoreState};

use cache::RegionCache;
use error::{is_transport, never_sent};

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Most attempts per call after routing or connection failures (waits
    /// asked for by `ServerIsBusy` do not count; they are bounded by `retry_deadline`).
    pub max_attempts: u32,
    /// Time budget per call, across attempts.
    pub retry_deadline: Duration,
    /// First backoff after a failed attempt; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest backoff between attempts.
    pub max_backoff: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one RPC.
    pub rpc_timeout: Duration,
    /// Send concurrent single-key `get` and `put` calls to the same store as
    /// one `BatchGet` / `BatchPut` per region (default `true`). Each call
    /// keeps its own result, error and retries; only the RPCs are shared.
    pub coalesce: bool,
    /// Most calls in one coalesced RPC (default 256).
    pub max_coalesced: usize,
    /// Most coalesced RPC rounds in flight per store (default 4); calls made
    /// while they are all out wait and leave together in the next one.
    pub max_coalesced_in_flight: usize,
    /// TLS for every connection (PD and stores): the CA that signs the
    /// cluster's certificates and, when the servers require one, this
    /// client's certificate. `None` (the default): plaintext.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::path::Path;
    /// use rdb_client::{Client, ClientConfig, ClientTls};
    ///
    /// let tls = ClientTls::from_pem_files(
    ///     Path::new("ca.pem"),
    ///     Some(Path::new("client.pem")),
    ///     Some(Path::new("client.key")),
    /// )?;
    /// let config = ClientConfig { tls: Some(tls), ..Default::default() };
    /// let client = Client::connect_with(["pd.example:2379"], config).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub tls: Option<ClientTls>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            max_attempts: 10,
            retry_deadline: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(30),
            coalesce: true,
            max_coalesced: 256,
            max_coalesced_in_flight: 4,
            tls: None,
        }
    }
}

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value bytes.
    pub value: Vec<u8>,
    /// The version the store gave this value (rises with every write of the key).
    pub version: u64,
}

/// What a compare-and-swap expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasExpect {
    /// The key does not exist.
    Absent,
    /// The key exists with this version.
    Version(u64),
    /// The key exists with this value.
    Value(Vec<u8>),
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the expectation held and the write was applied.
    pub succeeded: bool,
    /// The key's value and version at the time of the comparison (`None` if absent).
    pub current: Option<Value>,
    /// The version of the new value, if one was written.
    pub new_version: Option<u64>,
}

/// Options of [`Client::scan_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Most pairs to return (0 = no limit).
    pub limit: usize,
    /// Return pairs from the end of the range backwards.
    pub reverse: bool,
    /// Leave values empty.
    pub keys_only: bool,
}

struct Inner {
    pd: Arc<pd::PdConn>,
    cache: RwLock<RegionCache>,
    stores: Mutex<HashMap<String, KvClient<Channel>>>,
    batchers: Mutex<HashMap<String, Arc<batch::StoreBatcher>>>,
    tso: tso::TsoBatcher,
    config: ClientConfig,
}

/// The FlareDB client. Cheap to clone; clones share connections, the
/// region cache and the TSO stream.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What one attempt against a region produced.
pub(crate) enum Attempt<T> {
    Done(T),
    Region(RegionError),
}

/// Retry state of one call.
struct Retry {
    attempts: u32,
    started: Instant,
    backoff: Duration,
    last: String,
}

impl Retry {
    fn new(cfg: &ClientConfig) -> Retry {
        Retry {
            attempts: 0,
            started: Instant::now(),
            backoff: cfg.initial_backoff,
            last: String::new(),
        }
    }

    /// Sleeps before the next attempt; false when the budget is spent.
    /// `busy` is the server's backoff hint (`ServerIsBusy`): such waits are
    /// bounded by the deadline only, since the server said it will recover
    /// (a region being moved), not that the route is wrong.
    async fn next(&mut self, cfg: &ClientConfig, busy: Option<Duration>) -> bool {
        let hint = busy;
        if busy.is_none() {
            self.attempts += 1;
        }
        if self.attempts >= cfg.max_attempts || self.started.elapsed() >= cfg.retry_deadline {
            return false;
        }
        let jitter = Duration::from_micros(
            rand::random::<u64>() % (self.backoff.as_micros() as u64 / 2 + 1),
        );
        let wait = hint
            .unwrap_or(self.backoff + jitter)
            .min(cfg.retry_deadline.saturating_sub(self.started.elapsed()));
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(cfg.max_backoff);
        true
    }
}

fn invalid(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(Error::InvalidArgument)
}

/// An attempt's outcome from a response's `region_error` field and its result.
fn attempt<T>(region_error: Option<RegionError>, done: impl FnOnce() -> T) -> Attempt<T> {
    match region_error {
        Some(e) => Attempt::Region(e),
        None => Attempt::Done(done()),
    }
}

fn ctx(route: &RegionRoute) -> Option<Context> {
    route.region.as_ref().map(|r| Context {
        region_id: r.id,
        region_epoch: r.epoch,
    })
}

fn leader_address(route: &RegionRoute) -> String {
    route
        .leader
        .as_ref()
        .map(|s| s.address.clone())
        .unwrap_or_default()
}

fn region_of(route: &RegionRoute) -> Region {
    route.region.clone().unwrap_or_default()
}

impl Client {
    /// Connects to a cluster through its PD endpoints (`HOST:PORT`), with
    /// default settings. Fails with [`Error::PdUnavailable`] if no endpoint answers.
    pub async fn connect<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
    ) -> Result<Client> {
        Self::connect_with(pd_endpoints, ClientConfig::default()).await
    }

    /// Connects with explicit [`ClientConfig`].
    pub async fn connect_with<S: Into<String>>(
        pd_endpoints: impl IntoIterator<Item = S>,
        config: ClientConfig,
    ) -> Result<Client> {
        let endpoints: Vec<String> = pd_endpoints.into_iter().map(Into::into).collect();
        let pd = Arc::new(pd::PdConn::new(endpoints, &config)?);
        let client = Client {
            inner: Arc::new(Inner {
                tso: tso::TsoBatcher::new(pd.clone()),
                pd,
                cache: RwLock::default(),
                stores: Mutex::default(),
                batchers: Mutex::default(),
                config,
            }),
        };
        client
            .pd_call(|mut c| async move { c.is_bootstrapped(IsBootstrappedRequest {}).await })
            .await?;
        Ok(client)
    }

    /// Calls PD, failing over between endpoints and retrying while it is unreachable.
    async fn pd_call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(rdb_proto::v1::pd_client::PdClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            match f(self.inner.pd.client()?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if is_transport(&s) => {
                    retry.last = error::describe(&s, cfg.tls.as_ref());
                    self.inner.pd.fail_over();
                    if !retry.next(cfg, None).await {
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

    fn kv(&self, address: &str) -> Result<KvClient<Channel>> {
        let mut stores = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = stores.get(address) {
            return Ok(c.clone());
        }
        let cfg = &self.inner.config;
        let c = KvClient::new(pd::channel(address, cfg)?)
            .max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE)
            .max_encoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        stores.insert(address.to_string(), c.clone());
        Ok(c)
    }

    /// The request coalescer of the store at `address` (using `kv`, its client).
    fn batcher(&self, address: &str, kv: KvClient<Channel>) -> Arc<batch::StoreBatcher> {
        let mut batchers = self
            .inner
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        batchers
            .entry(address.to_string())
            .or_insert_with(|| {
                let cfg = &self.inner.config;
                Arc::new(batch::StoreBatcher::new(
                    kv,
                    cfg.max_coalesced,
                    cfg.max_coalesced_in_flight,
                ))
            })
            .clone()
    }

    fn forget_store(&self, address: &str) {
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

    fn invalidate(&self, err: &RegionError, region_id: u64) {
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.invalidate(region_id);
        if let Some(RegionErrorKind::EpochNotMatch(e)) = &err.error {
            for r in &e.current_regions {
                cache.invalidate(r.id);
            }
        }
    }

    /// The route of the region holding `key`, from the cache or PD.
    async fn locate(&self, key: &[u8]) -> Result<RegionRoute> {
        if let Some(r) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_key(key)
        {
            return Ok(r);
        }
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
    async fn locate_before(&self, lower: &[u8], upper: &[u8]) -> Result<RegionRoute> {
        if let Some(r) = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .before(upper)
        {
            return Ok(r);
        }
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

    /// Runs one region-scoped call with routing retries. `pick` chooses the
    /// region (by key, or "before" for reverse walks); `f` does the call.
    async fn on_region<T, P, PF, F, Fut>(
        &self,
        idempotent: bool,
        pick: P,
        f: F,
    ) -> Result<(RegionRoute, T)>
    where
        P: Fn() -> PF,
        PF: Future<Output = Result<RegionRoute>>,
        F: Fn(KvClient<Channel>, RegionRoute) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            let route = pick().await?;
            let address = leader_address(&route);
            let region_id = route.region.as_ref().map(|r| r.id).unwrap_or_default();
            let mut hint = None;
            match f(self.kv(&address)?, route.clone()).await {
                Ok(Attempt::Done(t)) => return Ok((route, t)),
                Ok(Attempt::Region(e)) => {
                    tracing::debug!(region_id, error = %e.message, "region error, refreshing route");
                    if let Some(RegionErrorKind::ServerIsBusy(b)) = &e.error {
                        hint = Some(Duration::from_millis(b.backoff_ms.max(1)));
                    }
                    self.invalidate(&e, region_id);
                    retry.last = e.message;
                    if !retry.next(cfg, hint).await {
                        return Err(Error::RegionUnavailable {
                            attempts: retry.attempts,
                            message: retry.last,
                        });
                    }
                }
                Err(s) if is_transport(&s) => {
                    self.forget_store(&address);
                    if !idempotent && !never_sent(&s) {
                        return Err(Error::Undetermined {
                            address,
                            message: s.message().to_string(),
                        });
                    }
                    retry.last = s.message().to_string();
                    if !retry.next(cfg, None).await {
                        return Err(Error::StoreUnavailable {
                            address,
                            message: retry.last,
                        });
                    }
                }
                Err(s) => return Err(Error::from_status(&s)),
            }
        }
    }

    /// Runs a single-key call.
    async fn on_key<T, F, Fut>(&self, key: &[u8], idempotent: bool, f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<Context>) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let (_, t) = self
            .on_region(
                idempotent,
                || self.locate(key),
                |c, route| f(c, ctx(&route)),
            )
            .await?;
        Ok(t)
    }

    /// Runs an idempotent single-key call through the coalescer of the
    /// store serving `key`, with the usual routing retries.
    async fn coalesced<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T>
    where
        F: Fn(Arc<batch::StoreBatcher>, Option<Context>) -> Fut,
        Fut: Future<Output = std::result::Result<Attempt<T>, Status>>,
    {
        let (_, t) = self
            .on_region(
                true,
                || self.locate(key),
                |c, route| f(self.batcher(&leader_address(&route), c), ctx(&route)),
            )
            .await?;
        Ok(t)
    }

    /// Reads a key; `None` if it does not exist.
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Value>> {
        invalid(check_key(&key))?;
        if self.inner.config.coalesce {
            match self
                .coalesced(&key, |b, context| {
                    let key = key.clone();
                    async move { b.get(context, key).await }
                })
                .await
            {
                // The shared batch was refused as a whole (another call's
                // key over the store's cap): ask alone for this call's own answer.
                Err(e) if e.refused_whole_request() => {}
                r => return r,
            }
        }
        self.on_key(&key, true, |mut c, context| {
            let req = GetRequest {
                context,
                key: key.clone(),
            };
            async move {
                let r = c.get(req).await?.into_inner();
                Ok(match r.region_error {
                    Some(e) => Attempt::Region(e),
                    None => Attempt::Done(r.found.then_some(Value {
                        value: r.value,
                        version: r.version,
                    })),
                })
            }
        })
        .await
    }

    /// Writes a key; returns the new version.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<u64> {
        invalid(check_key(&key))?;
        invalid(check_value(&value))?;
        if self.inner.config.coalesce {
            match self
                .coalesced(&key, |b, context| {
                    let (key, value) = (key.clone(), value.clone());
                    async move { b.put(context, key, value).await }
                })
                .await
            {
                // The shared batch was refused before anything was written
                // (a call in it over the store's caps): send this call alone
                // for its own answer.
                Err(e) if e.refused_whole_request() => {}
                r => return r,
            }
        }
        self.on_key(&key, true, |mut c, context| {
            let req = PutRequest {
                context,
                key: key.clone(),
                value: value.clone(),
            };
            async move {
                let r = c.put(req).await?.into_inner();
                Ok(attempt(r.region_error, || r.version))
            }
        })
        .await
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&self, key: Vec<u8>) -> Result<bool> {
        invalid(check_key(&key))?;
        self.on_key(&key, true, |mut c, context| {
            let req = DeleteRequest {
                context,
                key: key.clone(),
            };
            async move {
                let r = c.delete(req).await?.into_inner();
                Ok(attempt(r.region_error, || r.existed))
            }
        })
        .await
    }

    /// Compare-and-swap: writes `new` (or deletes the key if `new` is `None`)
    /// only if the key's current state matches `expected`. Atomic against
    /// every other write to the key. The result always carries the state the
    /// comparison saw.
    ///
    /// A CAS is not retried once it may have reached the store: if the
    /// connection breaks after sending, [`Error::Undetermined`] is returned.
    pub async fn compare_and_swap(
        &self,
        key: Vec<u8>,
        expected: CasExpect,
        new: Option<Vec<u8>>,
    ) -> Result<CasResult> {
        invalid(check_key(&key))?;
        if let Some(v) = &new {
            invalid(check_value(v))?;
        }
        let condition = match expected {
            CasExpect::Absent => Condition::Absent(Absent {}),
            CasExpect::Version(v) => Condition::Version(v),
            CasExpect::Value(v) => Condition::Value(v),
        };
        let delete = new.is_none();
        let new_value = new.unwrap_or_default();
        self.on_key(&key, false, |mut c, context| {
            let req = CompareAndSwapRequest {
                context,
                key: key.clone(),
                expected: Some(CasCondition {
                    condition: Some(condition.clone()),
                }),
                new_value: new_value.clone(),
                delete,
            };
            async move {
                let r = c.compare_and_swap(req).await?.into_inner();
                Ok(match r.region_error {
                    Some(e) => Attempt::Region(e),
                    None => Attempt::Done(CasResult {
                        succeeded: r.succeeded,
                        current: r.found.then_some(Value {
                            value: r.current_value,
                            version: r.current_version,
                        }),
                        new_version: (r.succeeded && !delete).then_some(r.new_version),
                    }),
                })
            }
        })
        .await
    }

    /// Groups items by region and runs `f` per region in parallel, re-routing
    /// the items of a region that answered with a region error. Results come
    /// back tagged with each item's index.
    async fn per_region<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        key_of: fn(&I) -> &[u8],
        f: F,
    ) -> Result<Vec<(usize, T)>>
    where
        I: Clone,
        F: Fn(KvClient<Channel>, Option<Context>, Vec<I>) -> Fut,
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
                let address = leader_address(&route);
                let items: Vec<I> = group.iter().map(|(_, it)| it.clone()).collect();
                let fut = self.kv(&address).map(|c| f(c, ctx(&route), items));
                async move {
                    let res = match fut {
                        Ok(fut) => Ok(fut.await),
                        Err(e) => Err(e),
                    };
                    (route, address, group, res)
                }
            });
            let mut hint = None;
            for (route, address, group, res) in futures::future::join_all(calls).await {
                match res? {
                    Ok(Attempt::Done(results)) => {
                        out.extend(group.iter().map(|(i, _)| *i).zip(results));
                    }
                    Ok(Attempt::Region(e)) => {
                        if let Some(RegionErrorKind::ServerIsBusy(b)) = &e.error {
                            hint = Some(Duration::from_millis(b.backoff_ms.max(1)));
                        }
                        self.invalidate(
                            &e,
                            route.region.as_ref().map(|r| r.id).unwrap_or_default(),
                        );
                        retry.last = e.message;
                        pending.extend(group);
                    }
                    Err(s) if is_transport(&s) => {
                        self.forget_store(&address);
                        retry.last =
                            format!("store {address}: {}", error::describe(&s, cfg.tls.as_ref()));
                        pending.extend(group);
                    }
                    Err(s) => return Err(Error::from_status(&s)),
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

    /// Reads many keys (from any regions); returns the pairs of the keys that
    /// exist, in the order of `keys`.
    pub async fn batch_get(&self, keys: Vec<Vec<u8>>) -> Result<Vec<KvPair>> {
        invalid(check_batch_len(keys.len()))?;
        for k in &keys {
            invalid(check_key(k))?;
        }
        let results = self
            .per_region(
                keys,
                |k| k.as_slice(),
                |mut c, context, keys| async move {
                    let r = c
                        .batch_get(BatchGetRequest {
                            context,
                            keys: keys.clone(),
                        })
                        .await?
                        .into_inner();
                    if let Some(e) = r.region_error {
                        return Ok(Attempt::Region(e));
                    }
                    let mut found: HashMap<Vec<u8>, KvPair> =
                        r.pairs.into_iter().map(|p| (p.key.clone(), p)).collect();
                    Ok(Attempt::Done(
                        keys.iter().map(|k| found.remove(k)).collect(),
                    ))
                },
            )
            .await?;
        Ok(results.into_iter().filter_map(|(_, p)| p).collect())
    }

    /// Writes many pairs; atomic per region. Returns the new versions in the
    /// order of `pairs`.
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// let pairs = vec![(b"a".to_vec(), b"1".to_vec()), (b"z".to_vec(), b"26".to_vec())];
    /// let versions = client.batch_put(pairs).await?;   // "a" and "z" may be on different stores
    /// assert_eq!(versions.len(), 2);
    /// let found = client.batch_get(vec![b"a".to_vec(), b"missing".to_vec()]).await?;
    /// assert_eq!(found.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn batch_put(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u64>> {
        invalid(check_batch_len(pairs.len()))?;
        for (k, v) in &pairs {
            invalid(check_key(k))?;
            invalid(check_value(v))?;
        }
        let results = self
            .per_region(
                pairs,
                |p| p.0.as_slice(),
                |mut c, context, pairs| async move {
                    let pairs = pairs
                        .into_iter()
                        .map(|(key, value)| KvPair {
                            key,
                            value,
                            version: 0,
                        })
                        .collect();
                    let r = c
                        .batch_put(BatchPutRequest { context, pairs })
                        .await?
                        .into_inner();
                    Ok(attempt(r.region_error, || r.versions))
                },
            )
            .await?;
        Ok(results.into_iter().map(|(_, v)| v).collect())
    }

    /// Deletes many keys; atomic per region. Returns how many existed.
    pub async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> Result<u64> {
        invalid(check_batch_len(keys.len()))?;
        for k in &keys {
            invalid(check_key(k))?;
        }
        let results = self
            .per_region(
                keys,
                |k| k.as_slice(),
                |mut c, context, keys| async move {
                    let n = keys.len();
                    let r = c
                        .batch_delete(BatchDeleteRequest { context, keys })
                        .await?
                        .into_inner();
                    Ok(match r.region_error {
                        Some(e) => Attempt::Region(e),
                        // The count is per region; attach it to the region's first key.
                        None => Attempt::Done(
                            std::iter::once(r.deleted)
                                .chain(std::iter::repeat_n(0, n - 1))
                                .collect(),
                        ),
                    })
                },
            )
            .await?;
        Ok(results.into_iter().map(|(_, n)| n).sum())
    }

    /// Scans `[start, end)` in key order (empty `end` = to the end of the key
    /// space), across regions, returning at most `limit` pairs (0 = no limit).
    pub async fn scan(&self, start: Vec<u8>, end: Vec<u8>, limit: usize) -> Result<Vec<KvPair>> {
        self.scan_with(
            start,
            end,
            ScanOptions {
                limit,
                ..Default::default()
            },
        )
        .await
    }

    /// Scans with [`ScanOptions`] (reverse order, keys only).
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// use rdb_client::ScanOptions;
    ///
    /// // The last 10 keys under "user/", newest key first, without values.
    /// let opts = ScanOptions { limit: 10, reverse: true, keys_only: true };
    /// for pair in client.scan_with(b"user/".to_vec(), b"user0".to_vec(), opts).await? {
    ///     println!("{}", String::from_utf8_lossy(&pair.key));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan_with(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        opts: ScanOptions,
    ) -> Result<Vec<KvPair>> {
        invalid(check_range(&start, &end))?;
        let limit = if opts.limit == 0 {
            usize::MAX
        } else {
            opts.limit
        };
        let mut out = Vec::new();
        let (mut lo, mut hi) = (start.clone(), end.clone());
        while out.len() < limit {
            let chunk = (limit - out.len()).min(MAX_SCAN_LIMIT as usize) as u32;
            let (route, (pairs, has_more)) = self
                .on_region(
                    true,
                    || async {
                        if opts.reverse {
                            self.locate_before(&lo, &hi).await
                        } else {
                            self.locate(&lo).await
                        }
                    },
                    |mut c, route| {
                        let r = region_of(&route);
                        let sub_start = if opts.reverse {
                            lo.clone().max(r.start_key.clone())
                        } else {
                            lo.clone()
                        };
                        let sub_end = match (hi.is_empty(), r.end_key.is_empty()) {
                            (_, true) => hi.clone(),
                            (true, false) => r.end_key.clone(),
                            (false, false) => hi.clone().min(r.end_key.clone()),
                        };
                        let req = ScanRequest {
                            context: ctx(&route),
                            start_key: sub_start,
                            end_key: sub_end,
                            limit: chunk,
                            reverse: opts.reverse,
                            keys_only: opts.keys_only,
                        };
                        async move {
                            let r = c.scan(req).await?.into_inner();
                            Ok(attempt(r.region_error, || (r.pairs, r.has_more)))
                        }
                    },
                )
                .await?;
            // A store with a smaller max-scan-limit answers a full page of
            // fewer pairs than asked, with has_more.
            let full = has_more || pairs.len() as u32 == chunk;
            let last_key = pairs.last().map(|p| p.key.clone());
            out.extend(pairs);
            let r = region_of(&route);
            if full {
                // The region has more: continue inside it after the last key.
                match last_key {
                    Some(k) if opts.reverse => hi = k,
                    Some(mut k) => {
                        k.push(0);
                        lo = k;
                    }
                    None => break,
                }
                continue;
            }
            if opts.reverse {
                if r.start_key.as_slice() <= start.as_slice() || r.start_key.is_empty() {
                    break;
                }
                hi = r.start_key;
            } else {
                if r.end_key.is_empty()
                    || (!end.is_empty() && r.end_key.as_slice() >= end.as_slice())
                {
                    break;
                }
                lo = r.end_key;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Deletes every key in `[start, end)` (empty `end` = to the end of the
    /// key space), across regions; atomic per region. Returns how many keys were removed.
    pub async fn delete_range(&self, start: Vec<u8>, end: Vec<u8>) -> Result<u64> {
        invalid(check_range(&start, &end))?;
        let mut lo = start;
        let mut deleted = 0;
        loop {
            let (route, n) = self
                .on_region(
                    true,
                    || self.locate(&lo),
                    |mut c, route| {
                        let req = DeleteRangeRequest {
                            context: ctx(&route),
                            start_key: lo.clone(),
                            end_key: end.clone(),
                        };
                        async move {
                            let r = c.delete_range(req).await?.into_inner();
                            Ok(attempt(r.region_error, || r.deleted))
                        }
                    },
                )
                .await?;
            deleted += n;
            let r = region_of(&route);
            if r.end_key.is_empty() || (!end.is_empty() && r.end_key >= end) {
                return Ok(deleted);
            }
            lo = r.end_key;
        }
    }

    /// One timestamp from PD's oracle: strictly greater than every timestamp
    /// handed out before, to any client.
    pub async fn tso(&self) -> Result<u64> {
        Ok(self.tso_batch(1).await?.start)
    }

    /// `count` consecutive timestamps, as a range.
    pub async fn tso_batch(&self, count: u32) -> Result<Range<u64>> {
        let cfg = &self.inner.config;
        let mut retry = Retry::new(cfg);
        loop {
            match self.inner.tso.get(count).await {
                Ok(first) => return Ok(first..first + u64::from(count)),
                Err(e) if e.is_unavailable() => {
                    if !retry.next(cfg, None).await {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// All stores registered with PD, with their state.
    pub async fn stores(&self) -> Result<Vec<Store>> {
        Ok(self
            .pd_call(|mut c| async move { c.get_all_stores(GetAllStoresRequest {}).await })
            .await?
            .stores)
    }

    /// All regions in key order, with the store serving each.
    pub async fn regions(&self) -> Result<Vec<RegionRoute>> {
        let req = ScanRegionsRequest::default();
        Ok(self
            .pd_call(|mut c| {
                let req = req.clone();
                async move { c.scan_regions(req).await }
            })
            .await?
            .routes)
    }

    /// Asks PD to split the region holding `key` at `key`. PD moves the new
    /// right half to another live store when there is one (`same_store` keeps
    /// it in place). Returns the (left, right) routes.
    ///
    /// ```no_run
    /// # async fn demo(client: rdb_client::Client) -> Result<(), rdb_client::Error> {
    /// let (left, right) = client.split(b"m".to_vec(), false).await?;
    /// let store_of = |r: &rdb_client::RegionRoute| r.region.as_ref().map(|r| r.store_id);
    /// println!("[..m) on store {:?}, [m..) on store {:?}", store_of(&left), store_of(&right));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn split(
        &self,
        key: Vec<u8>,
        same_store: bool,
    ) -> Result<(RegionRoute, RegionRoute)> {
        invalid(check_key(&key))?;
        let placement = if same_store {
            SplitPlacement::SameStore
        } else {
            SplitPlacement::Auto
        } as i32;
        let req = SplitRegionRequest {
            split_key: key,
            placement,
            target_store_id: 0,
        };
        let r = self
            .pd_call(|mut c| {
                let req = req.clone();
                async move { c.split_region(req).await }
            })
            .await?;
        match (r.left, r.right) {
            (Some(l), Some(r)) => Ok((l, r)),
            _ => Err(Error::Rpc {
                code: tonic::Code::Internal,
                message: "PD answered the split without regions".into(),
            }),
        }
    }

    /// Forgets every cached route (the next calls ask PD again).
    pub fn clear_region_cache(&self) {
        *self.inner.cache.write().unwrap_or_else(|p| p.into_inner()) = RegionCache::default();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pd", &self.inner.pd.endpoints())
            .finish()
    }
}
