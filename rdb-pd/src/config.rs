//! `rdb-pd` configuration: the TOML file (`--config`), overridden by
//! environment variables, overridden by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use rdb_daemon::config::ConfigError;
use rdb_daemon::process::LogFormat;
use rdb_daemon::tls::Security;

/// The documented default config file (`rdb-pd --print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../rdb-pd.default.toml");

/// PD's settings: the config file's keys (kebab-case), every one optional
/// in the file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PdSettings {
    /// Address to serve gRPC on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Directory for PD's metadata (required).
    pub data_dir: PathBuf,
    /// This member's name, unique in the PD group.
    pub name: String,
    /// The initial members of a PD group, `NAME=HOST:PORT,...` ("" = a
    /// group of this member alone). Read at the first start only.
    pub initial_cluster: String,
    /// `new`: the members of `initial-cluster` form a new group; `existing`:
    /// this member joins a running group that already lists it
    /// (`rdb-cli pd add-member`).
    pub initial_cluster_state: ClusterState,
    /// The PD leader's Raft heartbeat interval, in milliseconds.
    pub raft_heartbeat_ms: u64,
    /// Election timeout (milliseconds): a follower that stops hearing from
    /// its leader waits twice this (the leader's lease) plus a random time
    /// between this and twice this, then campaigns.
    pub raft_election_timeout_ms: u64,
    /// Address of the HTTP status endpoint serving `/metrics` ("" = none).
    pub status_addr: String,
    /// A store silent for this many seconds is shown as down (at least 1).
    pub store_down_after_secs: u64,
    /// Seconds open requests and streams get to finish at shutdown.
    pub shutdown_grace_secs: u64,
    /// Log line format on stderr.
    pub log_format: LogFormat,
    /// TLS.
    pub security: Security,
    /// Caps on requests.
    pub limits: PdLimits,
    /// Replica placement.
    pub schedule: PdSchedule,
}

/// Replica placement (`[schedule]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PdSchedule {
    /// Voters every region should have (1 to 7); fewer while fewer stores
    /// are up.
    pub max_replicas: usize,
    /// Milliseconds between two rounds of the replica checker over all
    /// regions (at least 10; 0 turns the checker off).
    pub patrol_interval_ms: u64,
    /// A store silent this many seconds is dead: its replicas are rebuilt
    /// on other stores (at least store-down-after-secs).
    pub max_store_down_time_secs: u64,
}

impl Default for PdSchedule {
    fn default() -> Self {
        PdSchedule {
            max_replicas: 3,
            patrol_interval_ms: 1000,
            max_store_down_time_secs: 1800,
        }
    }
}

/// Whether a member starts a new PD group or joins a running one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// The members of `initial-cluster` form a new group.
    New,
    /// This member joins a running group (after `rdb-cli pd add-member`).
    Existing,
}

/// PD's request caps (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PdLimits {
    /// Largest gRPC message decoded or encoded, in bytes (8 MiB to 64 MiB).
    pub max_message_size: usize,
    /// Most requests and streams (TSO streams included) in flight per
    /// client connection.
    pub max_concurrent_streams: u32,
}

impl Default for PdLimits {
    fn default() -> Self {
        let api = rdb_daemon::limits::API_LIMITS;
        PdLimits {
            max_message_size: api.max_message_size,
            max_concurrent_streams: api.max_concurrent_streams,
        }
    }
}

impl Default for PdSettings {
    fn default() -> Self {
        PdSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 2379)),
            data_dir: PathBuf::new(),
            name: "pd1".into(),
            initial_cluster: String::new(),
            initial_cluster_state: ClusterState::New,
            raft_heartbeat_ms: 150,
            raft_election_timeout_ms: 800,
            status_addr: String::new(),
            store_down_after_secs: 10,
            shutdown_grace_secs: 10,
            log_format: LogFormat::Text,
            security: Security::default(),
            limits: PdLimits::default(),
            schedule: PdSchedule::default(),
        }
    }
}

