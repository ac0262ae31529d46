//! Connection to PD, with fail-over across the given endpoints.

use std::sync::Mutex;
use std::time::Duration;

use rdb_proto::v1::pd_client::PdClient;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::ClientConfig;

pub(crate) struct PdConn {
    endpoints: Vec<String>,
    current: Mutex<(usize, Option<PdClient<Channel>>)>,
    config: ClientConfig,
}

/// A lazily connecting channel to `addr` with the timeouts and TLS of `cfg`.
pub(crate) fn channel(addr: &str, cfg: &ClientConfig) -> Result<Channel> {
    Ok(rdb_proto::tls::endpoint(addr, cfg.tls.as_ref())
        .map_err(Error::InvalidArgument)?
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
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
            config: config.clone(),
        })
    }

    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// A client for the current endpoint.
    pub fn client(&self) -> Result<PdClient<Channel>> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &cur.1 {
            return Ok(c.clone());
        }
        let ch = channel(&self.endpoints[cur.0], &self.config)?;
        let c =
            PdClient::new(ch).max_decoding_message_size(rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE);
        cur.1 = Some(c.clone());
        Ok(c)
    }

    /// Moves to the next endpoint after a failure.
    pub fn fail_over(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.0 = (cur.0 + 1) % self.endpoints.len();
        cur.1 = None;
    }
}
