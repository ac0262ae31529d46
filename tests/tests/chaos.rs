//! Linearizability under faults: concurrent clients get, put, compare-and-
//! swap and delete a few keys of a region replicated on three stores while
//! its leader is killed (`kill -9`, then restarted), paused (SIGSTOP past
//! the election timeout, then SIGCONT) and cut off from the other replicas
//! (the Raft cut switch of test builds, then healed). Every call's
//! invocation, return and outcome (ok, failed for sure, unknown) is
//! recorded and the history is checked with the linearizability checker
//! of the test crate.
//!
//! CI runs it for `FLAREDB_CHAOS_SECS` (default 20) seconds;
//! `bench/chaos` runs it for minutes and prints the summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flaredb_tests::linearizability::{self, Event, Op};
use flaredb_tests::{cut_raft, heal_raft, TestCluster};
use rand::Rng;
use rdb_client::{CasExpect, Client, Error};

const KEYS: u64 = 3;
const WORKERS: usize = 4;

fn key(k: u64) -> Vec<u8> {
    format!("chaos-{k}").into_bytes()
}

fn val(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// A write whose error leaves its outcome open: anything but a request
/// refused as a whole before it was applied.
fn unknown(e: &Error) -> bool {
    !matches!(e, Error::InvalidArgument(_))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed_reads: AtomicU64,
    unknown_writes: AtomicU64,
}

async fn worker(
    client: Client,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    history: Arc<Mutex<Vec<Event>>>,
    tally: Arc<Tally>,
) {
    while !stop.load(Ordering::SeqCst) {
        let (k, kind, expect_some) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..KEYS),
                rng.random_range(0..100u32),
                rng.random_bool(0.5),
            )
        };
        let fresh = next.fetch_add(1, Ordering::SeqCst);
        let invoked = Instant::now();
        let (op, result): (Op, Result<Op, Error>) = if kind < 40 {
            let r = client.get(key(k)).await;
            (
                Op::Get(None),
                r.map(|v| Op::Get(v.and_then(|v| val(&v.value)))),
            )
        } else if kind < 65 {
            let op = Op::Put(fresh);
            let r = client.put(key(k), fresh.to_string().into_bytes()).await;
            (op.clone(), r.map(|_| op))
        } else if kind < 90 {
            // Expect a recent value (read just before) or absence.
            let expect = if expect_some {
                client
                    .get(key(k))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| val(&v.value))
            } else {
                None
            };
            let invoked_cas = Instant::now();
            let cond = match expect {
                Some(v) => CasExpect::Value(v.to_string().into_bytes()),
                None => CasExpect::Absent,
            };
            let r = client
                .compare_and_swap(key(k), cond, Some(fresh.to_string().into_bytes()))
                .await;
            let op = |succeeded| Op::Cas {
                expect,
                new: Some(fresh),
                succeeded,
            };
            record(
                &history,
                &tally,
                k,
                op(None),
                r.map(|c| op(Some(c.succeeded))),
                invoked_cas,
                true,
            );
            continue;
        } else {
            let r = client.delete(key(k)).await;
            (Op::Delete(None), r.map(|e| Op::Delete(Some(e))))
        };
        let is_write = !matches!(op, Op::Get(_));
        record(&history, &tally, k, op, result, invoked, is_write);
    }
}

fn record(
    history: &Mutex<Vec<Event>>,
    tally: &Tally,
    k: u64,
    op: Op,
    result: Result<Op, Error>,
    invoked: Instant,
    is_write: bool,
) {
    let event = match result {
        Ok(done) => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            Event {
                key: key(k),
                op: done,
                invoked,
                returned: Some(Instant::now()),
            }
        }
        Err(e) if is_write && unknown(&e) => {
            tally.unknown_writes.fetch_add(1, Ordering::Relaxed);
            Event {
                key: key(k),
                op,
                invoked,
                returned: None,
            }
        }
        // A failed read took no effect; a refused write neither.
        Err(_) => {
            tally.failed_reads.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    history.lock().unwrap().push(event);
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

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let history = Arc::new(Mutex::new(Vec::new()));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let c = cluster.client().await;
        tasks.push(tokio::spawn(worker(
            c,
            stop.clone(),
            next.clone(),
            history.clone(),
            tally.clone(),
        )));
    }

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    let mut round = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client.clear_region_cache();
        let Some(leader) = client.regions().await.ok().and_then(|r| {
            r.first()
                .and_then(|r| r.region.as_ref().map(|r| r.store_id))
        }) else {
            continue;
        };
        let Some(i) = cluster.stores.iter().position(|s| s.id == leader) else {
            continue;
        };
        let fault = ["kill -9", "SIGSTOP", "Raft cut"][round % 3];
        round += 1;
        match fault {
            "kill -9" => {
                cluster.stores[i].kill9();
                tokio::time::sleep(Duration::from_secs(2)).await;
                cluster.stores[i].restart();
            }
            "SIGSTOP" => {
                cluster.stores[i].pause();
                tokio::time::sleep(Duration::from_millis(2500)).await;
                cluster.stores[i].resume();
            }
            _ => {
                cut_raft(&cluster.stores[i]);
                tokio::time::sleep(Duration::from_secs(3)).await;
                heal_raft(&cluster.stores[i]);
            }
        }
        faults.push(format!("{fault} on store {leader}"));
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    // Final reads, after the faults, close the history.
    for k in 0..KEYS {
        let invoked = Instant::now();
        let v = client.get(key(k)).await.expect("final read");
        history.lock().unwrap().push(Event {
            key: key(k),
            op: Op::Get(v.and_then(|v| val(&v.value))),
            invoked,
            returned: Some(Instant::now()),
        });
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let verdict = linearizability::check(&history, 50_000_000);
    eprintln!(
        "chaos: {secs} s, {} operations recorded ({} ok, {} writes of unknown outcome, {} failed reads left out), {} faults: {}; verdict: {}",
        history.len(),
        tally.ok.load(Ordering::Relaxed),
        tally.unknown_writes.load(Ordering::Relaxed),
        tally.failed_reads.load(Ordering::Relaxed),
        faults.len(),
        faults.join(", "),
        if verdict.is_ok() { "linearizable" } else { "NOT linearizable" }
    );
    if let Err(v) = verdict {
        for e in &v.history {
            eprintln!("  {:?}", e);
        }
        panic!(
            "the history of key {} is not linearizable",
            String::from_utf8_lossy(&v.key)
        );
    }
    assert!(!faults.is_empty(), "faults were injected");
    assert!(
        tally.ok.load(Ordering::Relaxed) > 100,
        "the clients made progress"
    );
}
