//! Latency histograms (HDR), counters, and the final report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::CpuReport;
use crate::workload::Op;

/// Longest latency the histograms hold (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Error messages kept for the report.
const KEPT_ERRORS: usize = 5;

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 us to 60 s.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one worker measured; merged at the end.
pub struct Stats {
    per_op: Vec<Histogram<u64>>,
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub cas_swapped: u64,
    pub cas_conflicts: u64,
    pub scanned_rows: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            per_op: Op::ALL.iter().map(|_| histogram()).collect(),
            errors: 0,
            error_messages: Vec::new(),
            cas_swapped: 0,
            cas_conflicts: 0,
            scanned_rows: 0,
        }
    }
}

impl Stats {
    pub fn record(&mut self, op: Op, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        // Cannot fail: the value is clamped into the histogram's bounds.
        let _ = self.per_op[op.index()].record(us);
    }

    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_messages.len() < KEPT_ERRORS && !self.error_messages.contains(&message) {
            self.error_messages.push(message);
        }
    }

    pub fn merge(&mut self, other: Stats) {
        for (a, b) in self.per_op.iter_mut().zip(&other.per_op) {
            // Same bounds on both sides: cannot fail.
            let _ = a.add(b);
        }
        self.errors += other.errors;
        for m in other.error_messages {
            if self.error_messages.len() < KEPT_ERRORS && !self.error_messages.contains(&m) {
                self.error_messages.push(m);
            }
        }
        self.cas_swapped += other.cas_swapped;
        self.cas_conflicts += other.cas_conflicts;
        self.scanned_rows += other.scanned_rows;
    }

    fn all(&self) -> Histogram<u64> {
        let mut h = histogram();
        for x in &self.per_op {
            let _ = h.add(x);
        }
        h
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One operation kind's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_us: Latency,
}

/// The settings a run used (echoed in the report).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub system: crate::target::System,
    pub endpoints: Vec<String>,
    pub local_cluster: bool,
    pub workload: crate::workload::Workload,
    pub mix: Option<String>,
    pub concurrency: usize,
    /// Independent client objects the requests in flight were spread over.
    pub clients: usize,
    /// FlareDB: whether the client coalesced concurrent gets, puts and CAS into
    /// batch RPCs (`false` with --no-coalesce; always `false` for etcd).
    pub coalesce: bool,
    /// Single-threaded runtimes the workers ran on (0: one multi-threaded runtime).
    pub per_core_runtimes: usize,
    pub keys: u64,
    pub distribution: crate::workload::KeyDistribution,
    pub key_size: usize,
    pub value_size: usize,
    pub scan_limit: usize,
    pub warmup_secs: f64,
    pub preloaded: bool,
}

/// The final report (`--json` prints it as one JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub info: RunInfo,
    /// Measured time (after warm-up).
    pub elapsed_secs: f64,
    /// Completed operations (a CAS counts once whether it swapped or not).
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Failed operations (not in `ops`, not in the latencies).
    pub errors: u64,
    /// The first distinct error messages.
    pub error_messages: Vec<String>,
    /// Latency of all completed operations.
    pub latency_us: Latency,
    /// Per operation kind (only kinds that ran).
    pub by_op: BTreeMap<String, OpReport>,
    /// CAS attempts whose write was applied, and per second.
    pub cas_swapped: u64,
    pub cas_swapped_per_sec: f64,
    /// CAS attempts that lost to a concurrent write.
    pub cas_conflicts: u64,
    /// Rows returned by scans.
    pub scanned_rows: u64,
    /// CPU time of the watched server processes and of this client over
    /// the measured interval, per completed operation.
    pub cpu: CpuReport,
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs).round()
    } else {
        0.0
    }
}

