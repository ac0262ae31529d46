//! PD's replica checker repairs regions on its own: a store stopped for good
//! has its replicas rebuilt on the other stores after
//! `max-store-down-time`, while clients keep writing and lose nothing; when
//! it comes back with its old data, its removed replicas are collected, not
//! served.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flaredb_tests::{eventually, TestCluster};
use rdb_client::Client;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{Context, GetRequest};

/// The stores holding a replica of each region, by region id.
async fn placement(client: &Client) -> Vec<(u64, BTreeSet<u64>)> {
    client.clear_region_cache();
    client
        .regions()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|route| {
            let r = route.region?;
            Some((r.id, r.peers.iter().map(|p| p.store_id).collect()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_stores_replicas_are_rebuilt_elsewhere_and_collected_when_it_returns() {
    let mut cluster = TestCluster::start_with(
        4,
        &[
            "--max-store-down-time-secs".into(),
            "4".into(),
            "--patrol-interval-ms".into(),
            "200".into(),
        ],
        &[],
    );
    let client = cluster.client().await;
    client.put(b"a".to_vec(), b"0".to_vec()).await.unwrap();
    client.split(b"h".into()).await.unwrap();
    client.split(b"p".into()).await.unwrap();
    flaredb_tests::wait_for_replicas(&client, 3).await;
    let before = placement(&client).await;
    assert_eq!(before.len(), 3);

    // Writers on all three regions throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (c, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0..100_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("{}{w}-{i:06}", ["c", "k", "t"][i as usize % 3]).into_bytes();
                    if c.put(key.clone(), b"v".to_vec()).await.is_ok() {
                        acked.lock().unwrap().push((key, b"v".to_vec()));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    // The store holding the most replicas dies for good.
    let (idx, dead) = cluster
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.id))
        .max_by_key(|(_, id)| before.iter().filter(|(_, s)| s.contains(id)).count())
        .unwrap();
    let had: Vec<u64> = before
        .iter()
        .filter(|(_, s)| s.contains(&dead))
        .map(|(id, _)| *id)
        .collect();
    assert!(!had.is_empty());
    cluster.stores[idx].kill9();

    // After max-store-down-time, every region is back to three replicas,
    // none on the dead store.
    let repaired = eventually(600, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            let now = placement(&c).await;
            (now.len() == 3 && now.iter().all(|(_, s)| s.len() == 3 && !s.contains(&dead)))
                .then_some(now)
        }
    })
    .await;
    assert!(
        repaired.is_some(),
        "every region rebuilt without store {dead}"
    );
    flaredb_tests::wait_for_replicas(&client, 3).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 30, "writes went on: {}", acked.len());
    flaredb_tests::assert_all_readable(&cluster.client().await, &acked).await;

    // Back with its old data: it deletes every replica it had (each region
    // removed it), and serves none of them, not even a stale read.
    cluster.stores[idx].restart();
    let log = cluster.stores[idx].dir.with_extension("log");
    let collected = eventually(300, Duration::from_millis(100), || {
        let log = log.clone();
        let want = had.len();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (text.matches("replica destroyed").count() >= want).then_some(())
        }
    })
    .await;
    assert!(
        collected.is_some(),
        "store {dead} collected its {} replicas",
        had.len()
    );
    let addr = cluster.stores[idx].addr.clone();
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    for route in client.regions().await.unwrap() {
        let r = route.region.unwrap();
        let resp = kv
            .get(GetRequest {
                context: Some(Context {
                    region_id: r.id,
                    region_epoch: r.epoch,
                    stale_read: true,
                }),
                key: [r.start_key.as_slice(), b"0"].concat(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            matches!(
                resp.region_error.and_then(|e| e.error),
                Some(RegionErrorKind::RegionNotFound(_))
            ),
            "store {dead} no longer serves region {}",
            r.id
        );
    }
    // And nothing came back onto it: three replicas each, elsewhere.
    for (_, stores) in placement(&client).await {
        assert_eq!(stores.len(), 3);
        assert!(!stores.contains(&dead));
    }
}
