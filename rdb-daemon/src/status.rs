//! The HTTP status endpoint of a daemon (`--status-addr`): `GET /metrics`
//! in the Prometheus text format.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Updates gauges read at scrape time (RocksDB sizes, regions served) just
/// before `/metrics` is rendered.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// The running status endpoint; dropping it stops it.
pub struct StatusServer {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The status endpoint cannot listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve status-addr {addr}: {source}")]
pub struct StatusError {
    /// The configured address.
    pub addr: SocketAddr,
    /// The error.
    pub source: std::io::Error,
}

/// With an address (`status-addr`), binds it and serves `/metrics` in a task
/// until the returned [`StatusServer`] is dropped; without one, does
/// nothing. Logs the bound address and prints `DAEMON status on ADDR` on
/// stdout (before the daemon's ready line, so scripts that wait for that
/// line can read the status address too).
pub async fn start(
    daemon: &str,
    addr: Option<SocketAddr>,
    metrics: Metrics,
    refresh: Refresh,
) -> Result<Option<StatusServer>, StatusError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bind = async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        Ok((listener, bound))
    };
    let (listener, bound) = bind.await.map_err(|source| StatusError { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            let refresh = refresh.clone();
            async move {
                // Refreshing reads RocksDB properties: off the async threads.
                let body = tokio::task::spawn_blocking(move || {
                    refresh();
                    metrics.render()
                })
                .await
                .unwrap_or_default();
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "status endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "status endpoint serving /metrics");
    if !bound.ip().is_loopback() {
        tracing::warn!(
            addr = %bound,
            "the status endpoint is plain HTTP without authentication and listens on a \
             non-loopback address: anyone who reaches it can read the metrics"
        );
    }
    crate::process::print_ready(&format!("{daemon} status on {bound}"));
    Ok(Some(StatusServer { addr: bound, task }))
}
