//! Client settings: retries, timeouts, coalescing, TLS.

use std::time::Duration;

pub use rdb_proto::tls::ClientTls;

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
    /// Longest time a write is re-sent after its outcome became unknown
    /// (default 60 s; at most half of the stores' dedup window, default
    /// 600 s, past which a store could apply a late copy again). Past it, or
    /// past `retry_deadline`, the call fails with [`Error::Undetermined`].
    pub max_resend_age: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one RPC (default 30 s): the bound for a server that
    /// answers HTTP/2 pings but not the request.
    pub rpc_timeout: Duration,
    /// How often an HTTP/2 ping checks that a server's process still
    /// answers (default 1 s), on every connection, idle or not.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is declared
    /// dead (default 2 s). A store that stops answering without closing its
    /// connections (paused, its host hung, a network cut without a reset)
    /// thus fails the calls in flight to it after the interval plus this
    /// timeout (about 3 s) instead of `rpc_timeout`: reads are routed afresh
    /// and writes re-sent, with their request id, to the region's new
    /// leader.
    pub keepalive_timeout: Duration,
    /// Timeout of one call to PD, and longest wait for the answer to a
    /// timestamp request (default 2 s). Past it the client moves to another
    /// PD member: a paused or partitioned PD leader costs about this long.
    pub pd_timeout: Duration,
    /// Send concurrent single-key `get`, `put` and `compare_and_swap` calls
    /// to the same store as one `BatchGet` / `BatchPut` /
    /// `BatchCompareAndSwap` per region (default `true`). Each call
    /// keeps its own result, error and retries; only the RPCs are shared.
    /// With `false`, every call is its own RPC, and the connections to the
    /// stores gather the bytes of calls issued together into one write
    /// instead (one system call for several requests).
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
            max_resend_age: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            pd_timeout: Duration::from_secs(2),
            coalesce: true,
            max_coalesced: 256,
            max_coalesced_in_flight: 4,
            tls: None,
        }
    }
}
