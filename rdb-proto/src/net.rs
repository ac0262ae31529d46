//! Transport settings shared by the daemons' gRPC servers.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// The accepted connections of `listener`, with `TCP_NODELAY` set on each.
///
/// Without it, a response written as more than one segment (HTTP/2 headers,
/// then data) waits for the peer's delayed ACK: about 40 ms per request on
/// Linux. tonic sets `TCP_NODELAY` only on listeners it binds itself, so
/// every daemon that binds its own listener goes through here.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
