//! One benchmark run: the system under test, preload, workers, clock and report.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdb_client::ClientConfig;

use crate::args::{validate, Args};
use crate::cpu::{self, CpuReport, Watched};
use crate::local;
use crate::report::{group, Report, RunInfo, Stats};
use crate::target::{BenchError, CasOutcome, System, Target};
use crate::workload::{KeyPicker, KeySpace, Op, OpPicker, Workload};

/// Keys per preload batch (etcd's default --max-txn-ops is 128).
const PRELOAD_BATCH: usize = 128;
/// Preload batches in flight.
const PRELOAD_PARALLEL: usize = 8;

/// State shared by the workers and the clock.
struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Operations left to measure (`--ops`); `u64::MAX` when running by time.
    budget: AtomicU64,
    /// Operations finished (all phases), for the progress line.
    done: AtomicU64,
    errors: AtomicU64,
}

struct Plan {
    keyspace: KeySpace,
    keys: KeyPicker,
    ops: OpPicker,
    value_size: usize,
    scan_limit: usize,
}

/// Runs one benchmark as `args` say and returns its report (also printed).
pub async fn run(args: Args) -> Result<Report, BenchError> {
    validate(&args)?;
    let keyspace = KeySpace::new(args.keys, args.key_size).map_err(BenchError::Usage)?;
    let plan = Arc::new(Plan {
        keys: KeyPicker::new(args.distribution, args.keys, args.zipf_exponent)
            .map_err(BenchError::Usage)?,
        keyspace,
        ops: OpPicker::new(args.workload, &args.mix),
        value_size: args.value_size,
        scan_limit: args.scan_limit,
    });
    let tty = std::io::stderr().is_terminal();

    // The system under test.
    let (system, mut endpoints) = if args.etcd.is_empty() {
        (System::Flaredb, args.pd.clone())
    } else {
        (System::Etcd, args.etcd.clone())
    };
    let local = if system == System::Flaredb && endpoints.is_empty() {
        if tty {
            eprint!("starting a local cluster...\r");
        }
        let cluster = local::LocalCluster::start(args.bin_dir.as_deref())?;
        endpoints = vec![cluster.pd.clone()];
        Some(cluster)
    } else {
        None
    };
    // The daemons whose CPU time is reported per operation.
    let watched = args
        .server_pid
        .iter()
        .copied()
        .chain(local.iter().flat_map(|c| c.pids()))
        .map(Watched::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::Usage)?;
    let mut targets = Vec::with_capacity(args.clients);
    let tls = match &args.ca {
        Some(ca) => Some(
            rdb_client::ClientTls::from_pem_files(ca, args.cert.as_deref(), args.key.as_deref())
                .map_err(|e| BenchError::Usage(format!("TLS: {e}")))?,
        ),
        None => None,
    };
    let flare = ClientConfig {
        coalesce: !args.no_coalesce,
        max_coalesced_in_flight: args.coalesce_in_flight,
        tls,
        ..ClientConfig::default()
    };
    for _ in 0..args.clients {
        targets.push(Target::connect(system, &endpoints, &flare).await?);
    }

    let preloaded = args.workload.wants_preload() && !args.no_preload;
    if preloaded {
        preload(&targets, &plan, tty).await?;
    }

    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        budget: AtomicU64::new(args.ops.unwrap_or(u64::MAX)),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let seed = args.seed;
    let rng_of = move |w: usize| {
        SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(w as u64))
    };
    let budgeted = args.ops.is_some();
    let mut workers: Vec<tokio::task::JoinHandle<Result<Vec<WorkerEnd>, BenchError>>> = Vec::new();
    if args.per_core_runtimes == 0 {
        let tasks = spawn_workers(
            0..args.concurrency,
            &targets,
            &plan,
            &shared,
            rng_of,
            budgeted,
        );
        workers.push(tokio::spawn(join_workers(tasks)));
    } else {
        // Thread-per-core: each runtime opens its own connections and runs
        // its share of the workers; all of them start before the warm-up.
        let n = args.per_core_runtimes;
        let mut readies = Vec::with_capacity(n);
        for r in 0..n {
            let (ready, ready_rx) = tokio::sync::oneshot::channel();
            readies.push(ready_rx);
            let (plan, shared, endpoints, flare) = (
                plan.clone(),
                shared.clone(),
                endpoints.clone(),
                flare.clone(),
            );
            let (clients, concurrency) = (args.clients, args.concurrency);
            let thread = std::thread::Builder::new()
                .name(format!("rdb-bench-{r}"))
                .spawn(move || -> Result<Vec<WorkerEnd>, BenchError> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| BenchError::Local(format!("runtime: {e}")))?;
                    rt.block_on(async move {
                        let mut targets = Vec::new();
                        for _ in (r..clients).step_by(n) {
                            targets.push(Target::connect(system, &endpoints, &flare).await?);
                        }
                        let ids = (r..concurrency).step_by(n);
                        let tasks = spawn_workers(ids, &targets, &plan, &shared, rng_of, budgeted);
                        let _ = ready.send(());
                        join_workers(tasks).await
                    })
                })
                .map_err(|e| BenchError::Local(format!("thread: {e}")))?;
            workers.push(tokio::task::spawn_blocking(move || {
                thread
                    .join()
                    .map_err(|_| BenchError::Local("a benchmark thread panicked".into()))?
            }));
        }
        for (r, ready) in readies.into_iter().enumerate() {
            if ready.await.is_err() {
                // The thread ended before its workers started: its error says why.
                return match workers.swap_remove(r).await {
                    Ok(Err(e)) => Err(e),
                    _ => Err(BenchError::Local("a benchmark thread stopped".into())),
                };
            }
        }
    }

    // Warm-up, then the measured phase.
    let label = format!("{} {}", args.workload, system.label());
    tick(
        &shared,
        Duration::from_secs_f64(args.warmup),
        tty,
        &format!("{label} warm-up"),
        None,
    )
    .await;
    let done_before = shared.done.load(Ordering::Relaxed);
    let cpu_before = cpu::sample(&watched);
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (elapsed, cpu_after) = match args.ops {
        None => {
            tick(
                &shared,
                Duration::from_secs_f64(args.duration),
                tty,
                &label,
                Some(done_before),
            )
            .await;
            shared.stop.store(true, Ordering::SeqCst);
            let elapsed = started.elapsed();
            (elapsed, cpu::sample(&watched))
        }
        Some(_) => {
            // Until the workers have used up the budget (the measured time
            // is taken from the workers' own end times below).
            while workers.iter().any(|w| !w.is_finished()) {
                tick(
                    &shared,
                    Duration::from_millis(50),
                    tty,
                    &label,
                    Some(done_before),
                )
                .await;
            }
            (started.elapsed(), cpu::sample(&watched))
        }
    };
    let mut stats = Stats::default();
    let mut last_end = started;
    for w in workers {
        match w.await {
            Ok(Ok(ends)) => {
                for (s, ended) in ends {
                    stats.merge(s);
                    last_end = last_end.max(ended);
                }
            }
            Ok(Err(e)) => stats.error(format!("workers failed: {e}")),
            Err(e) => stats.error(format!("workers failed: {e}")),
        }
    }
    // With --ops the run ends when the last worker's last operation did.
    let elapsed = if args.ops.is_some() {
        last_end.duration_since(started)
    } else {
        elapsed
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    let report = Report::new(
        RunInfo {
            system,
            endpoints,
            local_cluster: local.is_some(),
            workload: args.workload,
            mix: (args.workload == Workload::Mixed).then(|| args.mix.to_string()),
            concurrency: args.concurrency,
            clients: args.clients,
            coalesce: system == System::Flaredb && !args.no_coalesce,
            per_core_runtimes: args.per_core_runtimes,
            keys: args.keys,
            distribution: args.distribution,
            key_size: args.key_size,
            value_size: args.value_size,
            scan_limit: args.scan_limit,
            warmup_secs: args.warmup,
            preloaded,
        },
        &stats,
        elapsed,
        |ops| CpuReport::between(&watched, &cpu_before, &cpu_after, ops),
    );
    drop(targets);
    drop(local);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => return Err(BenchError::Usage(format!("report: {e}"))),
        }
    } else {
        print!("{}", report.text());
    }
    let _ = std::io::stdout().flush();
    Ok(report)
}

