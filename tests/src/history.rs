//! A recorded concurrent workload for the linearizability checker: clients
//! get, put, compare-and-swap and delete a few keys while a test injects
//! faults or moves replicas; every call's invocation, return and outcome
//! (ok, failed for sure, unknown) is recorded, and [`Workload::finish`]
//! checks the history with [`crate::linearizability`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rdb_client::{CasExpect, Client, Error};

use crate::linearizability::{self, Event, Op, Val};

fn val(raw: &[u8]) -> Option<Val> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// A write whose error leaves its outcome open: anything but a request
/// refused as a whole before it was applied.
fn unknown(e: &Error) -> bool {
    !matches!(e, Error::InvalidArgument(_))
}

/// Counts of what the workers saw.
#[derive(Default, Debug)]
pub struct Tally {
    /// Calls answered.
    pub ok: AtomicU64,
    /// Reads (or refused writes) that failed and are left out.
    pub failed_reads: AtomicU64,
    /// Writes of unknown outcome.
    pub unknown_writes: AtomicU64,
}

struct Shared {
    keys: Vec<Vec<u8>>,
    stop: AtomicBool,
    /// While set, the workers make no calls (an idle spell).
    idle: AtomicBool,
    next: AtomicU64,
    history: Mutex<Vec<Event>>,
    tally: Tally,
}

/// Running workers and their history.
pub struct Workload {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What [`Workload::finish`] found.
pub struct Summary {
    /// Operations in the checked history.
    pub operations: usize,
    /// The workers' counts.
    pub tally: Tally,
    /// The checker's verdict.
    pub verdict: Result<(), linearizability::Violation>,
}

impl Workload {
    /// Starts one worker per client on `keys`.
    pub fn start(clients: Vec<Client>, keys: Vec<Vec<u8>>) -> Workload {
        let shared = Arc::new(Shared {
            keys,
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            next: AtomicU64::new(1),
            history: Mutex::new(Vec::new()),
            tally: Tally::default(),
        });
        let tasks = clients
            .into_iter()
            .map(|c| tokio::spawn(worker(c, shared.clone())))
            .collect();
        Workload { shared, tasks }
    }

    /// Holds the workers' calls (`true`: once their calls in flight return,
    /// the keys' region sees no traffic) or lets them go on.
    pub fn set_idle(&self, idle: bool) {
        self.shared.idle.store(idle, Ordering::SeqCst);
    }

    /// Calls answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.tally.ok.load(Ordering::Relaxed)
    }

    /// Stops the workers, reads every key once more through `client` to
    /// close the history, and checks it.
    pub async fn finish(self, client: &Client) -> Summary {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("worker");
        }
        for k in &self.shared.keys {
            let invoked = Instant::now();
            let v = client.get(k.clone()).await.expect("final read");
            self.shared.history.lock().unwrap().push(Event {
                key: k.clone(),
                op: Op::Get(v.and_then(|v| val(&v.value))),
                invoked,
                returned: Some(Instant::now()),
            });
        }
        let history = std::mem::take(&mut *self.shared.history.lock().unwrap());
        let verdict = linearizability::check(&history, 50_000_000);
        let t = &self.shared.tally;
        Summary {
            operations: history.len(),
            tally: Tally {
                ok: AtomicU64::new(t.ok.load(Ordering::Relaxed)),
                failed_reads: AtomicU64::new(t.failed_reads.load(Ordering::Relaxed)),
                unknown_writes: AtomicU64::new(t.unknown_writes.load(Ordering::Relaxed)),
            },
            verdict,
        }
    }
}

impl Summary {
    /// One line: operations, outcomes, verdict.
    pub fn line(&self) -> String {
        format!(
            "{} operations recorded ({} ok, {} writes of unknown outcome, {} failed reads left out); verdict: {}",
            self.operations,
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.unknown_writes.load(Ordering::Relaxed),
            self.tally.failed_reads.load(Ordering::Relaxed),
            if self.verdict.is_ok() {
                "linearizable"
            } else {
                "NOT linearizable"
            }
        )
    }

    /// Panics, printing the offending key's history, unless linearizable.
    pub fn assert_linearizable(&self) {
        if let Err(v) = &self.verdict {
            for e in &v.history {
                eprintln!("  {e:?}");
            }
            panic!(
                "the history of key {} is not linearizable",
                String::from_utf8_lossy(&v.key)
            );
        }
    }
}

async fn worker(client: Client, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        if s.idle.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let (k, kind, expect_some) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..s.keys.len()),
                rng.random_range(0..100u32),
                rng.random_bool(0.5),
            )
        };
        let key = s.keys[k].clone();
        let fresh = s.next.fetch_add(1, Ordering::SeqCst);
        let invoked = Instant::now();
        let (op, result): (Op, Result<Op, Error>) = if kind < 40 {
            let r = client.get(key.clone()).await;
            (
                Op::Get(None),
                r.map(|v| Op::Get(v.and_then(|v| val(&v.value)))),
            )
        } else if kind < 65 {
            let op = Op::Put(fresh);
            let r = client
                .put(key.clone(), fresh.to_string().into_bytes())
                .await;
            (op.clone(), r.map(|_| op))
        } else if kind < 90 {
            // Expect a recent value (read just before) or absence.
            let expect = if expect_some {
                client
                    .get(key.clone())
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
                .compare_and_swap(key.clone(), cond, Some(fresh.to_string().into_bytes()))
                .await;
            let op = |succeeded| Op::Cas {
                expect,
                new: Some(fresh),
                succeeded,
            };
            record(
                &s,
                key,
                op(None),
                r.map(|c| op(Some(c.succeeded))),
                invoked_cas,
                true,
            );
            continue;
        } else {
            let r = client.delete(key.clone()).await;
            (Op::Delete(None), r.map(|e| Op::Delete(Some(e))))
        };
        let is_write = !matches!(op, Op::Get(_));
        record(&s, key, op, result, invoked, is_write);
    }
}

fn record(
    s: &Shared,
    key: Vec<u8>,
    op: Op,
    result: Result<Op, Error>,
    invoked: Instant,
    is_write: bool,
) {
    let event = match result {
        Ok(done) => {
            s.tally.ok.fetch_add(1, Ordering::Relaxed);
            Event {
                key,
                op: done,
                invoked,
                returned: Some(Instant::now()),
            }
        }
        Err(e) if is_write && unknown(&e) => {
            s.tally.unknown_writes.fetch_add(1, Ordering::Relaxed);
            Event {
                key,
                op,
                invoked,
                returned: None,
            }
        }
        // A failed read took no effect; a refused write neither.
        Err(_) => {
            s.tally.failed_reads.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    s.history.lock().unwrap().push(event);
}