impl Report {
    /// The report of a run; `cpu` gives the CPU figures for the number of
    /// completed operations.
    pub fn new(
        info: RunInfo,
        stats: &Stats,
        elapsed: Duration,
        cpu: impl FnOnce(u64) -> CpuReport,
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        let all = stats.all();
        let by_op = Op::ALL
            .iter()
            .filter(|op| !stats.per_op[op.index()].is_empty())
            .map(|op| {
                let h = &stats.per_op[op.index()];
                (
                    op.name().to_string(),
                    OpReport {
                        ops: h.len(),
                        ops_per_sec: per_sec(h.len(), secs),
                        latency_us: Latency::of(h),
                    },
                )
            })
            .collect();
        Report {
            info,
            elapsed_secs: (secs * 1000.0).round() / 1000.0,
            ops: all.len(),
            ops_per_sec: per_sec(all.len(), secs),
            errors: stats.errors,
            error_messages: stats.error_messages.clone(),
            latency_us: Latency::of(&all),
            by_op,
            cas_swapped: stats.cas_swapped,
            cas_swapped_per_sec: per_sec(stats.cas_swapped, secs),
            cas_conflicts: stats.cas_conflicts,
            scanned_rows: stats.scanned_rows,
            cpu: cpu(all.len()),
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let i = &self.info;
        let mut out = format!(
            "{} {} on {}{}: {} in flight over {} client(s){}{}, {} {} keys of {} bytes, values of {} bytes{}\n",
            i.system.label(),
            i.workload,
            i.endpoints.join(","),
            if i.local_cluster { " (local cluster)" } else { "" },
            i.concurrency,
            i.clients,
            match (i.system, i.coalesce) {
                (crate::target::System::Flaredb, false) => ", not coalesced",
                (crate::target::System::Flaredb, true) => ", coalesced",
                _ => "",
            },
            if i.per_core_runtimes > 0 {
                format!(" on {} single-threaded runtimes", i.per_core_runtimes)
            } else {
                String::new()
            },
            i.keys,
            match i.distribution {
                crate::workload::KeyDistribution::Uniform => "uniform",
                crate::workload::KeyDistribution::Zipfian => "zipfian",
            },
            i.key_size,
            i.value_size,
            i.mix.as_ref().map(|m| format!(", mix {m}")).unwrap_or_default(),
        );
        out += &format!(
            "  {:.2} s measured: {} ops, {} ops/s, {} errors\n",
            self.elapsed_secs,
            self.ops,
            group(self.ops_per_sec as u64),
            self.errors
        );
        out += &format!(
            "  {:<6}{:>12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            "op", "ops/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "mean us"
        );
        let mut row = |name: &str, ops_s: f64, l: &Latency| {
            out += &format!(
                "  {:<6}{:>12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10.1}\n",
                name,
                group(ops_s as u64),
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                l.mean
            );
        };
        for (name, r) in &self.by_op {
            row(name, r.ops_per_sec, &r.latency_us);
        }
        if self.by_op.len() > 1 {
            row("all", self.ops_per_sec, &self.latency_us);
        }
        if self.cas_swapped + self.cas_conflicts > 0 {
            out += &format!(
                "  cas: {} swapped ({} /s), {} conflicts\n",
                self.cas_swapped,
                group(self.cas_swapped_per_sec as u64),
                self.cas_conflicts
            );
        }
        let c = &self.cpu;
        if c.server_cpu_us_per_op.is_some() || c.client_cpu_us_per_op.is_some() {
            let servers = c
                .servers
                .iter()
                .map(|s| format!("{} {:.1}", s.name, s.cpu_us_per_op))
                .collect::<Vec<_>>()
                .join(", ");
            out += &format!(
                "  CPU per op: servers {} us{}, client {} us\n",
                c.server_cpu_us_per_op
                    .map_or("-".to_string(), |x| format!("{x:.1}")),
                if servers.is_empty() {
                    String::new()
                } else {
                    format!(" ({servers})")
                },
                c.client_cpu_us_per_op
                    .map_or("-".to_string(), |x| format!("{x:.1}")),
            );
        }
        for m in &self.error_messages {
            out += &format!("  error: {m}\n");
        }
        out
    }
}

/// 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }

    #[test]
    fn merge_and_percentiles() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for us in 1..=100 {
            a.record(Op::Get, Duration::from_micros(us));
        }
        b.record(Op::Put, Duration::from_millis(5));
        b.error("boom".into());
        b.error("boom".into());
        a.merge(b);
        let all = a.all();
        assert_eq!(all.len(), 101);
        assert_eq!(a.errors, 2);
        assert_eq!(a.error_messages, vec!["boom".to_string()]);
        let l = Latency::of(&a.per_op[Op::Get.index()]);
        assert_eq!(l.p50, 50);
        assert_eq!(l.max, 100);
    }
}