impl PdSettings {
    /// Checks values the types allow but PD does not; names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "data-dir is not set: give --data-dir, FLAREDB_PD_DATA_DIR or data-dir in the \
                 config file"
                    .into(),
            ));
        }
        if self.name.is_empty() || self.name.contains([',', '=']) {
            return Err(ConfigError::Invalid(format!(
                "name = {:?}: must be non-empty, without ',' or '='",
                self.name
            )));
        }
        if !self.initial_cluster.is_empty() {
            let members = crate::node::parse_initial_cluster(&self.initial_cluster)
                .map_err(|e| ConfigError::Invalid(format!("initial-cluster: {e}")))?;
            if !members.values().any(|m| m.name == self.name) {
                return Err(ConfigError::Invalid(format!(
                    "initial-cluster does not list this member's name {:?} (set name)",
                    self.name
                )));
            }
        } else if self.initial_cluster_state == ClusterState::Existing {
            return Err(ConfigError::Invalid(
                "initial-cluster-state = existing needs initial-cluster (the running members)"
                    .into(),
            ));
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms < 3 * self.raft_heartbeat_ms
        {
            return Err(ConfigError::Invalid(format!(
                "raft-election-timeout-ms = {} must be at least 3 x raft-heartbeat-ms = {} (and \
                 the heartbeat above 0)",
                self.raft_election_timeout_ms, self.raft_heartbeat_ms
            )));
        }
        if self.store_down_after_secs == 0 {
            return Err(ConfigError::Invalid(
                "store-down-after-secs = 0 is too small: at least 1".into(),
            ));
        }
        if !(1..=7).contains(&self.schedule.max_replicas) {
            return Err(ConfigError::Invalid(format!(
                "schedule.max-replicas = {}: must be 1 to 7 (3 or 5 survive the loss of 1 or 2 \
                 stores)",
                self.schedule.max_replicas
            )));
        }
        if (1..10).contains(&self.schedule.patrol_interval_ms) {
            return Err(ConfigError::Invalid(format!(
                "schedule.patrol-interval-ms = {}: at least 10 (or 0: no checker)",
                self.schedule.patrol_interval_ms
            )));
        }
        if self.schedule.max_store_down_time_secs < self.store_down_after_secs {
            return Err(ConfigError::Invalid(format!(
                "schedule.max-store-down-time-secs = {} is below store-down-after-secs = {}: a \
                 store must be down before it is dead",
                self.schedule.max_store_down_time_secs, self.store_down_after_secs
            )));
        }
        self.status_socket()?;
        rdb_daemon::limits::Limits {
            max_message_size: self.limits.max_message_size,
            max_concurrent_streams: self.limits.max_concurrent_streams,
            ..Default::default()
        }
        .validate()
        .map_err(ConfigError::Invalid)
    }

    /// The Raft timing these settings give.
    pub fn timing(&self) -> rdb_raft::Timing {
        rdb_raft::Timing {
            heartbeat: std::time::Duration::from_millis(self.raft_heartbeat_ms),
            election_min: std::time::Duration::from_millis(self.raft_election_timeout_ms),
            election_max: std::time::Duration::from_millis(2 * self.raft_election_timeout_ms),
        }
    }

    /// The parsed `status-addr`, if set.
    pub fn status_socket(&self) -> Result<Option<SocketAddr>, ConfigError> {
        rdb_daemon::config::parse_status_addr(&self.status_addr)
    }
}

