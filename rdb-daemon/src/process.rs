//! Process plumbing shared by the `rdb-pd` and `rdb-server` daemons:
//! logging, shutdown signals, the readiness line.

use std::io::Write;

/// Logs through `tracing` to stderr; `RUST_LOG` sets the filter (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One JSON object per line: timestamp, level, target, fields (message
        // included) and the current span, for log shippers.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// How daemons write their log lines (`--log-format`, `log-format`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Prints the one line on stdout that says the daemon is ready
/// (scripts and tests wait for it), and flushes it.
pub fn print_ready(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Turns on the failpoints named in the `FAILPOINTS` environment variable
/// (`name=actions;name=actions`, the `fail` crate's format, e.g.
/// `import-answer-lost=return`). Only a test build (feature `failpoints`)
/// has failpoints; other builds warn that the variable is ignored. `Err`
/// says which entry is malformed.
pub fn failpoints(daemon: &str) -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    if cfg!(not(feature = "failpoints")) {
        tracing::warn!(
            "FAILPOINTS is set but this {daemon} was built without failpoints \
             (feature `failpoints`, test builds only): ignored"
        );
        return Ok(());
    }
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!("FAILPOINTS entry {entry:?} is not name=actions"));
        };
        configure(name.trim(), actions.trim())
            .map_err(|e| format!("FAILPOINTS entry {entry:?}: {e}"))?;
    }
    tracing::warn!(failpoints = %spec, "failpoints on (test build)");
    Ok(())
}

/// The number a failpoint returns (`name=return(N)`), in test builds
/// with it configured; `None` otherwise (and always in other builds).
#[cfg(feature = "failpoints")]
pub fn failpoint_number(name: &str) -> Option<u64> {
    fail::eval(name, |a| a.and_then(|a| a.parse::<u64>().ok())).flatten()
}

/// See the test build's `failpoint_number`: never set here.
#[cfg(not(feature = "failpoints"))]
pub fn failpoint_number(_: &str) -> Option<u64> {
    None
}

/// Sleeps as many milliseconds as failpoint `name` returns, if it is on
/// (test builds only): a slow disk or a slow peer at that point.
pub async fn failpoint_pause(name: &str) {
    if let Some(ms) = failpoint_number(name) {
        tracing::warn!(ms, "failpoint {name}: pausing");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(feature = "failpoints")]
fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

#[cfg(not(feature = "failpoints"))]
fn configure(_: &str, _: &str) -> Result<(), String> {
    Ok(())
}
