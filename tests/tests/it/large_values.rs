//! Answers are bounded in bytes, not only in keys: 200 values of 1 MiB
//! (200 MiB, three times the gRPC message limit) can be scanned, read in one
//! batch, read by many coalesced gets at once, and split through the Raft log,
//! while the store never builds an answer larger than its byte budget.

use std::sync::Arc;

use flaredb_tests::TestCluster;
use rdb_proto::limits::MAX_VALUE_SIZE;

const KEYS: usize = 200;

fn key(i: usize) -> Vec<u8> {
    format!("big{i:04}").into_bytes()
}

/// A 1 MiB value that names its key (so a mixed-up answer is caught).
fn value(i: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; MAX_VALUE_SIZE];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

async fn load(c: &rdb_client::Client) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(16) {
        let pairs = chunk.iter().map(|&i| (key(i), value(i))).collect();
        c.batch_put(pairs).await.expect("batch put of 16 MiB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_and_batch_gets_of_large_values_page_by_bytes() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;
    load(&c).await;
    let before = cluster.stores[0].peak_rss().unwrap_or(0);

    let all = c
        .scan(b"big".to_vec(), b"bih".to_vec(), 0)
        .await
        .expect("scan");
    assert_eq!(all.len(), KEYS);
    for (i, p) in all.iter().enumerate() {
        assert_eq!(p.key, key(i));
        assert!(p.value == value(i), "value of {i} differs");
    }
    let rev = c
        .scan_with(
            b"big".to_vec(),
            b"bih".to_vec(),
            rdb_client::ScanOptions {
                reverse: true,
                limit: 150,
                ..Default::default()
            },
        )
        .await
        .expect("reverse scan");
    assert_eq!(rev.len(), 150);
    assert_eq!(rev[0].key, key(KEYS - 1));

    let mut keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    keys.insert(7, b"big-missing".to_vec());
    let got = c.batch_get(keys).await.expect("batch get");
    assert_eq!(got.len(), KEYS);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.key, key(i));
        assert!(p.value == value(i), "value of {i} differs");
    }
    let after = cluster.stores[0].peak_rss().unwrap_or(0);
    eprintln!(
        "store peak RSS: {} MiB after loading, {} MiB after scanning and batch reads",
        before >> 20,
        after >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_gets_of_large_and_small_values_all_succeed() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;
    load(&c).await;
    for i in 0..64 {
        c.put(format!("small{i:02}").into_bytes(), b"s".to_vec())
            .await
            .unwrap();
    }
    // Enough large gets at once that one coalesced BatchGet asks for far more
    // than the 64 MiB message limit; the small gets share batches with them.
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for t in 0..(KEYS + 64) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            if t < KEYS {
                let i = t;
                let v = c.get(key(i)).await.expect("large get").expect("present");
                assert!(v.value == value(i), "value of {i} differs");
            } else {
                let k = format!("small{:02}", t - KEYS).into_bytes();
                let v = c.get(k).await.expect("small get").expect("present");
                assert_eq!(v.value, b"s");
            }
        }));
    }
    for t in tasks {
        t.await.expect("no get failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_of_large_values_splits() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;
    load(&c).await;
    let (_, right) = c.split(key(KEYS / 4)).await.expect("split");
    let right = right.region.expect("right region");
    assert_eq!(right.start_key, key(KEYS / 4));
    c.clear_region_cache();
    let got = c
        .batch_get((0..KEYS).map(key).collect())
        .await
        .expect("batch get after the split");
    assert_eq!(got.len(), KEYS);
    for (i, p) in got.iter().enumerate() {
        assert!(p.value == value(i), "value of {i} differs after the split");
    }
}
