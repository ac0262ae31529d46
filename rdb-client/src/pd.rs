//! Connection to PD, with fail-over across the given endpoints.
//!
//! The first PD that answers pins the client to its cluster id; every other
//! endpoint is checked against it before the client sends it anything else,
//! so a client given the endpoints of two independent clusters refuses the
//! second ([`Error::ClusterMismatch`]) instead of mixing their timestamps
//! and region maps.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::IsBootstrappedRequest;
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{Error, Result};
use crate::ClientConfig;

pub(crate) struct PdConn {
    /// The endpoints given by the user, tried in order.
    endpoints: Vec<String>,
    /// The endpoint in use and, once its cluster id was checked, its client.
    current: Mutex<(usize, Option<PdClient<Channel>>)>,
    /// The cluster id of the first PD that answered, with that PD's address.
    cluster: OnceLock<(u64, String)>,
    /// Timeouts and TLS for the channels.
    config: ClientConfig,
}

/// Why no PD client could be had.
pub(crate) enum PdFailure {
    /// The endpoint could not be reached (worth failing over).
    Transport(Status),
    /// Anything else: the endpoint serves another cluster, or a bad setting.
    Fatal(Error),
}

/// A lazily connecting channel to `addr` with the timeouts and TLS of `cfg`.
pub(crate) fn channel(addr: &str, cfg: &ClientConfig) -> Result<Channel> {
    Ok(endpoint(addr, cfg)?.connect_lazy())
}

/// [`channel`] for a store when calls are not coalesced: its writes are
/// batched (`rdb_proto::io`), so that calls issued together leave in one
/// system call. PD's channel is not: its TSO stream is latency-bound.
pub(crate) fn store_channel(addr: &str, cfg: &ClientConfig) -> Result<Channel> {
    Ok(rdb_proto::io::batched_channel(&endpoint(addr, cfg)?))
}

fn endpoint(addr: &str, cfg: &ClientConfig) -> Result<tonic::transport::Endpoint> {
    Ok(rdb_proto::tls::endpoint(addr, cfg.tls.as_ref())
        .map_err(Error::InvalidArgument)?
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

impl PdConn {
    pub fn new(endpoints: Vec<String>, config: &ClientConfig) -> Result<PdConn> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no PD endpoints given".into()));
        }
        for e in &endpoints {
            channel(e, config)?;
        }
        Ok(PdConn {
            endpoints,
            current: Mutex::new((0, None)),
            cluster: OnceLock::new(),
            config: config.clone(),
        })
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// The cluster id this client is pinned to, once a PD has answered.
    pub fn cluster_id(&self) -> Option<u64> {
        self.cluster.get().map(|(id, _)| *id)
    }

    /// A client for the current endpoint, whose cluster id has been checked
    /// against the pinned one (the first endpoint to answer pins it).
    pub async fn client(&self) -> std::result::Result<PdClient<Channel>, PdFailure> {
        let index = {
            let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = &cur.1 {
                return Ok(c.clone());
            }
            cur.0
        };
        let address = &self.endpoints[index];
        let ch = channel(address, &self.config).map_err(PdFailure::Fatal)?;
        let mut c =
            PdClient::new(ch).max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        let got = c
            .is_bootstrapped(IsBootstrappedRequest {})
            .await
            .map_err(|s| {
                if crate::error::is_transport(&s) {
                    PdFailure::Transport(s)
                } else {
                    PdFailure::Fatal(Error::from_status(&s))
                }
            })?
            .into_inner()
            .cluster_id;
        let (want, pinned_by) = self.cluster.get_or_init(|| (got, address.clone()));
        if got != *want {
            return Err(PdFailure::Fatal(Error::ClusterMismatch {
                address: address.clone(),
                got,
                want: *want,
                pinned_by: pinned_by.clone(),
            }));
        }
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.0 == index && cur.1.is_none() {
            cur.1 = Some(c.clone());
        }
        Ok(c)
    }

    /// Moves to the next endpoint after a failure.
    pub fn fail_over(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.0 = (cur.0 + 1) % self.endpoints.len();
        cur.1 = None;
    }
}
