//! Linearizability under faults: concurrent clients get, put, compare-and-
//! swap and delete a few keys of a region replicated on three stores while
//! its leader is killed (`kill -9`, then restarted), paused (SIGSTOP past
//! the election timeout, then SIGCONT) and cut off from the other replicas
//! (the Raft cut switch of test builds, then healed); every other fault
//! comes after an idle spell long enough for the region's group to fall
//! asleep (hibernation), and the clients resume during it. Every call's
//! invocation, return and outcome (ok, failed for sure, unknown) is
//! recorded and the history is checked with the linearizability checker
//! of the test crate.
//!
//! CI runs it for `FLAREDB_CHAOS_SECS` (default 20) seconds;
//! `bench/chaos` runs it for minutes and prints the summary.

use std::time::{Duration, Instant};

use flaredb_tests::history::Workload;
use flaredb_tests::{cut_raft, heal_raft, TestCluster};

const KEYS: u64 = 3;
const WORKERS: usize = 4;

fn key(k: u64) -> Vec<u8> {
    format!("chaos-{k}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_stay_linearizable_while_leaders_are_killed_paused_and_cut_off() {
    let secs: u64 = std::env::var("FLAREDB_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut cluster = TestCluster::start(3);
    let client = cluster.client().await;
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    // PD's replica checker places the other two replicas.
    flaredb_tests::wait_for_replicas(&client, 3).await;

    let mut clients = Vec::new();
    for _ in 0..WORKERS {
        clients.push(cluster.client().await);
    }
    let workload = Workload::start(clients, (0..KEYS).map(key).collect());

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    let mut round = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Every other round the clients stop first for longer than a
        // group takes to fall asleep (two election timeouts, 3.2 s), so
        // the fault hits a sleeping group; they resume once it is in.
        let asleep = round % 2 == 1;
        if asleep {
            workload.set_idle(true);
            tokio::time::sleep(Duration::from_millis(4500)).await;
        }
        client.clear_region_cache();
        let Some(leader) = client.regions().await.ok().and_then(|r| {
            r.first()
                .and_then(|r| r.region.as_ref().map(|r| r.store_id))
        }) else {
            workload.set_idle(false);
            continue;
        };
        let Some(i) = cluster.stores.iter().position(|s| s.id == leader) else {
            workload.set_idle(false);
            continue;
        };
        let fault = ["kill -9", "SIGSTOP", "Raft cut"][round % 3];
        round += 1;
        match fault {
            "kill -9" => {
                cluster.stores[i].kill9();
                workload.set_idle(false);
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.stores[i].restart();
            }
            "SIGSTOP" => {
                cluster.stores[i].pause();
                workload.set_idle(false);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                cluster.stores[i].resume();
            }
            _ => {
                cut_raft(&cluster.stores[i]);
                workload.set_idle(false);
                tokio::time::sleep(Duration::from_secs(3)).await;
                heal_raft(&cluster.stores[i]);
            }
        }
        faults.push(format!(
            "{fault} on store {leader}{}",
            if asleep { " (after an idle spell)" } else { "" }
        ));
    }
    let summary = workload.finish(&client).await;
    eprintln!(
        "chaos: {secs} s, {}, {} faults: {}",
        summary.line(),
        faults.len(),
        faults.join(", ")
    );
    summary.assert_linearizable();
    assert!(!faults.is_empty(), "faults were injected");
    assert!(
        summary.tally.ok.load(std::sync::atomic::Ordering::Relaxed) > 100,
        "the clients made progress"
    );
    // Every region's replicas hold the same state.
    flaredb_tests::assert_replicas_agree(&client).await;
}
