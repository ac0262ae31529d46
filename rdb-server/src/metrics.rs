//! The store's own Prometheus metrics (the gRPC request metrics come from
//! [`rdb_daemon::metrics`]).
//!
//! - `flaredb_region_errors_total{kind}`: requests answered with a routing
//!   error (`epoch_not_match`, `key_not_in_region`, ...), by kind.
//! - `flaredb_heartbeats_total{result}`: heartbeats sent to PD, `ok` or `failed`.
//! - `flaredb_regions_served`: region replicas this store holds.
//! - `flaredb_region_leaders`: regions whose Raft group this store leads.
//! - `flaredb_leaderships_won_total`: times a replica here became its
//!   region's leader (an election won, or a leadership handed over).
//! - `flaredb_raft_lane_calls_total{side}`: Raft calls answered over the
//!   Raft lane (`sent` by this store, `served` by it).
//! - `flaredb_rocksdb{property}`: RocksDB size and compaction gauges, read at
//!   scrape time.

use std::sync::{Arc, LazyLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rdb_daemon::metrics::{Metrics, MetricsError};
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::RegionError;

use crate::node::Node;

/// Requests answered with a region error, by kind.
pub static REGION_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "flaredb_region_errors_total",
            "Requests answered with a routing error (the client refreshes its route), by kind.",
        ),
        &["kind"],
    )
    .expect("valid metric definition")
});

/// Times a replica here became its region's leader.
pub static LEADERSHIPS_WON: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "flaredb_leaderships_won_total",
        "Times a region replica here became its region's leader (an election won, or a leadership handed over).",
    )
    .expect("valid metric definition")
});

/// Heartbeats sent to PD, by result.
pub static HEARTBEATS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "flaredb_heartbeats_total",
            "Store heartbeats sent to PD, by result (ok, failed).",
        ),
        &["result"],
    )
    .expect("valid metric definition")
});

/// RocksDB properties exported as `flaredb_rocksdb{property=...}`.
const ROCKSDB_PROPERTIES: [&str; 7] = [
    "rocksdb.estimate-live-data-size",
    "rocksdb.total-sst-files-size",
    "rocksdb.cur-size-all-mem-tables",
    "rocksdb.estimate-num-keys",
    "rocksdb.estimate-pending-compaction-bytes",
    "rocksdb.compaction-pending",
    "rocksdb.num-running-compactions",
];

/// Counts one region error.
pub fn count_region_error(e: &RegionError) {
    let kind = match &e.error {
        Some(RegionErrorKind::NotLeader(_)) => "not_leader",
        Some(RegionErrorKind::RegionNotFound(_)) => "region_not_found",
        Some(RegionErrorKind::KeyNotInRegion(_)) => "key_not_in_region",
        Some(RegionErrorKind::EpochNotMatch(_)) => "epoch_not_match",
        Some(RegionErrorKind::ServerIsBusy(_)) => "server_is_busy",
        None => "other",
    };
    REGION_ERRORS.with_label_values(&[kind]).inc();
}

/// Registers the store's metrics; the returned function refreshes the
/// gauges read at scrape time (call it off the async threads).
pub fn register(
    metrics: &Metrics,
    node: Arc<Node>,
) -> Result<rdb_daemon::status::Refresh, MetricsError> {
    let regions = IntGauge::new(
        "flaredb_regions_served",
        "Region replicas this store holds.",
    )?;
    let leaders = IntGauge::new(
        "flaredb_region_leaders",
        "Regions whose Raft group this store leads.",
    )?;
    let asleep = IntGauge::new(
        "flaredb_regions_asleep",
        "Region replicas here whose Raft group sleeps while idle (no heartbeats, no election timer).",
    )?;
    let rocksdb = IntGaugeVec::new(
        Opts::new(
            "flaredb_rocksdb",
            "RocksDB properties of the store's engine (bytes, keys, compactions), summed over column families.",
        ),
        &["property"],
    )?;
    metrics.register(&*REGION_ERRORS)?;
    metrics.register(&*HEARTBEATS)?;
    metrics.register(&*LEADERSHIPS_WON)?;
    metrics.register(&regions)?;
    metrics.register(&leaders)?;
    metrics.register(&asleep)?;
    metrics.register(&rocksdb)?;
    let lane = IntCounterVec::new(
        Opts::new(
            "flaredb_raft_lane_calls_total",
            "Raft calls (appends, votes, leadership transfers) answered over the Raft lane, by side: sent by this store, served by it. Zero under TLS, where they go over gRPC (Raft service).",
        ),
        &["side"],
    )?;
    metrics.register(&lane)?;
    Ok(Arc::new(move || {
        let peers = node.regions().peers();
        regions.set(peers.len() as i64);
        leaders.set(peers.iter().filter(|p| p.group.is_leader()).count() as i64);
        asleep.set(peers.iter().filter(|p| p.group.is_asleep()).count() as i64);
        let (sent, served) = node.transport.lane_calls();
        for (side, n) in [("sent", sent), ("served", served)] {
            let c = lane.with_label_values(&[side]);
            c.inc_by(n.saturating_sub(c.get()));
        }
        for p in ROCKSDB_PROPERTIES {
            if let Some(v) = node.engine.int_property(p) {
                rocksdb
                    .with_label_values(&[p.trim_start_matches("rocksdb.")])
                    .set(v.min(i64::MAX as u64) as i64);
            }
        }
    }))
}
