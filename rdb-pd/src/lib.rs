//! FlareDB Placement Driver: the timestamp oracle and the cluster's metadata.
//!
//! PD runs as one member or as a Raft group of several (`rdb-raft`; see
//! `specs/005-ha-pd/spec.md`).
//!
//! - [`meta`]: the replicated state and the commands that change it.
//! - [`node`]: one member: its id, leadership, membership changes, and the
//!   front that forwards calls from followers to the leader.
//! - [`tso`]: timestamps that never repeat or go back, also across restarts
//!   and leader changes.
//! - [`cluster`]: stores, regions, the id allocator, bootstrap, heartbeats.
//! - [`service`]: the `flaredb.v1.Pd` gRPC service, including split orchestration.
//! - [`operator`]: replica operators (add, remove, promote, leader transfer).
//! - [`oplog`]: the running and recent operators, for `rdb-cli operators`.
//! - [`schedule`]: the replica checker that runs operators on its own.
//! - [`config`]: the settings (config file, environment, flags).
//! - [`metrics`]: PD's Prometheus metrics.
//! - [`run`]: the daemon (used by the `rdb-pd` binary).

pub mod cluster;
pub mod config;
pub mod error;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod oplog;
pub mod schedule;
pub mod service;
pub mod tso;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdb_proto::v1::pd_server::PdServer;
use rdb_storage::{DataDir, Engine, EngineOptions, Identity};

pub use config::{PdArgs, PdSettings};
pub use error::PdError;

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
    /// The Raft group could not start.
    #[error("PD Raft group: {0}")]
    Raft(#[from] rdb_raft::Error),
}

/// Runs PD until `shutdown` resolves.
pub async fn run(
    cfg: PdSettings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    cfg.validate()?;
    let tls = cfg.security.load()?;
    let status_addr = cfg.status_socket()?;
    let dir = DataDir::open(&cfg.data_dir)?;
    let identity = dir.check_role("pd")?;
    let engine = Engine::open(dir.path().join("db"), EngineOptions::default())?;
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
    rdb_daemon::net::warn_if_exposed("rdb-pd", addr, tls.is_some());
    let client_tls = tls.as_ref().map(|t| t.client.clone());
    let placement = if cfg.initial_cluster.is_empty() {
        node::Placement::Single
    } else {
        let members = node::parse_initial_cluster(&cfg.initial_cluster)
            .map_err(|e| PdError::InvalidArgument(format!("initial-cluster: {e}")))?;
        match cfg.initial_cluster_state {
            config::ClusterState::New => node::Placement::New(members),
            config::ClusterState::Existing => node::Placement::Join(
                members
                    .into_values()
                    .filter(|m| m.name != cfg.name)
                    .map(|m| m.address)
                    .collect(),
            ),
        }
    };
    let (node_id, init) =
        node::resolve_member(&engine, &cfg.name, placement, client_tls.as_ref()).await?;
    let meta = Arc::new(meta::Meta::load(&engine)?);
    let transport = rdb_raft::Transport::new(client_tls.clone());
    let group = rdb_raft::Group::start(
        rdb_raft::GroupConfig {
            group_id: node::PD_GROUP,
            node_id,
            timing: cfg.timing(),
            snapshot_every: 1000,
            lease_on_demand: false,
            hibernate: false,
        },
        engine.clone(),
        meta.clone(),
        transport.clone(),
    )
    .await?;
    if let Some(mut members) = init {
        if members.is_empty() {
            members = node::single(&cfg.name, addr);
        }
        group.initialize(members).await?;
    }
    let pd = node::PdNode::new(
        group.clone(),
        meta.clone(),
        Duration::from_secs(cfg.store_down_after_secs),
        client_tls.clone(),
    );
    tokio::spawn(pd.clone().lead());
    let svc = service::PdService::new(pd.clone(), client_tls);
    if cfg.schedule.patrol_interval_ms > 0 {
        tokio::spawn(schedule::run(
            svc.clone(),
            pd.clone(),
            schedule::Schedule {
                rules: cluster::ReplicaRules {
                    max_replicas: cfg.schedule.max_replicas,
                    max_store_down: Duration::from_secs(cfg.schedule.max_store_down_time_secs),
                },
                patrol: Duration::from_millis(cfg.schedule.patrol_interval_ms),
            },
        ));
    }
    let metrics = rdb_daemon::metrics::Metrics::new()?;
    let refresh = metrics::register(&metrics, pd.clone())?;
    let status = rdb_daemon::status::start("rdb-pd", status_addr, metrics.clone(), refresh).await?;
    let (health, health_service) = rdb_daemon::net::health();
    // What reflection lists and health reports: exactly what is served.
    let services = vec![<PdServer<service::PdService> as tonic::server::NamedService>::NAME];
    let (reflection_v1, reflection_v1alpha) =
        rdb_daemon::net::reflection(rdb_proto::PD_FILE_DESCRIPTOR_SET, &services)
            .map_err(|e| RunError::Reflection(e.to_string()))?;
    let (shutdown, deadline) = rdb_daemon::net::graceful_shutdown(
        shutdown,
        health,
        services,
        std::time::Duration::from_secs(cfg.shutdown_grace_secs),
    )
    .await;
    // Without TLS, Raft messages from the other members come over the Raft
    // lane on the same port (rdb-raft's `lane.rs`).
    let conns = rdb_daemon::net::incoming(listener);
    let conns: rdb_raft::Incoming = if tls.is_none() {
        transport.split_incoming(conns)
    } else {
        Box::pin(conns)
    };
    let serve =
        rdb_daemon::grpc::server(tls.as_ref(), cfg.limits.max_concurrent_streams, &metrics)?
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(transport.service())
            .add_service(node::Front::new(
                PdServer::new(svc)
                    .max_decoding_message_size(cfg.limits.max_message_size)
                    .max_encoding_message_size(cfg.limits.max_message_size),
                pd.clone(),
            ))
            .serve_with_incoming_shutdown(conns, shutdown);
    let announce = async {
        // Ready once this member knows its cluster (a leader has set the
        // cluster id and this member has applied it) and can take calls:
        // as the leader, fenced and holding its lease; as a follower,
        // knowing the leader to forward to.
        while !pd.announceable() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cluster_id = meta.read().cluster_id;
        match &identity {
            Some(id) => dir.check_cluster(id, cluster_id)?,
            None => dir.write_identity(&Identity {
                role: "pd".into(),
                cluster_id,
                node_id,
            })?,
        }
        tracing::info!(%addr, cluster_id, node_id, name = %cfg.name, data_dir = %dir.path().display(), tls = tls.is_some(), "rdb-pd serving");
        rdb_daemon::process::print_ready(&format!(
            "rdb-pd listening on {addr} cluster_id={cluster_id}"
        ));
        std::future::pending::<Result<(), RunError>>().await
    };
    let served = tokio::select! {
        served = rdb_daemon::net::serve_until(serve, deadline) => served,
        failed = announce => {
            failed?;
            None
        }
    };
    pd.shutdown().await;
    drop(status);
    if let Some(served) = served {
        served?;
    }
    engine.flush()?;
    tracing::info!("rdb-pd stopped");
    Ok(())
}
