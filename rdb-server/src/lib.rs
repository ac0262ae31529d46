//! FlareDB store daemon: serves key ranges (regions) over gRPC.
//!
//! # Layout
//!
//! - [`config`]: the settings (config file, environment, flags).
//! - [`error`]: the store's error type and its one mapping to gRPC statuses.
//! - [`node`]: the running store's state, and its start-up (registration
//!   with PD).
//! - [`bootstrap`]: creating the first region of a new cluster and settling
//!   it with PD.
//! - [`heartbeat`]: the heartbeats that tell PD the regions led here.
//! - [`regions`]: the region replicas held here, their records, and the
//!   routing checks of every request.
//! - [`peer`]: one replica of a region: its Raft group (through `rdb-raft`)
//!   and its state machine (versions, CAS and exactly-once at apply).
//! - [`command`]: the entries of a region's Raft log, their formats and
//!   the gate on the cluster version.
//! - [`digest`]: replica digests, the consistency check across replicas.
//! - [`kv`]: the `flaredb.v1.Kv` service.
//! - [`admin`]: the `flaredb.v1.StoreAdmin` service (argument checks; the
//!   work is in [`split`]).
//! - [`split`]: a split ordered by PD, through the region's Raft log.
//! - [`operator`]: the steps of PD's replica operators (add, promote,
//!   remove a replica; hand over leadership; create and destroy replicas).
//! - [`metrics`]: the store's Prometheus metrics.
//! - [`run`]: the daemon (used by the `rdb-server` binary).

pub mod admin;
pub mod bootstrap;
pub mod command;
pub mod config;
pub mod digest;
pub mod error;
pub mod heartbeat;
pub mod kv;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod peer;
pub mod regions;
pub mod split;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdb_proto::limits::MAX_GRPC_MESSAGE_SIZE;
use rdb_proto::v1::kv_server::KvServer;
use rdb_proto::v1::store_admin_server::StoreAdminServer;
use rdb_storage::{DataDir, Engine, EngineOptions};

pub use config::{ServerArgs, ServerSettings};
pub use error::ServerError;

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
    /// The TLS files are missing, unreadable or incomplete.
    #[error(transparent)]
    Tls(#[from] rdb_proto::tls::TlsError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] rdb_daemon::metrics::MetricsError),
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] rdb_daemon::config::ConfigError),
    /// The status endpoint cannot listen.
    #[error(transparent)]
    Status(#[from] rdb_daemon::status::StatusError),
}

/// Runs the store until `shutdown` resolves.
pub async fn run(
    cfg: ServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    cfg.validate()?;
    let tls = cfg.security.load()?;
    let status_addr = cfg.status_socket()?;
    let dir = DataDir::open(&cfg.data_dir)?;
    dir.check_role("server")?;
    let engine = Engine::open(
        dir.path().join("db"),
        EngineOptions {
            sync: cfg.sync,
            dedup_window: std::time::Duration::from_secs(cfg.dedup_window_secs),
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
    rdb_daemon::net::warn_if_exposed("rdb-server", local, tls.is_some());
    let address = if cfg.advertise_addr.is_empty() {
        local.to_string()
    } else {
        cfg.advertise_addr.clone()
    };
    let node = Arc::new(
        node::Node::start(
            &dir,
            engine.clone(),
            node::StartOptions {
                pd: &cfg.pd,
                address,
                pd_wait: Duration::from_secs(cfg.pd_wait_secs),
                tls: tls.as_ref().map(|t| t.client.clone()),
                raft: node::RaftSettings {
                    timing: cfg.timing(),
                    ..Default::default()
                },
            },
        )
        .await?,
    );
    let events = tokio::spawn(node.clone().run());
    let hb = tokio::spawn(
        node.clone()
            .heartbeat_loop(Duration::from_millis(cfg.heartbeat_ms)),
    );
    let splits = (cfg.split_check_interval_ms > 0).then(|| {
        tokio::spawn(node.clone().split_check_loop(split::SplitRules {
            size: cfg.region_split_size,
            keys: cfg.region_split_keys,
            interval: Duration::from_millis(cfg.split_check_interval_ms),
        }))
    });
    let metrics = rdb_daemon::metrics::Metrics::new()?;
    let refresh = metrics::register(&metrics, node.clone())?;
    tracing::info!(
        addr = %local,
        store_id = node.store_id,
        cluster_id = node.cluster_id,
        regions = node.regions().len(),
        data_dir = %dir.path().display(),
        sync = cfg.sync,
        tls = tls.is_some(),
        "rdb-server serving"
    );
    let status =
        rdb_daemon::status::start("rdb-server", status_addr, metrics.clone(), refresh).await?;
    rdb_daemon::process::print_ready(&format!(
        "rdb-server listening on {local} store_id={}",
        node.store_id
    ));
    let (health, health_service) = rdb_daemon::net::health();
    // What reflection lists and health reports: exactly what is served.
    let services = vec![
        <KvServer<kv::KvService> as tonic::server::NamedService>::NAME,
        <StoreAdminServer<admin::AdminService> as tonic::server::NamedService>::NAME,
    ];
    let (reflection_v1, reflection_v1alpha) =
        rdb_daemon::net::reflection(rdb_proto::STORE_FILE_DESCRIPTOR_SET, &services)
            .map_err(|e| RunError::Reflection(e.to_string()))?;
    let (shutdown, deadline) = rdb_daemon::net::graceful_shutdown(
        shutdown,
        health,
        services,
        Duration::from_secs(cfg.shutdown_grace_secs),
    )
    .await;
    let limits = &cfg.limits;
    // Without TLS, Raft messages from other stores come over the Raft lane
    // on the same port (rdb-raft's `lane.rs`); everything else is gRPC.
    let conns = rdb_daemon::net::incoming(listener);
    let conns: rdb_raft::Incoming = if tls.is_none() {
        node.transport.split_incoming(conns)
    } else {
        Box::pin(conns)
    };
    let conns = futures::StreamExt::map(conns, |c| c.map(rdb_proto::io::BatchedIo::new));
    let served = rdb_daemon::grpc::server(tls.as_ref(), limits.max_concurrent_streams, &metrics)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(node.transport.service())
        .add_service(
            KvServer::new(kv::KvService::new(node.clone(), limits.clone()))
                .max_decoding_message_size(limits.max_message_size)
                .max_encoding_message_size(limits.max_message_size),
        )
        .add_service(
            StoreAdminServer::new(admin::AdminService::new(node.clone()))
                .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(conns, shutdown);
    let served = rdb_daemon::net::serve_until(served, deadline).await;
    hb.abort();
    if let Some(s) = splits {
        s.abort();
    }
    node.shutdown().await;
    events.abort();
    drop(status);
    if let Some(served) = served {
        served?;
    }
    engine.flush()?;
    tracing::info!("rdb-server stopped");
    Ok(())
}
