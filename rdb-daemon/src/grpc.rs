//! The tonic server every daemon runs: its TLS acceptor (when configured),
//! the HTTP/2 stream cap per connection, and the request layer of
//! [`crate::metrics`] around every service.

use crate::tls::NodeTls;
use tonic::transport::Server;
use tower::layer::util::{Identity, Stack};

use crate::metrics::{Metrics, RpcLayer};

/// A server builder with TLS (if any), `max_concurrent_streams` and the
/// request layer; the daemon adds its services.
pub fn server(
    tls: Option<&NodeTls>,
    max_concurrent_streams: u32,
    metrics: &Metrics,
) -> Result<Server<Stack<RpcLayer, Identity>>, tonic::transport::Error> {
    let mut builder = Server::builder().max_concurrent_streams(Some(max_concurrent_streams));
    if let Some(t) = tls {
        builder = builder.tls_config(t.server_config())?;
    }
    Ok(builder.layer(metrics.layer()))
}
