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
