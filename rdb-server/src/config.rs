//! `rdb-server` configuration: the TOML file (`--config`), overridden by
//! environment variables, overridden by flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use rdb_daemon::config::ConfigError;
use rdb_daemon::limits::Limits;
use rdb_daemon::process::LogFormat;
use rdb_daemon::tls::Security;

/// The documented default config file (`rdb-server --print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../rdb-server.default.toml");

/// The most worker threads a store runs.
pub const MAX_WORKER_THREADS: usize = 1024;

/// A store's settings: the config file's keys (kebab-case), every one
/// optional in the file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerSettings {
    /// Address to serve gRPC on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this store ("" = the listen address).
    pub advertise_addr: String,
    /// PD members, HOST:PORT, comma-separated (any one that is up will do).
    pub pd: String,
    /// Directory for the store's data (required).
    pub data_dir: PathBuf,
    /// Address of the HTTP status endpoint serving `/metrics` ("" = none).
    pub status_addr: String,
    /// Milliseconds between heartbeats to PD (at least 10).
    pub heartbeat_ms: u64,
    /// Seconds to keep retrying PD at start before giving up.
    pub pd_wait_secs: u64,
    /// The region leaders' Raft heartbeat interval, in milliseconds.
    pub raft_heartbeat_ms: u64,
    /// Election timeout (milliseconds): a replica that hears nothing from
    /// its region's leader for a random time between this and twice this
    /// campaigns; a leader's lease lasts 80% of it.
    pub raft_election_timeout_ms: u64,
    /// fsync the WAL before acknowledging writes.
    pub sync: bool,
    /// Seconds the store remembers the request id of a write of a format-0
    /// Raft entry (from before the cluster ran 0.2), so that a re-sent copy
    /// is answered instead of applied again (at least 120: clients re-send
    /// for at most 60 s, half the shortest window). Writes of format-1
    /// entries keep their ids 10-20 minutes by their region's clock, the
    /// same on every replica, whatever this says.
    pub dedup_window_secs: u64,
    /// A region larger than this many bytes (keys and stored values) is
    /// split by its leader (at least 4096).
    pub region_split_size: u64,
    /// A region holding more keys than this is split by its leader (at
    /// least 10).
    pub region_split_keys: u64,
    /// Milliseconds between two checks of a leader's regions for a split
    /// (each region only if it was written since its last check); 0: no
    /// automatic splits.
    pub split_check_interval_ms: u64,
    /// Seconds open requests and streams get to finish at shutdown.
    pub shutdown_grace_secs: u64,
    /// Threads serving requests and running the replicas (the async
    /// runtime's workers); 0: one per CPU core this process may use.
    pub worker_threads: usize,
    /// Log line format on stderr.
    pub log_format: LogFormat,
    /// TLS.
    pub security: Security,
    /// Caps on requests.
    pub limits: Limits,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 20160)),
            advertise_addr: String::new(),
            pd: "127.0.0.1:2379".into(),
            data_dir: PathBuf::new(),
            status_addr: String::new(),
            heartbeat_ms: 1000,
            pd_wait_secs: 60,
            raft_heartbeat_ms: 150,
            raft_election_timeout_ms: 800,
            sync: true,
            dedup_window_secs: 600,
            region_split_size: 96 << 20,
            region_split_keys: 960_000,
            split_check_interval_ms: 10_000,
            shutdown_grace_secs: 10,
            worker_threads: 0,
            log_format: LogFormat::Text,
            security: Security::default(),
            limits: Limits::default(),
        }
    }
}

impl ServerSettings {
    /// Checks values the types allow but the store does not; names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.data_dir.as_os_str().is_empty() {
            return invalid(
                "data-dir is not set: give --data-dir, FLAREDB_SERVER_DATA_DIR or data-dir in \
                 the config file"
                    .into(),
            );
        }
        if self.pd.trim().is_empty() {
            return invalid("pd must not be empty".into());
        }
        if self.heartbeat_ms < 10 {
            return invalid(format!(
                "heartbeat-ms = {} is too small: at least 10",
                self.heartbeat_ms
            ));
        }
        if self.raft_heartbeat_ms == 0 || self.raft_election_timeout_ms < 3 * self.raft_heartbeat_ms
        {
            return invalid(format!(
                "raft-election-timeout-ms = {} must be at least 3 x raft-heartbeat-ms = {} (and \
                 the heartbeat above 0)",
                self.raft_election_timeout_ms, self.raft_heartbeat_ms
            ));
        }
        if self.dedup_window_secs < 120 {
            return invalid(format!(
                "dedup-window-secs = {} is too small: at least 120 (rdb-client re-sends a write for up to 60 s)",
                self.dedup_window_secs
            ));
        }
        if self.region_split_size < 4096 || self.region_split_keys < 10 {
            return invalid(format!(
                "region-split-size = {} and region-split-keys = {} are too small: at least 4096 \
                 bytes and 10 keys",
                self.region_split_size, self.region_split_keys
            ));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return invalid(format!(
                "worker-threads = {} is too large: at most {MAX_WORKER_THREADS} (0: one per core)",
                self.worker_threads
            ));
        }
        self.status_socket()?;
        self.limits.validate().map_err(ConfigError::Invalid)
    }

    /// The Raft timing of the region replicas.
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

