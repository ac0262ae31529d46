//! Measures synced writes with 1 and with many concurrent writers, and how
//! many writers shared each WAL fsync (group commit).
//!
//! ```text
//! cargo run --release -p rdb-storage --example group_commit -- [WRITES_PER_RUN] [DIR]
//! ```
//!
//! DIR defaults to a temporary directory under the system temp dir; point it
//! at the disk you care about (tmpfs makes fsync free and the numbers meaningless).

use std::time::Instant;

use rdb_storage::{Engine, EngineOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writes: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let base = match args.next() {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    println!(
        "{:>11} {:>10} {:>12} {:>10} {:>16}",
        "concurrency", "writes", "writes/s", "fsyncs", "writes per fsync"
    );
    for concurrency in [1u64, 8, 64, 256] {
        let dir = base.path().join(format!("c{concurrency}"));
        let engine = Engine::open(&dir, EngineOptions::default())?;
        let per_task = (writes / concurrency).max(1);
        let value = vec![b'v'; 256];
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let engine = engine.clone();
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    engine
                        .put(format!("key-{t}-{i}").into_bytes(), value.clone())
                        .await?;
                }
                Ok::<_, rdb_storage::StorageError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let (groups, requests) = engine.write_stats();
        println!(
            "{:>11} {:>10} {:>12.0} {:>10} {:>16.1}",
            concurrency,
            requests,
            requests as f64 / elapsed,
            groups,
            requests as f64 / groups.max(1) as f64
        );
    }
    Ok(())
}
