//! Connection to PD, with fail-over across the given endpoints.
//!
//! PD may be a group of members of which only the leader serves (followers
//! forward calls to it). Connecting to an endpoint first asks it for the
//! members (`GetMembers`): the client then talks to the leader directly and
//! remembers every member's address, so that it can fail over to members it
//! was not given. A PD from before PD was replicated does not know
//! `GetMembers`; the endpoint itself is used then.
//!
//! The first PD that answers pins the client to its cluster id; every other
//! endpoint is checked against it before the client sends it anything else,
//! so a client given the endpoints of two independent clusters refuses the
//! second ([`Error::ClusterMismatch`]) instead of mixing their timestamps
//! and region maps.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{GetMembersRequest, IsBootstrappedRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{Error, Result};
use crate::ClientConfig;

pub(crate) struct PdConn {
    /// The endpoints given by the user, then members learned from PD, tried
    /// in order.
    endpoints: Mutex<Vec<String>>,
    /// The endpoint in use and, once its cluster id was checked, its client.
    current: Mutex<(usize, Option<PdClient<Channel>>)>,
    /// The cluster id of the first PD that answered, with that PD's address.
    cluster: OnceLock<(u64, String)>,
    /// The address in use (after leader discovery), and the addresses that
    /// stopped answering (timed out: paused, partitioned) with when. For
    /// `pd_timeout` after that, fail-over skips them and a member naming
    /// one as the leader is not believed (the others are electing a new
    /// leader meanwhile).
    addresses: Mutex<(String, HashMap<String, Instant>)>,
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

/// Runs a PD call with `limit`, answering `DEADLINE_EXCEEDED` past it.
pub(crate) async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = std::result::Result<T, Status>>,
) -> std::result::Result<T, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "PD did not answer within {limit:?}"
        ))),
    }
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
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
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
            endpoints: Mutex::new(endpoints),
            current: Mutex::new((0, None)),
            cluster: OnceLock::new(),
            addresses: Mutex::new((String::new(), HashMap::new())),
            config: config.clone(),
        })
    }

    /// How long a PD call or a TSO request may take.
    pub fn timeout(&self) -> Duration {
        self.config.pd_timeout.min(self.config.rpc_timeout)
    }

    pub fn endpoints(&self) -> String {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join(",")
    }

    /// Asks `address` for the PD members; remembers their addresses and
    /// answers the leader's address (`address` itself if it is the leader,
    /// knows no leader, or is a PD without members).
    async fn leader_of(&self, address: &str) -> std::result::Result<String, PdFailure> {
        let ch = channel(address, &self.config).map_err(PdFailure::Fatal)?;
        // Every member answers this from memory: a member that takes long is
        // paused or cut off.
        let answer = within(
            self.timeout().min(Duration::from_secs(1)),
            PdClient::new(ch).get_members(GetMembersRequest {}),
        )
        .await;
        let members = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {
                self.suspect(address);
                return Err(PdFailure::Transport(s));
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(address.to_string()),
            Err(s) if crate::error::is_transport(&s) => return Err(PdFailure::Transport(s)),
            Err(s) => return Err(PdFailure::Fatal(Error::from_status(&s))),
        };
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for m in &members.members {
            if !m.address.is_empty() && !endpoints.contains(&m.address) {
                endpoints.push(m.address.clone());
            }
        }
        drop(endpoints);
        if members.leader_address.is_empty() {
            return Ok(address.to_string());
        }
        if self.is_suspect(&members.leader_address) {
            return Err(PdFailure::Transport(Status::unavailable(format!(
                "the PD leader {} did not answer; waiting for the members to elect another",
                members.leader_address
            ))));
        }
        Ok(members.leader_address)
    }

    /// Notes that the address in use did not answer in time (a paused or
    /// partitioned leader), and moves to the next endpoint.
    pub fn timed_out(&self) {
        let current = self
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        if !current.is_empty() {
            self.suspect(&current);
        }
        self.fail_over();
    }

    /// Moves on after a failed call: [`timed_out`](PdConn::timed_out) if
    /// the address did not answer in time, else [`fail_over`](PdConn::fail_over).
    pub fn failed(&self, status: &Status) {
        if status.code() == tonic::Code::DeadlineExceeded {
            self.timed_out();
        } else {
            self.fail_over();
        }
    }

    fn suspect(&self, address: &str) {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .insert(address.to_string(), Instant::now());
    }

    fn is_suspect(&self, address: &str) -> bool {
        let mut a = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.timeout();
        a.1.retain(|_, at| at.elapsed() < limit);
        a.1.contains_key(address)
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
        let given = {
            let endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            endpoints[index % endpoints.len()].clone()
        };
        let address = &self.leader_of(&given).await?;
        let ch = channel(address, &self.config).map_err(PdFailure::Fatal)?;
        let mut c =
            PdClient::new(ch).max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        let got = within(self.timeout(), c.is_bootstrapped(IsBootstrappedRequest {}))
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
            self.addresses.lock().unwrap_or_else(|p| p.into_inner()).0 = address.clone();
        }
        Ok(c)
    }

    /// Moves to the next endpoint after a failure.
    pub fn fail_over(&self) {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let n = endpoints.len();
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // The next endpoint that has not just stopped answering (if any has not).
        let mut next = (cur.0 + 1) % n;
        for _ in 0..n {
            if !self.is_suspect(&endpoints[next]) {
                break;
            }
            next = (next + 1) % n;
        }
        cur.0 = next;
        cur.1 = None;
    }
}

/// Longest wait between retries while PD changes leaders: a new leader
/// serves within seconds, and a caller should see it soon after.
pub(crate) const LEADER_CHANGE_POLL: Duration = Duration::from_millis(200);

/// Whether PD answered `UNAVAILABLE` itself (a member without a leader, or
/// a leader not ready yet), as opposed to a connection that failed.
pub(crate) fn changing_leader(s: &Status) -> bool {
    s.code() == tonic::Code::Unavailable && std::error::Error::source(s).is_none()
}
