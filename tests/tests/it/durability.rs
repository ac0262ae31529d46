//! Durability and daemon hygiene: acknowledged writes survive kill -9; a
//! data dir is refused when held by another process or another cluster;
//! SIGTERM exits cleanly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flaredb_tests::{Daemon, Kind, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let mut cluster = TestCluster::start(1);
    let c = cluster.client().await;
    type Acked = Vec<(Vec<u8>, Vec<u8>)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100_000u32 {
                let key = format!("w{w}-{i:06}").into_bytes();
                let value = format!("value-{w}-{i}").into_bytes();
                match c.put(key.clone(), value.clone()).await {
                    Ok(_) => acked.lock().unwrap().push((key, value)),
                    Err(_) => break, // the server died under us
                }
            }
        }));
    }
    // Let writes flow, then kill the store without warning.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().unwrap().len() > 300 {
            break;
        }
    }
    cluster.stores[0].kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "writes were acknowledged before the kill ({})",
        acked.len()
    );

    cluster.stores[0].restart();
    // The same client reconnects to the restarted store by itself.
    let mut missing = 0;
    for chunk in acked.chunks(500) {
        let keys: Vec<_> = chunk.iter().map(|(k, _)| k.clone()).collect();
        let got: std::collections::HashMap<_, _> = c
            .batch_get(keys)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        for (k, v) in chunk {
            match got.get(k) {
                Some(found) => assert_eq!(found, v),
                None => missing += 1,
            }
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged writes lost",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_are_guarded_and_sigterm_exits_cleanly() {
    let mut cluster = TestCluster::start(1);
    // A second server on a held data dir is refused.
    let held = cluster.stores[0].dir.clone();
    let extra = vec!["--pd".to_string(), cluster.pd.addr.clone()];
    let err = Daemon::try_start(Kind::Server, &held, "127.0.0.1:0", &extra)
        .err()
        .expect("refused");
    assert!(err.contains("exited"), "{err}");
    let log = std::fs::read_to_string(held.with_extension("log")).unwrap();
    assert!(log.contains("in use by another process"), "{log}");
    // So is a second PD on the PD's dir.
    let pd_dir = cluster.pd.dir.clone();
    assert!(Daemon::try_start(Kind::Pd, &pd_dir, "127.0.0.1:0", &[]).is_err());

    // A store's data dir cannot join another cluster.
    let status = cluster.stores[0].terminate();
    assert!(status.success(), "SIGTERM exit status {status}");
    let other = TestCluster::start(0);
    let extra = vec![
        "--pd".to_string(),
        other.pd.addr.clone(),
        "--pd-wait-secs".into(),
        "5".into(),
    ];
    assert!(Daemon::try_start(Kind::Server, &held, "127.0.0.1:0", &extra).is_err());
    let log = std::fs::read_to_string(held.with_extension("log")).unwrap();
    assert!(log.contains("belongs to cluster"), "{log}");
    // A PD data dir is not a store data dir.
    let extra = vec!["--pd".to_string(), other.pd.addr.clone()];
    let pd_dir2 = other.root.path().join("pd-copy");
    std::fs::create_dir_all(&pd_dir2).unwrap();
    std::fs::write(
        pd_dir2.join("IDENTITY"),
        "role=pd\ncluster_id=1\nnode_id=0\n",
    )
    .unwrap();
    assert!(Daemon::try_start(Kind::Server, &pd_dir2, "127.0.0.1:0", &extra).is_err());

    let status = cluster.pd.terminate();
    assert!(status.success(), "PD SIGTERM exit status {status}");
}

/// SIGTERM with streams that never end by themselves (a client's TSO stream
/// on PD) and requests in flight on a store: each daemon refuses new work,
/// gives open ones the grace period (`--shutdown-grace-secs`), and exits 0
/// instead of waiting forever; writes acknowledged before are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_open_streams_exits_within_the_grace_period() {
    use std::time::Instant;

    let root = tempfile::tempdir().unwrap();
    let grace = ["--shutdown-grace-secs".to_string(), "1".to_string()];
    let mut pd = Daemon::start(Kind::Pd, &root.path().join("pd"), "127.0.0.1:0", &grace);
    let mut extra = vec!["--pd".to_string(), pd.addr.clone()];
    extra.extend(grace.iter().cloned());
    let mut store = Daemon::start(Kind::Server, &root.path().join("s1"), "127.0.0.1:0", &extra);
    let client = rdb_client::Client::connect([pd.addr.clone()])
        .await
        .unwrap();
    let v = client.put(b"kept".to_vec(), b"1".to_vec()).await.unwrap();
    assert!(v > 0);
    // Keep a TSO stream and a stream of puts busy in the background.
    let busy = {
        let c = client.clone();
        tokio::spawn(async move {
            for i in 0..100_000u32 {
                let _ = c.tso().await;
                let _ = c
                    .put(format!("k{}", i % 100).into_bytes(), b"v".to_vec())
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = store.terminate();
        (s, store)
    })
    .await
    .unwrap();
    let (store_status, mut store) = status;
    assert!(
        store_status.success(),
        "store SIGTERM exit status {store_status}"
    );
    let started_pd = Instant::now();
    let (pd_status, mut pd) = tokio::task::spawn_blocking(move || {
        let s = pd.terminate();
        (s, pd)
    })
    .await
    .unwrap();
    assert!(pd_status.success(), "PD SIGTERM exit status {pd_status}");
    // Not a speed assertion: without the grace deadline PD never exits while
    // a client holds its TSO stream open (terminate() would give up at 30 s).
    assert!(
        started_pd.elapsed() < Duration::from_secs(20),
        "PD took {:?}",
        started_pd.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    busy.abort();

    // Both come back with the data acknowledged before the SIGTERM.
    pd.restart();
    store.restart();
    let client = rdb_client::Client::connect([pd.addr.clone()])
        .await
        .unwrap();
    let got = client.get(b"kept".to_vec()).await.unwrap().expect("kept");
    assert_eq!((got.value, got.version), (b"1".to_vec(), v));
}
