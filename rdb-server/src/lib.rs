//! FlareDB store daemon: serves key ranges (regions) over gRPC.
//!
//! - [`node`]: registration with PD, bootstrap, heartbeats.
//! - [`regions`]: the served regions and the routing checks of every request.
//! - [`kv`]: the `flaredb.v1.Kv` service.
//! - [`admin`]: the `flaredb.v1.StoreAdmin` service (splits and moves ordered by PD).
//! - [`moves`]: how a region moves between stores without ever being served twice.
//! - [`run`]: the daemon (used by the `rdb-server` binary).

pub mod admin;
pub mod error;
pub mod kv;
pub mod moves;
pub mod node;
pub mod regions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE;
use rdb_proto::v1::kv_server::KvServer;
use rdb_proto::v1::store_admin_server::StoreAdminServer;
use rdb_storage::{DataDir, Engine, EngineOptions};

pub use error::ServerError;

/// `rdb-server` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rdb-server",
    version,
    about = "FlareDB store: serves the key ranges (regions) PD assigns to it",
    long_about = "FlareDB store daemon. Registers with the Placement Driver (--pd), serves the \
regions PD assigns to it over gRPC (flaredb.v1.Kv), and heartbeats. The first store of a new \
cluster creates the first region, covering the whole key space. Writes are fsynced before they \
are acknowledged unless --no-sync is given.\n\nPrints `rdb-server listening on ADDR store_id=N` \
on stdout when ready. Logs go to stderr; set RUST_LOG for more. Stops cleanly on SIGINT or SIGTERM."
)]
pub struct ServerConfig {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "FLAREDB_SERVER_LISTEN", default_value = "127.0.0.1:20160")]
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this store (default: the listen address).
    #[arg(long, env = "FLAREDB_SERVER_ADVERTISE")]
    pub advertise_addr: Option<String>,
    /// PD address, HOST:PORT.
    #[arg(long, env = "FLAREDB_PD", default_value = "127.0.0.1:2379")]
    pub pd: String,
    /// Directory for the store's data (created if missing; held exclusively while running).
    #[arg(long, env = "FLAREDB_SERVER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Milliseconds between heartbeats to PD.
    #[arg(long, env = "FLAREDB_SERVER_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Seconds to keep retrying PD at start before giving up.
    #[arg(long, env = "FLAREDB_SERVER_PD_WAIT_SECS", default_value_t = 60)]
    pub pd_wait_secs: u64,
    /// Acknowledge writes before the WAL is fsynced: faster, but an OS crash or
    /// power loss can lose the last acknowledged writes (a process crash cannot).
    #[arg(long, env = "FLAREDB_SERVER_NO_SYNC")]
    pub no_sync: bool,
    /// On SIGTERM/SIGINT: seconds to let open requests and streams finish
    /// after new ones are refused, before stopping anyway.
    #[arg(long, env = "FLAREDB_SERVER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
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
    /// Start-up trouble (PD, bootstrap).
    #[error(transparent)]
    Server(#[from] ServerError),
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

/// Runs the store until `shutdown` resolves.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let dir = DataDir::open(&cfg.data_dir)?;
    dir.check_role("server")?;
    let engine = Engine::open(
        dir.path().join("db"),
        EngineOptions {
            sync: !cfg.no_sync,
            ..Default::default()
        },
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RunError::Bind {
        addr: cfg.listen,
        source,
    })?;
    rdb_proto::net::warn_if_exposed("rdb-server", local);
    let address = cfg
        .advertise_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    let node = Arc::new(
        node::Node::start(
            &dir,
            engine.clone(),
            &cfg.pd,
            address,
            Duration::from_secs(cfg.pd_wait_secs),
        )
        .await?,
    );
    node.resume_moves();
    let hb = tokio::spawn(
        node.clone()
            .heartbeat_loop(Duration::from_millis(cfg.heartbeat_ms.max(10))),
    );
    tracing::info!(
        addr = %local,
        store_id = node.store_id,
        cluster_id = node.cluster_id,
        regions = node.regions.read().await.regions().len(),
        data_dir = %dir.path().display(),
        sync = !cfg.no_sync,
        "rdb-server serving"
    );
    rdb_storage::daemon::print_ready(&format!(
        "rdb-server listening on {local} store_id={}",
        node.store_id
    ));
    let (health, health_service) = rdb_proto::net::health();
    let (reflection_v1, reflection_v1alpha) =
        rdb_proto::net::reflection().map_err(|e| RunError::Reflection(e.to_string()))?;
    let (shutdown, deadline) = rdb_proto::net::graceful_shutdown(
        shutdown,
        health,
        vec![
            <KvServer<kv::KvService> as tonic::server::NamedService>::NAME,
            <StoreAdminServer<admin::AdminService> as tonic::server::NamedService>::NAME,
        ],
        Duration::from_secs(cfg.shutdown_grace_secs),
    )
    .await;
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            KvServer::new(kv::KvService::new(node.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE),
        )
        .add_service(
            StoreAdminServer::new(admin::AdminService::new(node.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(rdb_proto::net::incoming(listener), shutdown);
    let served = rdb_proto::net::serve_until(served, deadline).await;
    hb.abort();
    if let Some(served) = served {
        served?;
    }
    engine.flush()?;
    tracing::info!("rdb-server stopped");
    Ok(())
}
