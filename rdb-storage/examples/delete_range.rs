//! Measures a `DeleteRange` over many keys: its time, the growth of the
//! process's peak memory while it runs, and how long a put sent right after
//! it waits.
//!
//! ```sh
//! cargo run -p rdb-storage --example delete_range -- 1000000
//! ```

use std::time::{Duration, Instant};

use rdb_storage::{Engine, EngineOptions, OpResult, WriteOp};

/// A line of /proc/self/status in KiB (Linux).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let tmp = tempfile::tempdir()?;
    let e = Engine::open(
        tmp.path(),
        EngineOptions {
            sync: false,
            ..Default::default()
        },
    )?;
    for chunk in (0..n).step_by(10_000) {
        let ops = (chunk..(chunk + 10_000).min(n))
            .map(|i| WriteOp::Put {
                key: format!("key{i:09}").into_bytes(),
                value: vec![b'v'; 32],
            })
            .collect();
        e.write(ops).await?;
    }
    e.flush()?;
    // Resets the peak resident size (VmHWM) to the current one.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let e2 = e.clone();
    let range = tokio::spawn(async move {
        let r = e2
            .write(vec![WriteOp::DeleteRange {
                start: b"key".to_vec(),
                end: b"kez".to_vec(),
            }])
            .await;
        (r, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let put_start = Instant::now();
    e.put(b"other".to_vec(), b"v".to_vec()).await?;
    let put_wait = put_start.elapsed();
    let (r, took) = range.await?;
    let deleted = match r?[..] {
        [OpResult::DeleteRange(d)] => d,
        ref other => return Err(format!("unexpected {other:?}").into()),
    };
    let peak = status_kib("VmHWM:");
    println!(
        "keys={n} deleted={deleted} delete_range_ms={} put_after_it_ms={} peak_rss_growth_mib={:.1}",
        took.as_millis(),
        put_wait.as_millis(),
        peak.saturating_sub(rss_before) as f64 / 1024.0
    );
    Ok(())
}
