//! PD's own Prometheus metrics (the gRPC request metrics come from
//! [`rdb_daemon::metrics`]).
//!
//! - `flaredb_tso_requests_total`, `flaredb_tso_timestamps_total`: TSO
//!   requests answered and timestamps handed out.
//! - `flaredb_heartbeats_total{result}`: store heartbeats received, `ok` or
//!   `failed` (refused: unknown store, wrong cluster).
//! - `flaredb_regions`: regions PD knows; `flaredb_stores{state}`: stores by
//!   state (`up`, `down`).

use std::sync::{Arc, LazyLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rdb_daemon::metrics::{Metrics, MetricsError};
use rdb_proto::v1::StoreState;

use crate::cluster::Cluster;

/// TSO requests answered.
pub static TSO_REQUESTS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new("flaredb_tso_requests_total", "TSO requests answered.")
        .expect("valid metric definition")
});

/// Timestamps handed out.
pub static TSO_TIMESTAMPS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "flaredb_tso_timestamps_total",
        "Timestamps handed out by the TSO.",
    )
    .expect("valid metric definition")
});

/// Store heartbeats received, by result.
pub static HEARTBEATS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "flaredb_heartbeats_total",
            "Store heartbeats received, by result (ok, failed).",
        ),
        &["result"],
    )
    .expect("valid metric definition")
});

/// Registers PD's metrics; the returned function refreshes the gauges read
/// at scrape time.
pub fn register(
    metrics: &Metrics,
    cluster: Arc<Cluster>,
) -> Result<rdb_daemon::status::Refresh, MetricsError> {
    let regions = IntGauge::new("flaredb_regions", "Regions PD knows.")?;
    let stores = IntGaugeVec::new(
        Opts::new("flaredb_stores", "Stores PD knows, by state (up, down)."),
        &["state"],
    )?;
    metrics.register(&*TSO_REQUESTS)?;
    metrics.register(&*TSO_TIMESTAMPS)?;
    metrics.register(&*HEARTBEATS)?;
    metrics.register(&regions)?;
    metrics.register(&stores)?;
    Ok(Arc::new(move || {
        // Runs on a blocking thread: waiting for the metadata lock is fine.
        let (count, all) = futures::executor::block_on(async {
            (cluster.region_count().await, cluster.all_stores().await)
        });
        regions.set(count as i64);
        let up = all
            .iter()
            .filter(|s| s.state == StoreState::Up as i32)
            .count();
        stores.with_label_values(&["up"]).set(up as i64);
        stores
            .with_label_values(&["down"])
            .set((all.len() - up) as i64);
    }))
}
