//! Transport settings and standard services shared by the daemons' gRPC servers.

use std::future::Future;
use std::time::Duration;

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

pub use tonic_health::server::HealthReporter;
pub use tonic_health::ServingStatus;

/// The standard gRPC health service (`grpc.health.v1.Health`) and its
/// reporter. The overall status (service `""`) starts as `SERVING`;
/// [`graceful_shutdown`] marks the daemon's own services `SERVING` and, when
/// shutdown begins, everything `NOT_SERVING`.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// The reflection services' own names, which [`reflection`] lists next to
/// the daemon's services and health.
pub const REFLECTION_SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// gRPC server reflection (`grpc.reflection.v1` and `v1alpha`) describing
/// exactly what a daemon serves: `services` (its own, described by
/// `descriptor_set`, e.g. [`rdb_proto::PD_FILE_DESCRIPTOR_SET`]), the health
/// service and reflection itself, so that generic tools (grpcurl,
/// grpc_health_probe, Postman) work without the .proto files and list
/// nothing the daemon would answer with `UNIMPLEMENTED`.
#[allow(clippy::type_complexity)]
pub fn reflection(
    descriptor_set: &'static [u8],
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let health = tonic_health::pb::health_server::SERVICE_NAME;
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptor_set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in services.iter().chain(&[health]).chain(&REFLECTION_SERVICES) {
            b = b.with_service_name(*name);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Marks the services in `services` `SERVING`, and prepares graceful
/// shutdown with a deadline. `server` is the future to hand to
/// tonic's `serve_with_incoming_shutdown`: it resolves when `shutdown` does,
/// after marking the overall status and every service in `services`
/// `NOT_SERVING` (so probes and load balancers stop sending work). tonic
/// then stops accepting and waits for open requests and streams; `deadline`
/// resolves `grace` after shutdown began, for the daemon to stop waiting for
/// streams that do not end by themselves (a client's TSO stream, a health
/// watch).
pub async fn graceful_shutdown(
    shutdown: impl Future<Output = ()>,
    health: HealthReporter,
    services: Vec<&'static str>,
    grace: Duration,
) -> (impl Future<Output = ()>, impl Future<Output = ()>) {
    for s in &services {
        health.set_service_status(*s, ServingStatus::Serving).await;
    }
    let (began, mut began_rx) = tokio::sync::watch::channel(false);
    let server = async move {
        shutdown.await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for s in services {
            health
                .set_service_status(s, ServingStatus::NotServing)
                .await;
        }
        let _ = began.send(true);
    };
    let deadline = async move {
        if began_rx.wait_for(|b| *b).await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            // The server future was dropped without shutting down: never fire.
            std::future::pending::<()>().await;
        }
    };
    (server, deadline)
}

/// Runs `serve` until it ends, or until `deadline` (from [`graceful_shutdown`])
/// fires: then `serve` is dropped, which closes every connection still open,
/// and the result is `None`.
pub async fn serve_until<T>(
    serve: impl Future<Output = T>,
    deadline: impl Future<Output = ()>,
) -> Option<T> {
    tokio::select! {
        r = serve => Some(r),
        _ = deadline => {
            tracing::warn!("requests or streams still open when the shutdown grace period ended; closing them");
            None
        }
    }
}

/// Whether a daemon listening on `addr` can be reached from other hosts
/// (anything but a loopback address; `0.0.0.0` and `::` listen everywhere).
pub fn reachable_from_other_hosts(addr: std::net::SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Logs a warning when `daemon` listens without TLS where other hosts can
/// reach it: its traffic is neither encrypted nor authenticated.
pub fn warn_if_exposed(daemon: &str, addr: std::net::SocketAddr, tls: bool) {
    if reachable_from_other_hosts(addr) && !tls {
        tracing::warn!(
            %addr,
            "{daemon} listens on a non-loopback address without TLS: anyone who can reach it \
             can read and write; configure [security] (TLS, mutual TLS) or bind 127.0.0.1"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_exposed() {
        for a in ["127.0.0.1:2379", "127.9.9.9:1", "[::1]:2379"] {
            assert!(!reachable_from_other_hosts(a.parse().unwrap()), "{a}");
        }
        for a in [
            "0.0.0.0:2379",
            "[::]:2379",
            "10.1.2.3:20160",
            "[2001:db8::1]:1",
        ] {
            assert!(reachable_from_other_hosts(a.parse().unwrap()), "{a}");
        }
    }
}