/// `rdb-server` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rdb-server",
    version,
    about = "FlareDB store: serves the key ranges (regions) PD assigns to it",
    long_about = "FlareDB store daemon. Registers with the Placement Driver (--pd), serves the \
regions PD assigns to it over gRPC (flaredb.v1.Kv), and heartbeats. The first store of a new \
cluster creates the first region, covering the whole key space. Writes are fsynced before they \
are acknowledged unless --no-sync is given.\n\nSettings come from the config file (--config; \
see --print-default-config for every key, its default and meaning), overridden by environment \
variables, overridden by flags.\n\nPrints `rdb-server listening on ADDR store_id=N` on stdout \
when ready. Logs go to stderr; set RUST_LOG for more. Stops cleanly on SIGINT or SIGTERM."
)]
pub struct ServerArgs {
    /// TOML config file; unknown keys and invalid values are refused.
    #[arg(long, env = "FLAREDB_SERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the default config file, every key documented, and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Address to serve gRPC on; port 0 picks a free port [default: 127.0.0.1:20160].
    #[arg(long, env = "FLAREDB_SERVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other nodes and clients use to reach this store [default: the listen address].
    #[arg(long, env = "FLAREDB_SERVER_ADVERTISE")]
    pub advertise_addr: Option<String>,
    /// PD members, HOST:PORT, comma-separated (any one that is up will do) [default: 127.0.0.1:2379].
    #[arg(long, env = "FLAREDB_PD")]
    pub pd: Option<String>,
    /// Directory for the store's data (created if missing; held exclusively while running).
    #[arg(long, env = "FLAREDB_SERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (IP:PORT; port 0 picks one) [default: off].
    #[arg(long, env = "FLAREDB_SERVER_STATUS_ADDR")]
    pub status_addr: Option<String>,
    /// Milliseconds between heartbeats to PD [default: 1000].
    #[arg(long, env = "FLAREDB_SERVER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Seconds to keep retrying PD at start before giving up [default: 60].
    #[arg(long, env = "FLAREDB_SERVER_PD_WAIT_SECS")]
    pub pd_wait_secs: Option<u64>,
    /// The region leaders' Raft heartbeat interval in ms [default: 150].
    #[arg(long, env = "FLAREDB_SERVER_RAFT_HEARTBEAT_MS")]
    pub raft_heartbeat_ms: Option<u64>,
    /// Election timeout in ms: a replica that hears nothing from its
    /// region's leader for a random time between this and twice this
    /// campaigns [default: 800].
    #[arg(long, env = "FLAREDB_SERVER_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Seconds the request id of a write from before the cluster ran 0.2
    /// is remembered, so a re-sent copy is not applied again (later writes:
    /// 10-20 minutes by their region's clock); at least 120 [default: 600].
    #[arg(long, env = "FLAREDB_SERVER_DEDUP_WINDOW_SECS")]
    pub dedup_window_secs: Option<u64>,
    /// Split a region once it holds more than this many bytes (keys and
    /// stored values) [default: 100663296, 96 MiB].
    #[arg(long, env = "FLAREDB_SERVER_REGION_SPLIT_SIZE")]
    pub region_split_size: Option<u64>,
    /// Split a region once it holds more than this many keys [default: 960000].
    #[arg(long, env = "FLAREDB_SERVER_REGION_SPLIT_KEYS")]
    pub region_split_keys: Option<u64>,
    /// Milliseconds between checks of the regions this store leads for a
    /// split; 0 turns automatic splits off [default: 10000].
    #[arg(long, env = "FLAREDB_SERVER_SPLIT_CHECK_INTERVAL_MS")]
    pub split_check_interval_ms: Option<u64>,
    /// Acknowledge writes before the WAL is fsynced: faster, but an OS crash or
    /// power loss can lose the last acknowledged writes (a process crash cannot).
    #[arg(long, env = "FLAREDB_SERVER_NO_SYNC")]
    pub no_sync: bool,
    /// On SIGTERM/SIGINT: seconds to let open requests and streams finish
    /// after new ones are refused, before stopping anyway [default: 10].
    #[arg(long, env = "FLAREDB_SERVER_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Threads serving requests and running the replicas; 0: one per CPU
    /// core this process may use. Give stores that share a machine their
    /// share of its cores (three stores on four cores: 1) [default: 0].
    #[arg(long, env = "FLAREDB_SERVER_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log line format on stderr; RUST_LOG sets what is logged [default: text].
    #[arg(long, env = "FLAREDB_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// TLS.
    #[command(flatten)]
    pub security: rdb_daemon::config::SecurityArgs,
    /// Largest key in bytes, 1-4096 [default: 4096].
    #[arg(long, env = "FLAREDB_SERVER_MAX_KEY_SIZE")]
    pub max_key_size: Option<usize>,
    /// Largest value in bytes, up to 1 MiB [default: 1048576].
    #[arg(long, env = "FLAREDB_SERVER_MAX_VALUE_SIZE")]
    pub max_value_size: Option<usize>,
    /// Most keys in one batch request, 256-10000 [default: 10000].
    #[arg(long, env = "FLAREDB_SERVER_MAX_BATCH_KEYS")]
    pub max_batch_keys: Option<usize>,
    /// Most pairs in one Scan answer (larger scans page), 1-10000 [default: 10000].
    #[arg(long, env = "FLAREDB_SERVER_MAX_SCAN_LIMIT")]
    pub max_scan_limit: Option<u32>,
    /// Most key and value bytes in one Scan or BatchGet answer (larger
    /// answers page), 64 KiB-4 MiB [default: 4194304].
    #[arg(long, env = "FLAREDB_SERVER_MAX_RESPONSE_BYTES")]
    pub max_response_bytes: Option<usize>,
    /// Largest gRPC message in bytes, 8 MiB-64 MiB [default: 67108864].
    #[arg(long, env = "FLAREDB_SERVER_MAX_MESSAGE_SIZE")]
    pub max_message_size: Option<usize>,
    /// Most requests in flight per client connection [default: 1024].
    #[arg(long, env = "FLAREDB_SERVER_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
}

