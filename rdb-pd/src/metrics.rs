//! PD's own Prometheus metrics (the gRPC request metrics come from
//! [`rdb_daemon::metrics`]).
//!
//! - `flaredb_tso_requests_total`, `flaredb_tso_timestamps_total`: TSO
//!   requests answered and timestamps handed out.
//! - `flaredb_heartbeats_total{result}`: store heartbeats received, `ok` or
//!   `failed` (refused: unknown store, wrong cluster).
//! - `flaredb_regions`: regions PD knows; `flaredb_stores{state}`: stores by
//!   state (`up`, `down`) (as this member's replicated state knows them;
//!   the states are the leader's).
//! - `flaredb_pd_leader`: 1 on the member that serves (leader, ready, lease
//!   held), else 0; `flaredb_pd_term`: its Raft term;
//!   `flaredb_pd_members{role}`: members by role (`voter`, `learner`);
//!   `flaredb_pd_applied_index`: the last Raft log index applied here.

use std::sync::{Arc, LazyLock};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rdb_daemon::metrics::{Metrics, MetricsError};
use rdb_proto::v1::StoreState;

use crate::node::PdNode;

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
    node: Arc<PdNode>,
) -> Result<rdb_daemon::status::Refresh, MetricsError> {
    let cluster = node.cluster.clone();
    let regions = IntGauge::new("flaredb_regions", "Regions PD knows.")?;
    let leader = IntGauge::new(
        "flaredb_pd_leader",
        "1 on the PD member that serves (leader, ready, lease held), else 0.",
    )?;
    let term = IntGauge::new("flaredb_pd_term", "This PD member's Raft term.")?;
    let applied = IntGauge::new(
        "flaredb_pd_applied_index",
        "The last Raft log index applied on this PD member.",
    )?;
    let members = IntGaugeVec::new(
        Opts::new(
            "flaredb_pd_members",
            "PD members by role (voter, learner), as this member knows them.",
        ),
        &["role"],
    )?;
    for g in [&leader, &term, &applied] {
        metrics.register(g)?;
    }
    metrics.register(&members)?;
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
        let st = node.group.status();
        leader.set(i64::from(node.check_serving().is_ok()));
        term.set(st.term as i64);
        applied.set(st.applied_index as i64);
        let voters = st.voters.len();
        members.with_label_values(&["voter"]).set(voters as i64);
        members
            .with_label_values(&["learner"])
            .set(st.members.len().saturating_sub(voters) as i64);
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
