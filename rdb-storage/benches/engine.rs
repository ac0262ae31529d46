//! Criterion micro-benchmarks of the storage engine: put (fsynced and not,
//! one writer and 64 at once), get, CAS and scan, on 10,000 keys with
//! 256-byte values.
//!
//! ```text
//! cargo bench -p rdb-storage --bench engine
//! cargo bench -p rdb-storage --bench engine -- get      # one group
//! ```
//!
//! The data lives under the system temp dir (set TMPDIR to measure another
//! disk; tmpfs makes fsync free). Results: docs/benchmarks.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rdb_storage::{Engine, EngineOptions, Expected, ScanOptions, WriteOp};

const KEYS: u64 = 10_000;
const VALUE: usize = 256;

fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:010}").into_bytes()
}

/// An engine with every key written once.
fn loaded(sync: bool) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(
        dir.path().join("db"),
        EngineOptions {
            sync,
            ..Default::default()
        },
    )
    .expect("open engine");
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|&i| WriteOp::Put {
                key: key(i),
                value: vec![b'v'; VALUE],
            })
            .collect();
        engine.write_blocking(ops).expect("preload");
    }
    (dir, engine)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn put(c: &mut Criterion) {
    let mut g = c.benchmark_group("put");
    let n = AtomicU64::new(0);
    let next = || key(n.fetch_add(1, Ordering::Relaxed) % KEYS);
    for sync in [false, true] {
        let (_dir, engine) = loaded(sync);
        let name = if sync { "fsync" } else { "no-sync" };
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}/1 writer"), |b| {
            b.iter(|| {
                engine
                    .write_blocking(vec![WriteOp::Put {
                        key: next(),
                        value: vec![b'v'; VALUE],
                    }])
                    .expect("put")
            })
        });
        // 64 writers at once: group commit shares one WAL write (and fsync).
        let rt = runtime();
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("{name}/64 writers"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let writes = (0..64).map(|_| engine.put(next(), vec![b'v'; VALUE]));
                    for r in futures::future::join_all(writes).await {
                        r.expect("put");
                    }
                })
            })
        });
    }
    g.finish();
}

fn get(c: &mut Criterion) {
    let (_dir, engine) = loaded(false);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(engine.get(&key(i)).expect("get"))
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| black_box(engine.get(b"bench/missing").expect("get")))
    });
    g.finish();
}

fn cas(c: &mut Criterion) {
    let (_dir, engine) = loaded(false);
    let mut g = c.benchmark_group("cas");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    // Read the version, then CAS on it: always succeeds (one writer).
    g.bench_function("read+cas/no-sync", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let k = key(i);
            let version = engine.get(&k).expect("get").map(|v| v.version).unwrap_or(0);
            let r = engine
                .write_blocking(vec![WriteOp::Cas {
                    key: k,
                    expected: Expected::Version(version),
                    new: Some(vec![b'w'; VALUE]),
                }])
                .expect("cas");
            black_box(r)
        })
    });
    // A CAS whose condition fails writes nothing.
    g.bench_function("conflict/no-sync", |b| {
        b.iter_batched(
            || key(7),
            |k| {
                engine
                    .write_blocking(vec![WriteOp::Cas {
                        key: k,
                        expected: Expected::Version(u64::MAX),
                        new: Some(vec![b'w'; VALUE]),
                    }])
                    .expect("cas")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn scan(c: &mut Criterion) {
    let (_dir, engine) = loaded(false);
    let mut g = c.benchmark_group("scan");
    for limit in [10usize, 100] {
        g.throughput(Throughput::Elements(limit as u64));
        let mut i = 0u64;
        g.bench_function(format!("{limit} keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % (KEYS - limit as u64);
                let rows = engine
                    .scan(
                        &key(i),
                        b"bench0",
                        ScanOptions {
                            limit,
                            ..Default::default()
                        },
                    )
                    .expect("scan");
                assert_eq!(rows.len(), limit);
                black_box(rows)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, put, get, cas, scan);
criterion_main!(benches);
