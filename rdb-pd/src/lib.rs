//! FlareDB Placement Driver: the timestamp oracle and the cluster's metadata.
//!
//! - [`tso`]: timestamps that never repeat or go back, also across restarts.
//! - [`cluster`]: stores, regions, the id allocator, bootstrap, heartbeats.
//! - [`service`]: the `flaredb.v1.Pd` gRPC service, including split orchestration.
//! - [`run`]: the daemon (used by the `rdb-pd` binary).

pub mod cluster;
pub mod error;
pub mod service;
pub mod tso;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE;
use rdb_proto::v1::pd_server::PdServer;
use rdb_storage::{DataDir, Engine, EngineOptions, Identity};

pub use error::PdError;

/// `rdb-pd` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rdb-pd",
    version,
    about = "FlareDB Placement Driver: timestamp oracle and cluster metadata",
    long_about = "FlareDB Placement Driver: hands out timestamps (TSO) that never go backwards, \
allocates ids, and owns the cluster metadata (stores, regions). Stores (rdb-server) register \
with it; clients ask it where keys live.\n\nPrints `rdb-pd listening on ADDR cluster_id=N` on \
stdout when ready. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more. \
Stops cleanly on SIGINT or SIGTERM."
)]
pub struct PdConfig {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "FLAREDB_PD_LISTEN", default_value = "127.0.0.1:2379")]
    pub listen: SocketAddr,
    /// Directory for PD's metadata (created if missing; held exclusively while running).
    #[arg(long, env = "FLAREDB_PD_DATA_DIR")]
    pub data_dir: PathBuf,
    /// A store that has not sent a heartbeat for this many seconds is shown as down.
    #[arg(long, env = "FLAREDB_PD_STORE_DOWN_AFTER_SECS", default_value_t = 10)]
    pub store_down_after_secs: u64,
    /// On SIGTERM/SIGINT: seconds to let open requests and streams (clients'
    /// TSO streams) finish after new ones are refused, before stopping anyway.
    #[arg(long, env = "FLAREDB_PD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Log line format on stderr (RUST_LOG sets what is logged).
    #[arg(long, env = "FLAREDB_LOG_FORMAT", value_enum, default_value_t = rdb_storage::daemon::LogFormat::Text)]
    pub log_format: rdb_storage::daemon::LogFormat,
}

/// Errors that stop the daemon, with a message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Data directory or storage trouble.
    #[error(transparent)]
    Storage(#[from] rdb_storage::StorageError),
    /// Metadata trouble.
    #[error(transparent)]
    Pd(#[from] PdError),
    /// Cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Runs PD until `shutdown` resolves.
pub async fn run(
    cfg: PdConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let dir = DataDir::open(&cfg.data_dir)?;
    let identity = dir.check_role("pd")?;
    let engine = Engine::open(dir.path().join("db"), EngineOptions::default())?;
    let cluster = Arc::new(
        cluster::Cluster::open(
            engine.clone(),
            Duration::from_secs(cfg.store_down_after_secs),
        )
        .await?,
    );
    match identity {
        Some(id) => dir.check_cluster(&id, cluster.cluster_id())?,
        None => dir.write_identity(&Identity {
            role: "pd".into(),
            cluster_id: cluster.cluster_id(),
            node_id: 0,
        })?,
    }
    let tso = Arc::new(tso::Tso::open(engine.clone()).await?);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: cfg.listen,
        source,
    })?;
    rdb_proto::net::warn_if_exposed("rdb-pd", addr);
    let svc = service::PdService::new(tso, cluster.clone());
    tracing::info!(%addr, cluster_id = cluster.cluster_id(), data_dir = %dir.path().display(), "rdb-pd serving");
    rdb_storage::daemon::print_ready(&format!(
        "rdb-pd listening on {addr} cluster_id={}",
        cluster.cluster_id()
    ));
    let (health, health_service) = rdb_proto::net::health();
    let (reflection_v1, reflection_v1alpha) =
        rdb_proto::net::reflection().map_err(|e| RunError::Reflection(e.to_string()))?;
    let (shutdown, deadline) = rdb_proto::net::graceful_shutdown(
        shutdown,
        health,
        vec![<PdServer<service::PdService> as tonic::server::NamedService>::NAME],
        std::time::Duration::from_secs(cfg.shutdown_grace_secs),
    )
    .await;
    let serve = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            PdServer::new(svc)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(rdb_proto::net::incoming(listener), shutdown);
    if let Some(served) = rdb_proto::net::serve_until(serve, deadline).await {
        served?;
    }
    engine.flush()?;
    tracing::info!("rdb-pd stopped");
    Ok(())
}
