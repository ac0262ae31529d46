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
//!
//! # Retries and exactly-once writes
//! A call is retried within its budget ([`ClientConfig::max_attempts`],
//! [`ClientConfig::retry_deadline`]) while it surely did not happen: a
//! region error (the route was stale), a busy store, a connection that could
//! not be established. Every write also carries a request id, and when the
//! connection fails after a write was sent, the client sends the same
//! request again: a store that already applied it answers with the results
//! it recorded then, so the write is applied once (a put keeps its first
//! version, a CAS reports the first copy's outcome, a delete says the key
//! existed). If the outcome cannot be learned (no answer within the budget,
//! or the region changed meanwhile) the call fails with
//! [`Error::Undetermined`]: the write was applied once or not at all, never
//! twice; read the key to find out. Writes sent by the raw gRPC API without a
//! `request_id` get none of this.
//!
//! # Layout
//! - `config`: [`ClientConfig`], retries, timeouts, coalescing and TLS.
//! - `types`: the values calls take and return ([`Value`], [`CasExpect`], ...).
//! - `kv`, `scan`, `admin`: the calls (point and batch reads and writes,
//!   compare-and-swap; scans and range deletes; timestamps, stores,
//!   regions, splits).
//! - `routing`: PD calls, the region cache, store connections and the
//!   routing retry loop shared by every call; `retry`: one call's budget.
//! - `write`: request ids and re-sending a write whose outcome is unknown,
//!   so it is applied once.
//! - `check`: the replica check ([`Client::check_replicas`]): every
//!   replica's digest of its region at one log index.
//! - `batch`: coalescing of concurrent gets, puts and CAS into batch RPCs.
//! - `cache`: the region cache; `pd`: PD endpoints, fail-over, the
//!   cluster id pin; `tso`: the timestamp stream; `error`: [`Error`] and the
//!   one table of retryable failures.

mod admin;
mod batch;
mod cache;
mod check;
mod config;
mod error;
mod kv;
mod pd;
mod retry;
mod routing;
mod scan;
mod tso;
mod types;
mod write;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::IsBootstrappedRequest;
use tonic::transport::Channel;

pub use check::{ReplicaCheck, ReplicaDigest};
pub use config::ClientConfig;
pub use error::{Error, Result};
pub use rdb_proto::tls::{ClientTls, TlsError};
pub use rdb_proto::v1::{KvPair, Peer, PeerRole, Region, RegionRoute, Store, StoreState};
pub use types::{CasExpect, CasResult, ScanOptions, Value};

use cache::RegionCache;

struct Inner {
    pd: Arc<pd::PdConn>,
    cache: RwLock<RegionCache>,
    stores: Mutex<HashMap<String, KvClient<Channel>>>,
    batchers: Mutex<HashMap<String, Arc<batch::StoreBatcher>>>,
    tso: tso::TsoBatcher,
    config: ClientConfig,
    /// PD said the cluster is bootstrapped (it never becomes unbootstrapped).
    bootstrapped: AtomicBool,
    /// This client's request ids (one per write, shared with the coalescers).
    ids: Arc<write::RequestIds>,
    /// Store addresses by id, for reads served by any replica (filled
    /// from PD when a store is missing).
    store_addresses: Mutex<HashMap<u64, String>>,
}

/// The FlareDB client. Cheap to clone; clones share connections, the
/// region cache and the TSO stream.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
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
                bootstrapped: AtomicBool::new(false),
                ids: Arc::new(write::RequestIds::new()),
                store_addresses: Mutex::default(),
            }),
        };
        client
            .pd_call(|mut c| async move { c.is_bootstrapped(IsBootstrappedRequest {}).await })
            .await?;
        Ok(client)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pd", &self.inner.pd.endpoints())
            .finish()
    }
}
