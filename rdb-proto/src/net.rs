//! Transport settings and standard services shared by the daemons' gRPC servers.

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
/// reporter. The overall status (service `""`) starts as `SERVING`; each
/// daemon marks its own services with [`HealthReporter::set_serving`] once
/// they can answer, and everything `NOT_SERVING` when it starts to shut down.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// gRPC server reflection (`grpc.reflection.v1` and `v1alpha`) describing
/// every FlareDB service and the health service, so that generic tools
/// (grpcurl, grpc_health_probe, Postman) work without the .proto files.
#[allow(clippy::type_complexity)]
pub fn reflection() -> Result<
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
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

/// `shutdown`, followed by marking every service in `services` and the
/// overall status `NOT_SERVING` (so probes and load balancers stop sending
/// work while the daemon finishes what it has).
pub async fn not_serving_after(
    shutdown: impl std::future::Future<Output = ()>,
    health: HealthReporter,
    services: Vec<&'static str>,
) {
    shutdown.await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    for s in services {
        health
            .set_service_status(s, ServingStatus::NotServing)
            .await;
    }
}
