//! `rdb-bench`: measures FlareDB (through rdb-client, the real routing path)
//! or etcd (through etcd-client) with the same workers, and reports
//! throughput and HDR latency percentiles.
use std::process::ExitCode;

use clap::Parser;

use rdb_bench::args::Args;
use rdb_bench::runner::run;
use rdb_bench::target::BenchError;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut builder = match args.threads {
        // One thread: a current-thread runtime (no cross-thread wake-ups).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            if report.errors > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(BenchError::Usage(m)) => {
            eprintln!("rdb-bench: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("rdb-bench: {e}");
            ExitCode::from(1)
        }
    }
}