impl ServerArgs {
    /// The settings: file (or defaults), then environment and flags on top;
    /// validated.
    pub fn resolve(self) -> Result<ServerSettings, ConfigError> {
        let mut s: ServerSettings = rdb_daemon::config::load(self.config.as_deref())?;
        let a = self;
        rdb_daemon::overlay!(a => s:
            listen => listen,
            advertise_addr => advertise_addr,
            pd => pd,
            data_dir => data_dir,
            status_addr => status_addr,
            heartbeat_ms => heartbeat_ms,
            pd_wait_secs => pd_wait_secs,
            raft_heartbeat_ms => raft_heartbeat_ms,
            raft_election_timeout_ms => raft_election_timeout_ms,
            dedup_window_secs => dedup_window_secs,
            region_split_size => region_split_size,
            region_split_keys => region_split_keys,
            split_check_interval_ms => split_check_interval_ms,
            shutdown_grace_secs => shutdown_grace_secs,
            worker_threads => worker_threads,
            log_format => log_format,
            max_key_size => limits.max_key_size,
            max_value_size => limits.max_value_size,
            max_batch_keys => limits.max_batch_keys,
            max_scan_limit => limits.max_scan_limit,
            max_response_bytes => limits.max_response_bytes,
            max_message_size => limits.max_message_size,
            max_concurrent_streams => limits.max_concurrent_streams,
        );
        if a.no_sync {
            s.sync = false;
        }
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
        rdb_daemon::config::check_documented_default(DEFAULT_CONFIG, &ServerSettings::default())
            .unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "data-dir = \"/from/file\"\nheartbeat-ms = 500\nsync = true\nworker-threads = 4\n[limits]\nmax-key-size = 100\n",
        )
        .unwrap();
        let args = ServerArgs::try_parse_from([
            "rdb-server",
            "--config",
            file.to_str().unwrap(),
            "--heartbeat-ms",
            "200",
            "--no-sync",
            "--max-key-size",
            "64",
            "--worker-threads",
            "1",
        ])
        .unwrap();
        let s = args.resolve().unwrap();
        assert_eq!(s.worker_threads, 1);
        assert_eq!(s.data_dir, PathBuf::from("/from/file"));
        assert_eq!(s.heartbeat_ms, 200);
        assert!(!s.sync);
        assert_eq!(s.limits.max_key_size, 64);
        assert_eq!(s.limits.max_value_size, Limits::default().max_value_size);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let base = ServerSettings {
            data_dir: "/d".into(),
            ..Default::default()
        };
        let e = ServerSettings {
            heartbeat_ms: 1,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("heartbeat-ms"), "{e}");
        let e = ServerSettings {
            dedup_window_secs: 60,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("dedup-window-secs"), "{e}");
        let e = ServerSettings {
            status_addr: "nowhere".into(),
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("status-addr"), "{e}");
        let e = ServerSettings {
            worker_threads: MAX_WORKER_THREADS + 1,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("worker-threads"), "{e}");
        let e = ServerSettings::default().validate().unwrap_err();
        assert!(e.to_string().contains("data-dir"), "{e}");
        assert!(base.validate().is_ok());
    }
}