/// `rdb-pd` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rdb-pd",
    version,
    about = "FlareDB Placement Driver: timestamp oracle and cluster metadata",
    long_about = "FlareDB Placement Driver: hands out timestamps (TSO) that never go backwards, \
allocates ids, and owns the cluster metadata (stores, regions). Stores (rdb-server) register \
with it; clients ask it where keys live.\n\nSettings come from the config file (--config; see \
--print-default-config for every key, its default and meaning), overridden by environment \
variables, overridden by flags.\n\nPrints `rdb-pd listening on ADDR cluster_id=N` on stdout \
when ready. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more. Stops cleanly on \
SIGINT or SIGTERM."
)]
pub struct PdArgs {
    /// TOML config file; unknown keys and invalid values are refused.
    #[arg(long, env = "FLAREDB_PD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the default config file, every key documented, and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Address to serve gRPC on; port 0 picks a free port [default: 127.0.0.1:2379].
    #[arg(long, env = "FLAREDB_PD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for PD's metadata (created if missing; held exclusively while running).
    #[arg(long, env = "FLAREDB_PD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This member's name, unique in the PD group [default: pd1].
    #[arg(long, env = "FLAREDB_PD_NAME")]
    pub name: Option<String>,
    /// The initial members of a PD group, NAME=HOST:PORT,... (three or
    /// five; each member gets the same list); read at the first start only
    /// [default: a group of this member alone].
    #[arg(long, env = "FLAREDB_PD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// new: the members of --initial-cluster form a new group; existing: join
    /// a running group after `rdb-cli pd add-member` [default: new].
    #[arg(long, env = "FLAREDB_PD_INITIAL_CLUSTER_STATE", value_enum)]
    pub initial_cluster_state: Option<ClusterState>,
    /// The PD leader's Raft heartbeat interval in ms [default: 150].
    #[arg(long, env = "FLAREDB_PD_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Election timeout in ms: a follower that stops hearing from its leader
    /// waits twice this (the leader's lease) plus a random time between this
    /// and twice this, then campaigns (2.4-3.2 s at the default) [default: 800].
    #[arg(long, env = "FLAREDB_PD_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT; port 0 picks one) [default: off].
    #[arg(long, env = "FLAREDB_PD_STATUS_ADDR")]
    pub status_addr: Option<String>,
    /// A store that has not sent a heartbeat for this many seconds is shown as down [default: 10].
    #[arg(long, env = "FLAREDB_PD_STORE_DOWN_AFTER_SECS")]
    pub store_down_after_secs: Option<u64>,
    /// On SIGTERM/SIGINT: seconds to let open requests and streams (clients'
    /// TSO streams) finish after new ones are refused, before stopping anyway [default: 10].
    #[arg(long, env = "FLAREDB_PD_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Log line format on stderr; RUST_LOG sets what is logged [default: text].
    #[arg(long, env = "FLAREDB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// TLS.
    #[command(flatten)]
    pub security: rdb_daemon::config::SecurityArgs,
    /// Largest gRPC message in bytes, 8 MiB-64 MiB [default: 67108864].
    #[arg(long, env = "FLAREDB_PD_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Most requests and streams in flight per client connection [default: 1024].
    #[arg(long, env = "FLAREDB_PD_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Voters every region should have, 1-7; while fewer stores are up,
    /// as many as there are stores [default: 3].
    #[arg(long, env = "FLAREDB_PD_MAX_REPLICAS")]
    pub max_replicas: Option<usize>,
    /// Milliseconds between two rounds of the replica checker; 0 turns it
    /// off (replicas placed only by hand) [default: 1000].
    #[arg(long, env = "FLAREDB_PD_PATROL_INTERVAL_MS")]
    pub patrol_interval_ms: Option<u64>,
    /// A store silent this many seconds is dead and its replicas are
    /// rebuilt on other stores [default: 1800].
    #[arg(long, env = "FLAREDB_PD_MAX_STORE_DOWN_TIME_SECS")]
    pub max_store_down_time_secs: Option<u64>,
}

impl PdArgs {
    /// The settings: file (or defaults), then environment and flags on top;
    /// validated.
    pub fn resolve(self) -> Result<PdSettings, ConfigError> {
        let mut s: PdSettings = rdb_daemon::config::load(self.config.as_deref())?;
        let a = self;
        rdb_daemon::overlay!(a => s:
            listen => listen,
            data_dir => data_dir,
            name => name,
            initial_cluster => initial_cluster,
            initial_cluster_state => initial_cluster_state,
            raft_heartbeat_ms => raft_heartbeat_ms,
            raft_election_timeout_ms => raft_election_timeout_ms,
            status_addr => status_addr,
            store_down_after_secs => store_down_after_secs,
            shutdown_grace_secs => shutdown_grace_secs,
            log_format => log_format,
            max_message_size => limits.max_message_size,
            max_concurrent_streams => limits.max_concurrent_streams,
            max_replicas => schedule.max_replicas,
            patrol_interval_ms => schedule.patrol_interval_ms,
            max_store_down_time_secs => schedule.max_store_down_time_secs,
        );
        a.security.apply(&mut s.security);
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn documented_default_is_the_default() {
        rdb_daemon::config::check_documented_default(DEFAULT_CONFIG, &PdSettings::default())
            .unwrap();
    }

    #[test]
    fn flags_override_the_file_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pd.toml");
        std::fs::write(
            &file,
            "data-dir = \"/d\"\nstore-down-after-secs = 30\n[limits]\nmax-concurrent-streams = 8\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let s = PdArgs::try_parse_from(["rdb-pd", "--config", f, "--store-down-after-secs", "5"])
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(s.store_down_after_secs, 5);
        assert_eq!(s.limits.max_concurrent_streams, 8);
        let e = PdArgs::try_parse_from(["rdb-pd", "--config", f, "--max-message-size", "10"])
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("limits.max-message-size"), "{e}");
    }
}
