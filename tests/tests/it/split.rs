//! Splits through the region's Raft log: both halves keep the region's
//! replica, reads and scans across the split, stale routes refused by the
//! store and corrected by the client's retry path, writes during a split.

use std::time::Duration;

use flaredb_tests::{eventually, TestCluster};
use rdb_client::{ScanOptions, StoreState};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::*;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn letters() -> Vec<Vec<u8>> {
    (b'a'..=b'z').map(|c| vec![c]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_through_the_raft_log_and_reads_cross_it() {
    // No replica checker: the region's one replica is checked below.
    let cluster = TestCluster::start_manual(2);
    let stale = cluster.client().await;
    let c = cluster.client().await;
    c.batch_put(letters().into_iter().map(|l| (l.clone(), l)).collect())
        .await
        .unwrap();
    // The stale client caches the single whole-key-space region.
    assert_eq!(stale.get(k("x")).await.unwrap().unwrap().value, b"x");
    let before = c.regions().await.unwrap();
    assert_eq!(before.len(), 1);
    let old = before[0].region.clone().unwrap();

    let (left, right) = c.split(k("m")).await.unwrap();
    let (l, r) = (left.region.clone().unwrap(), right.region.clone().unwrap());
    assert_eq!(
        (l.start_key.as_slice(), l.end_key.as_slice()),
        (&b""[..], &b"m"[..])
    );
    assert_eq!(
        (r.start_key.as_slice(), r.end_key.as_slice()),
        (&b"m"[..], &b""[..])
    );
    assert_eq!(
        l.store_id, r.store_id,
        "both halves keep the region's replica and leader"
    );
    assert_eq!((l.peers.len(), r.peers.len()), (1, 1));
    assert_eq!(l.peers[0].store_id, r.peers[0].store_id);
    assert_ne!(
        l.peers[0].id, r.peers[0].id,
        "a new peer id for the new region"
    );
    assert!(l.epoch.unwrap().version > old.epoch.unwrap().version);
    let regions = c.regions().await.unwrap();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[1].region.as_ref().unwrap().store_id, r.store_id);

    // Reads and scans across the split, through a fresh client.
    for l in letters() {
        assert_eq!(c.get(l.clone()).await.unwrap().unwrap().value, l);
    }
    let all = c.scan(Vec::new(), Vec::new(), 0).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        letters()
    );
    let mid = c.scan(k("k"), k("p"), 0).await.unwrap();
    assert_eq!(
        mid.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![k("k"), k("l"), k("m"), k("n"), k("o")]
    );
    let rev = c
        .scan_with(
            k("j"),
            k("o"),
            ScanOptions {
                limit: 4,
                reverse: true,
                keys_only: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rev.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![k("n"), k("m"), k("l"), k("k")]
    );
    let limited = c.scan(k("k"), Vec::new(), 3).await.unwrap();
    assert_eq!(limited.len(), 3);

    // The stale client still has the old route; its retry path corrects it.
    assert_eq!(stale.get(k("x")).await.unwrap().unwrap().value, b"x");
    stale.put(k("y"), k("new-y")).await.unwrap();
    assert_eq!(c.get(k("y")).await.unwrap().unwrap().value, b"new-y");
    let got = stale.batch_get(vec![k("b"), k("z")]).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(stale.delete_range(k("l"), k("o")).await.unwrap(), 3);
    assert_eq!(c.scan(k("k"), k("p"), 0).await.unwrap().len(), 2);

    // Stores refuse stale routes instead of serving them.
    let addr_of = |id: u64| {
        regions
            .iter()
            .find(|rt| rt.region.as_ref().unwrap().store_id == id)
            .unwrap()
            .leader
            .clone()
            .unwrap()
            .address
    };
    let mut left_store = KvClient::connect(format!("http://{}", addr_of(l.store_id)))
        .await
        .unwrap();
    let old_ctx = Some(Context {
        region_id: old.id,
        region_epoch: old.epoch,
        stale_read: false,
    });
    let resp = left_store
        .get(GetRequest {
            context: old_ctx,
            key: k("a"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        resp.region_error.unwrap().error,
        Some(RegionErrorKind::EpochNotMatch(_))
    ));
    let left_ctx = Some(Context {
        region_id: l.id,
        region_epoch: l.epoch,
        stale_read: false,
    });
    let resp = left_store
        .get(GetRequest {
            context: left_ctx,
            key: k("x"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        resp.region_error.unwrap().error,
        Some(RegionErrorKind::KeyNotInRegion(_))
    ));
    let right_ctx = Some(Context {
        region_id: r.id,
        region_epoch: r.epoch,
        stale_read: false,
    });
    // The other store holds no replica of the region.
    let other = c
        .stores()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id != r.store_id)
        .unwrap();
    let mut other_store = KvClient::connect(format!("http://{}", other.address))
        .await
        .unwrap();
    let resp = other_store
        .put(PutRequest {
            context: right_ctx,
            key: k("x"),
            value: k("bad"),
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        resp.region_error.unwrap().error,
        Some(RegionErrorKind::RegionNotFound(_))
    ));
    assert_eq!(
        c.get(k("x")).await.unwrap().unwrap().value,
        b"x",
        "the refused write was not applied"
    );

    // A Scan is served for the part of its range inside the region: a start
    // before the region's start is clamped to it (as kv.proto says), not refused.
    let mut right_store = KvClient::connect(format!("http://{}", addr_of(r.store_id)))
        .await
        .unwrap();
    let resp = right_store
        .scan(ScanRequest {
            context: right_ctx,
            start_key: k("a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.region_error.is_none(), "{:?}", resp.region_error);
    let expected = c.scan(r.start_key.clone(), Vec::new(), 0).await.unwrap();
    assert_eq!(resp.pairs, expected);
    assert!(resp.pairs.iter().all(|p| p.key >= r.start_key));
    // A range wholly before the region still gets KeyNotInRegion.
    let resp = right_store
        .scan(ScanRequest {
            context: right_ctx,
            start_key: k("a"),
            end_key: k("b"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        resp.region_error.unwrap().error,
        Some(RegionErrorKind::KeyNotInRegion(_))
    ));

    // Splitting at a region's start key is refused.
    let err = c.split(k("m")).await.unwrap_err();
    assert!(
        matches!(err, rdb_client::Error::InvalidArgument(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_survives_restarts_and_a_dead_store_is_shown_down() {
    let mut cluster = TestCluster::start(2);
    let c = cluster.client().await;
    c.batch_put(letters().into_iter().map(|l| (l.clone(), l)).collect())
        .await
        .unwrap();
    c.split(k("g")).await.unwrap();
    let (_, right) = c.split(k("t")).await.unwrap();
    assert_eq!(c.regions().await.unwrap().len(), 3);

    // Restart everything: the layout and the data come back.
    cluster.pd.restart();
    for s in &mut cluster.stores {
        s.restart();
    }
    let c2 = cluster.client().await;
    let regions = c2.regions().await.unwrap();
    assert_eq!(regions.len(), 3);
    let all = c2.scan(Vec::new(), Vec::new(), 0).await.unwrap();
    assert_eq!(all.len(), 26);

    // The store holding the regions dies: PD shows it down after missed heartbeats.
    let dead = right.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id == dead).unwrap();
    cluster.stores[idx].kill9();
    let down = eventually(100, Duration::from_millis(100), || {
        let c2 = c2.clone();
        async move {
            let stores = c2.stores().await.ok()?;
            stores
                .iter()
                .any(|s| s.id == dead && s.state == StoreState::Down as i32)
                .then_some(())
        }
    })
    .await;
    assert!(down.is_some(), "store {dead} never shown down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_a_split_are_never_lost() {
    let cluster = TestCluster::start(2);
    let c = cluster.client().await;
    // Some data in the region being split.
    let bulk: Vec<_> = (0..2000)
        .map(|i| (format!("n-bulk-{i:05}").into_bytes(), vec![b'x'; 512]))
        .collect();
    for chunk in bulk.chunks(500) {
        c.batch_put(chunk.to_vec()).await.unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u32 {
        let c = c.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000u32 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                // Keys on both sides of the split point "m".
                let key = format!("{}-w{w}-{i:06}", (b'a' + (i % 26) as u8) as char).into_bytes();
                let value = format!("v{w}-{i}").into_bytes();
                c.put(key.clone(), value.clone())
                    .await
                    .expect("put during a split");
                acked.push((key, value));
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (left, right) = c.split(k("m")).await.unwrap();
    assert_ne!(left.region.unwrap().id, right.region.unwrap().id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "writers made progress ({})", acked.len());
    let fresh = cluster.client().await;
    flaredb_tests::assert_all_readable(&fresh, &acked).await;
    assert_eq!(
        fresh
            .scan(k("n-bulk-"), k("n-bulk."), 0)
            .await
            .unwrap()
            .len(),
        2000
    );
}
