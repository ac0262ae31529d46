//! rdb-bench smoke test: every workload for a fraction of a second against a
//! real cluster (and against a real etcd through the etcd adapter); the
//! report must be well-formed and error-free. Speed is not asserted here
//! (see docs/benchmarks.md).

use std::process::{Command, Output};

#[cfg(feature = "etcd")]
use flaredb_tests::Etcd;
use flaredb_tests::{binary, TestCluster};
use serde_json::Value;

const WORKLOADS: [&str; 6] = ["put", "get", "cas", "scan", "mixed", "tso"];

fn bench(args: &[&str]) -> Output {
    Command::new(binary("rdb-bench"))
        .args(args)
        .output()
        .expect("run rdb-bench")
}

/// Runs one short workload with `--json` and checks the report.
fn smoke(target: &[&str], workload: &str, system: &str) -> Value {
    let mut args = vec![
        workload,
        "--json",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--concurrency",
        "4",
        "--clients",
        "2",
        "--keys",
        "200",
        "--value-size",
        "100",
        "--mix",
        "get=50,put=20,cas=20,scan=10",
    ];
    args.extend_from_slice(target);
    let out = bench(&args);
    assert!(
        out.status.success(),
        "{system} {workload}: status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{system} {workload}: report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let ctx = format!("{system} {workload}: {r:#}");
    assert_eq!(r["system"], system, "{ctx}");
    assert_eq!(r["workload"], workload, "{ctx}");
    assert_eq!(r["errors"], 0, "{ctx}");
    assert_eq!(
        r["error_messages"].as_array().map(Vec::len),
        Some(0),
        "{ctx}"
    );
    assert_eq!(r["concurrency"], 4, "{ctx}");
    assert_eq!(r["clients"], 2, "{ctx}");
    let ops = r["ops"].as_u64().expect("ops");
    assert!(ops > 0, "{ctx}");
    let elapsed = r["elapsed_secs"].as_f64().expect("elapsed_secs");
    assert!((0.29..5.0).contains(&elapsed), "{ctx}");
    let rate = r["ops_per_sec"].as_f64().expect("ops_per_sec");
    assert!(
        (rate - ops as f64 / elapsed).abs() <= 1.0 + rate * 0.01,
        "{ctx}"
    );
    let lat = &r["latency_us"];
    let p = |k: &str| lat[k].as_u64().unwrap_or_else(|| panic!("{k}: {ctx}"));
    assert!(
        1 <= p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999"),
        "{ctx}"
    );
    // The histogram keeps 3 significant digits: p99.9 may round just above max.
    assert!(p("p999") as f64 <= p("max") as f64 * 1.001 + 1.0, "{ctx}");
    let by_op = r["by_op"].as_object().expect("by_op");
    let per_op_total: u64 = by_op.values().map(|o| o["ops"].as_u64().unwrap_or(0)).sum();
    assert_eq!(per_op_total, ops, "{ctx}");
    let cas = r["cas_swapped"].as_u64().unwrap_or(0) + r["cas_conflicts"].as_u64().unwrap_or(0);
    match workload {
        "mixed" => {
            for op in ["get", "put", "cas", "scan"] {
                assert!(by_op.contains_key(op), "{op} missing: {ctx}");
            }
            assert_eq!(cas, by_op["cas"]["ops"].as_u64().unwrap_or(0), "{ctx}");
        }
        w => {
            assert_eq!(by_op.keys().collect::<Vec<_>>(), vec![w], "{ctx}");
            if w == "cas" {
                assert_eq!(cas, ops, "{ctx}");
                assert!(r["cas_swapped"].as_u64().unwrap_or(0) > 0, "{ctx}");
            }
            if w == "scan" {
                // Every start key is a preloaded key, so each scan finds at least it.
                assert!(r["scanned_rows"].as_u64().unwrap_or(0) >= ops, "{ctx}");
            }
        }
    }
    r
}

#[test]
fn every_workload_against_a_cluster() {
    let cluster = TestCluster::start(1);
    for w in WORKLOADS {
        let r = smoke(&["--pd", &cluster.pd.addr], w, "flaredb");
        assert_eq!(r["local_cluster"], false);
    }
    // Thread-per-core: two single-threaded runtimes, a client each.
    for w in ["tso", "mixed"] {
        let r = smoke(
            &["--pd", &cluster.pd.addr, "--per-core-runtimes", "2"],
            w,
            "flaredb",
        );
        assert_eq!(r["per_core_runtimes"], 2);
    }
    // --ops measures exactly that many operations.
    let out = bench(&[
        "get",
        "--json",
        "--ops",
        "500",
        "--warmup",
        "0",
        "--concurrency",
        "8",
        "--keys",
        "200",
        "--pd",
        &cluster.pd.addr,
    ]);
    assert!(out.status.success(), "{out:?}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        (r["ops"].as_u64(), r["errors"].as_u64()),
        (Some(500), Some(0)),
        "{r}"
    );
    // The keys the benchmark wrote are really there.
    let out = cluster.cli(&["--json", "scan", "bench/", "bench0", "--limit", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("scan JSON");
    let n = rows
        .as_array()
        .or_else(|| rows["pairs"].as_array())
        .map(Vec::len);
    assert_eq!(n, Some(200), "{rows}");
}

/// The CPU figures of a report: the named server processes were measured
/// and spent some CPU, and so did the client.
fn check_cpu(r: &Value, servers: &[&str]) {
    let cpu = &r["cpu"];
    let names: Vec<&str> = cpu["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, servers, "{cpu:#}");
    let us = |v: &Value| v.as_f64().unwrap_or(-1.0);
    // 2 cores for the measured interval is the most a process can use.
    let most = 2.0 * r["elapsed_secs"].as_f64().unwrap_or(0.0) * 1e6
        / r["ops"].as_f64().unwrap_or(1.0).max(1.0);
    let total = us(&cpu["server_cpu_us_per_op"]);
    assert!(total > 0.0 && total <= 2.0 * most, "{cpu:#}");
    let sum: f64 = cpu["servers"]
        .as_array()
        .map(|a| a.iter().map(|s| us(&s["cpu_us_per_op"])).sum())
        .unwrap_or(0.0);
    assert!(
        (sum - total).abs() <= 0.1 * servers.len() as f64 + total * 0.01,
        "{cpu:#}"
    );
    let client = us(&cpu["client_cpu_us_per_op"]);
    assert!(client > 0.0 && client <= most, "{cpu:#}");
}

#[test]
fn reports_cpu_per_operation_of_the_servers_and_the_client() {
    // The local cluster's own daemons are measured without being named.
    let r = smoke(&["--no-coalesce"], "get", "flaredb");
    assert_eq!(r["coalesce"], false);
    check_cpu(&r, &["rdb-pd", "rdb-server"]);
    // A cluster given with --pd: the processes named with --server-pid.
    let cluster = TestCluster::start(1);
    let pid = cluster.stores[0].pid().expect("store pid").to_string();
    let r = smoke(
        &["--pd", &cluster.pd.addr, "--server-pid", &pid],
        "put",
        "flaredb",
    );
    assert_eq!(r["coalesce"], true);
    check_cpu(&r, &["rdb-server"]);
    // Without --server-pid nothing is claimed about the servers.
    let r = smoke(&["--pd", &cluster.pd.addr], "put", "flaredb");
    assert!(r["cpu"]["server_cpu_us_per_op"].is_null(), "{r:#}");
    assert!(r["cpu"]["client_cpu_us_per_op"].as_f64().unwrap_or(0.0) > 0.0);
}

#[test]
fn starts_its_own_cluster_without_pd() {
    let r = smoke(&[], "put", "flaredb");
    assert_eq!(r["local_cluster"], true);
    let r = smoke(&["--distribution", "zipfian"], "get", "flaredb");
    assert_eq!(r["distribution"], "zipfian");
}

#[cfg(feature = "etcd")]
#[test]
fn every_workload_against_etcd() {
    let etcd = Etcd::start();
    let pid = etcd.pid().to_string();
    for w in WORKLOADS.iter().filter(|w| **w != "tso") {
        let r = smoke(&["--etcd", &etcd.addr, "--server-pid", &pid], w, "etcd");
        check_cpu(&r, &["etcd"]);
    }
    // tso is FlareDB only: a usage error (exit 2), not a run.
    let out = bench(&["tso", "--etcd", &etcd.addr, "--duration", "0.1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FlareDB only"));
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    for (args, needle) in [
        (vec!["put", "--concurrency", "0"], "--concurrency"),
        (vec!["put", "--key-size", "4"], "--key-size 4 is too small"),
        (vec!["mixed", "--mix", "get=1,del=2"], "del"),
        (
            vec!["put", "--clients", "9", "--concurrency", "8"],
            "--clients",
        ),
        // The old name of --clients still works.
        (
            vec!["put", "--connections", "9", "--concurrency", "8"],
            "--clients",
        ),
        (vec!["put", "--server-pid", "4000000000"], "4000000000"),
        (vec!["put", "--duration", "0"], "--duration"),
        (
            vec!["tso", "--per-core-runtimes", "3"],
            "--per-core-runtimes",
        ),
        (vec!["nosuch"], "nosuch"),
    ] {
        let out = bench(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A PD that is not there: could not run (exit 1), with a message.
    let out = bench(&["put", "--pd", "127.0.0.1:1", "--duration", "0.1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.is_empty());
}

#[test]
fn flaredb_over_mutual_tls() {
    let pki = flaredb_tests::TestPki::generate();
    let c = TestCluster::start_with(1, &pki.node_flags(true), &pki.node_flags(true));
    let (ca, cert, key) = (
        pki.path("ca.pem").display().to_string(),
        pki.path("client.pem").display().to_string(),
        pki.path("client.key").display().to_string(),
    );
    for workload in ["put", "get", "tso"] {
        smoke(
            &[
                "--pd", &c.pd.addr, "--ca", &ca, "--cert", &cert, "--key", &key,
            ],
            workload,
            "flaredb",
        );
    }
    // Without the client certificate: cannot run (exit 1), the cause named.
    let out = bench(&["put", "--duration", "0.2", "--pd", &c.pd.addr, "--ca", &ca]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client certificate"),
        "{out:?}"
    );
    // --ca without --pd is a usage error.
    let out = bench(&["put", "--ca", &ca]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
