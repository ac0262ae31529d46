//! The command line of `rdb-bench` and its checks.

use std::path::PathBuf;

use clap::Parser;
use rdb_client::ClientConfig;

use crate::target::BenchError;
use crate::workload::{KeyDistribution, Mix, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "rdb-bench",
    version,
    about = "Benchmark FlareDB (or etcd, with the same client code): throughput and latency percentiles",
    long_about = "Runs a workload with a fixed number of requests in flight and reports operations \
per second, errors, and latency p50/p90/p99/p99.9/max from an HDR histogram.\n\n\
FlareDB is driven through rdb-client (region routing, retries, TSO batching). With --pd it uses \
that cluster; with neither --pd nor --etcd it starts a local one (rdb-pd + one rdb-server, \
fsynced writes, found next to this executable or in --bin-dir) in a temporary directory and \
removes it afterwards. With --etcd it measures etcd through the etcd-client crate: get and put \
are etcd Range and Put (linearizable reads), cas is a get then a Txn comparing the key's version.\n\n\
Workloads: put, get, cas (read a key, then CAS on the version read; counts swaps and conflicts), \
scan (up to --scan-limit keys from a random key), mixed (--mix ratios), tso (one timestamp per \
operation; FlareDB only). get, cas, scan and mixed write every key first (--no-preload skips).\n\n\
A progress line is printed on stderr when it is a terminal. --json prints the report as one JSON \
object on stdout.\n\nExit status: 0 run complete without errors, 1 could not run (connection, \
preload, local cluster), 2 bad options, 3 run complete but some operations failed (see errors)."
)]
pub struct Args {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// FlareDB PD endpoints, HOST:PORT[,HOST:PORT...]. Without --pd and --etcd a local cluster is started.
    #[arg(long, value_delimiter = ',', conflicts_with = "etcd")]
    pub pd: Vec<String>,
    /// Measure etcd instead: its client endpoints, HOST:PORT[,...].
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Requests in flight (one worker task each).
    #[arg(short, long, default_value_t = 64)]
    pub concurrency: usize,
    /// Independent client objects, each with its own connections (and, for
    /// FlareDB, its own coalescer and region cache), as separate application
    /// processes would have; the requests in flight are spread evenly over
    /// them. `--clients 8 --concurrency 64` is 8 clients with 8 in flight each.
    #[arg(long, visible_alias = "connections", default_value_t = 1)]
    pub clients: usize,
    /// Number of distinct keys.
    #[arg(short, long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    /// Exponent of the zipfian distribution (higher = hotter head).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Key size in bytes (`bench/` + zero-padded index).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Seconds to measure (after warm-up). Ignored with --ops.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Measure this many operations instead of a duration.
    #[arg(short = 'n', long)]
    pub ops: Option<u64>,
    /// Seconds to run before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Do not write the keys before a get/cas/scan/mixed run.
    #[arg(long)]
    pub no_preload: bool,
    /// Most keys per scan.
    #[arg(long, default_value_t = 10)]
    pub scan_limit: usize,
    /// Ratios of the mixed workload: OP=WEIGHT,... with OP in get, put, cas, scan.
    #[arg(long, default_value_t = Mix::default())]
    pub mix: Mix,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where rdb-pd and rdb-server are, for the local cluster (default: next to rdb-bench).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// FlareDB: send every get, put and CAS as its own RPC instead of coalescing
    /// concurrent ones into batch RPCs (rdb-client's `coalesce` setting).
    #[arg(long)]
    pub no_coalesce: bool,
    /// FlareDB: most coalesced RPC rounds in flight per store.
    #[arg(long, default_value_t = ClientConfig::default().max_coalesced_in_flight)]
    pub coalesce_in_flight: usize,
    /// Runtime threads of the benchmark client (default: one per core; 1 runs
    /// a single-threaded runtime: every worker and the client on one thread).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run the workers on N single-threaded runtimes, one OS thread each
    /// (thread-per-core), each with its own clients; workers and --clients
    /// are spread over them (--clients must be at least N).
    /// 0: all workers on one multi-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub per_core_runtimes: usize,
    /// FlareDB over TLS: the PEM CA certificate that signs the cluster's
    /// certificates (with --pd).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// FlareDB: PEM client certificate, for clusters that require one (with --ca).
    #[arg(long, value_name = "PEM", requires = "ca")]
    pub cert: Option<PathBuf>,
    /// FlareDB: PEM private key of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Server processes whose CPU time to report per operation
    /// (PID[,PID...]; read from /proc/PID/stat before and after the measured
    /// interval). The local cluster's daemons are measured without it.
    #[arg(long, value_delimiter = ',', value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Checks option values and combinations; the error says what is wrong.
pub fn validate(args: &Args) -> Result<(), BenchError> {
    let usage = |m: String| Err(BenchError::Usage(m));
    if args.concurrency == 0 {
        return usage("--concurrency must be at least 1".into());
    }
    if args.clients == 0 || args.clients > args.concurrency {
        return usage(format!(
            "--clients must be between 1 and --concurrency ({}), got {}",
            args.concurrency, args.clients
        ));
    }
    if !(args.duration > 0.0 && args.duration.is_finite()) && args.ops.is_none() {
        return usage(format!(
            "--duration must be above 0 seconds, got {}",
            args.duration
        ));
    }
    if !(args.warmup >= 0.0 && args.warmup.is_finite()) {
        return usage(format!(
            "--warmup must be 0 or more seconds, got {}",
            args.warmup
        ));
    }
    if args.ops == Some(0) {
        return usage("--ops must be at least 1".into());
    }
    if args.threads == Some(0) {
        return usage("--threads must be at least 1".into());
    }
    if args.per_core_runtimes > 0 && args.clients < args.per_core_runtimes {
        return usage(format!(
            "--clients ({}) must be at least --per-core-runtimes ({})",
            args.clients, args.per_core_runtimes
        ));
    }
    if args.coalesce_in_flight == 0 {
        return usage("--coalesce-in-flight must be at least 1".into());
    }
    if args.ca.is_some() && args.pd.is_empty() {
        return usage("--ca is for a FlareDB cluster given with --pd".into());
    }
    if args.scan_limit == 0 {
        return usage("--scan-limit must be at least 1".into());
    }
    if !(args.zipf_exponent > 0.0 && args.zipf_exponent.is_finite()) {
        return usage(format!(
            "--zipf-exponent must be above 0, got {}",
            args.zipf_exponent
        ));
    }
    #[cfg(not(feature = "etcd"))]
    if !args.etcd.is_empty() {
        return usage(crate::target::NO_ETCD.into());
    }
    if args.workload == Workload::Tso && !args.etcd.is_empty() {
        return usage("the tso workload is FlareDB only (etcd has no timestamp oracle)".into());
    }
    Ok(())
}