/// Waits `total`, printing a progress line every second on a terminal.
/// `measured_from` is the done-count when measuring began (None in warm-up).
async fn tick(
    shared: &Shared,
    total: Duration,
    tty: bool,
    label: &str,
    measured_from: Option<u64>,
) {
    let start = Instant::now();
    let mut last = (start, shared.done.load(Ordering::Relaxed));
    while start.elapsed() < total {
        let step = Duration::from_secs(1).min(total.saturating_sub(start.elapsed()));
        tokio::time::sleep(step).await;
        if !tty {
            continue;
        }
        let now = (Instant::now(), shared.done.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-9);
        let so_far = measured_from
            .map(|from| format!(", {} ops measured", group(now.1 - from)))
            .unwrap_or_default();
        eprint!(
            "\r\x1b[2K{label}: {:.0} s, {} ops/s{so_far}, {} errors",
            start.elapsed().as_secs_f64(),
            group(rate as u64),
            shared.errors.load(Ordering::Relaxed)
        );
        last = now;
    }
}

/// Writes every key once (before get/cas/scan/mixed).
async fn preload(targets: &[Target], plan: &Arc<Plan>, tty: bool) -> Result<(), BenchError> {
    let count = plan.keyspace.count();
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..PRELOAD_PARALLEL {
        let mut target = targets[t % targets.len()].clone();
        let (plan, next, written) = (plan.clone(), next.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(t as u64);
            loop {
                let first = next.fetch_add(PRELOAD_BATCH as u64, Ordering::Relaxed);
                if first >= count {
                    return Ok::<(), BenchError>(());
                }
                let last = (first + PRELOAD_BATCH as u64).min(count);
                let pairs = (first..last)
                    .map(|i| (plan.keyspace.key(i), value(&mut rng, plan.value_size)))
                    .collect();
                target.put_many(pairs).await?;
                written.fetch_add(last - first, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut joined = futures::future::join_all(tasks);
    loop {
        tokio::select! {
            results = &mut joined => {
                for r in results {
                    r.map_err(|e| BenchError::Local(format!("preload task failed: {e}")))??;
                }
                break;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if tty {
                    eprint!("\r\x1b[2Kpreloading: {}/{} keys, {:.0} s",
                        group(written.load(Ordering::Relaxed)), group(count),
                        started.elapsed().as_secs_f64());
                }
            }
        }
    }
    Ok(())
}

fn value(rng: &mut SmallRng, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    v
}

/// What a worker measured, and when it stopped.
type WorkerEnd = (Stats, Instant);

/// Starts workers `ids` on the current runtime, spread over `targets`.
fn spawn_workers(
    ids: impl Iterator<Item = usize>,
    targets: &[Target],
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    rng_of: impl Fn(usize) -> SmallRng,
    budgeted: bool,
) -> Vec<tokio::task::JoinHandle<WorkerEnd>> {
    ids.enumerate()
        .map(|(i, w)| {
            let target = targets[i % targets.len()].clone();
            tokio::spawn(worker(
                target,
                plan.clone(),
                shared.clone(),
                rng_of(w),
                budgeted,
            ))
        })
        .collect()
}

/// Waits for worker tasks.
async fn join_workers(
    tasks: Vec<tokio::task::JoinHandle<WorkerEnd>>,
) -> Result<Vec<WorkerEnd>, BenchError> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(
            t.await
                .map_err(|e| BenchError::Local(format!("worker failed: {e}")))?,
        );
    }
    Ok(out)
}

/// Operations a worker counts locally before adding them to the shared
/// progress counter (one contended atomic add per op would cost more than a
/// TSO call).
const PROGRESS_EVERY: u64 = 64;

/// One request in flight: runs operations until stopped or out of budget;
/// returns what it measured and when it stopped.
async fn worker(
    mut target: Target,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut rng: SmallRng,
    budgeted: bool,
) -> (Stats, Instant) {
    let mut stats = Stats::default();
    let mut val = value(&mut rng, plan.value_size);
    let scan_end = plan.keyspace.end();
    let mut n: u64 = 0;
    let mut unreported: u64 = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let measuring = shared.measuring.load(Ordering::Relaxed);
        if measuring && budgeted {
            // Claim one operation of the budget.
            let claimed = shared
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
            if claimed.is_err() {
                break;
            }
        }
        let op = plan.ops.pick(&mut rng);
        let key = if op == Op::Tso {
            Vec::new()
        } else {
            plan.keyspace.key(plan.keys.pick(&mut rng))
        };
        if matches!(op, Op::Put | Op::Cas) {
            // A different value each write (the first 8 bytes count up).
            n += 1;
            let stamp = n.to_le_bytes();
            let len = stamp.len().min(val.len());
            val[..len].copy_from_slice(&stamp[..len]);
        }
        let started = Instant::now();
        let result = match op {
            Op::Put => target.put(key, val.clone()).await.map(|_| None),
            Op::Get => target.get(key).await.map(|_| None),
            Op::Cas => target.read_then_cas(key, val.clone()).await.map(Some),
            Op::Scan => target
                .scan(key, scan_end.clone(), plan.scan_limit)
                .await
                .map(|rows| {
                    if measuring {
                        stats.scanned_rows += rows as u64;
                    }
                    None
                }),
            Op::Tso => target.tso().await.map(|_| None),
        };
        let latency = started.elapsed();
        unreported += 1;
        if unreported == PROGRESS_EVERY {
            shared.done.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
        // Operations that end after the clock stopped are not counted.
        if !measuring || shared.stop.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Ok(outcome) => {
                stats.record(op, latency);
                match outcome {
                    Some(CasOutcome::Swapped) => stats.cas_swapped += 1,
                    Some(CasOutcome::Conflict) => stats.cas_conflicts += 1,
                    None => {}
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                stats.error(e.to_string());
            }
        }
    }
    shared.done.fetch_add(unreported, Ordering::Relaxed);
    (stats, Instant::now())
}
