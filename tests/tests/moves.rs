//! Region moves whose outcome the source store does not learn: a lost answer
//! from the target, and a target that crashes right after it starts serving.
//! The region must never be served by two stores, and no acknowledged write
//! may be lost. Faults are injected into the target with failpoints
//! (`FAILPOINTS`; the daemons are built with feature `failpoints`).

use std::time::Duration;

use flaredb_tests::{eventually, TestCluster};
use rdb_client::Client;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::*;
use tonic::transport::Channel;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn letters() -> Vec<Vec<u8>> {
    (b'a'..=b'z').map(|c| vec![c]).collect()
}

/// PD, a source store holding the letters a..z, and a target store started
/// with the failpoint `name` on (action `return`).
async fn cluster_with_target_failpoint(name: &str) -> (TestCluster, Client) {
    let mut cluster = TestCluster::start(1);
    cluster.add_store_with_env(&[("FAILPOINTS".into(), format!("{name}=return"))]);
    let c = cluster.client().await;
    c.batch_put(letters().into_iter().map(|l| (l.clone(), l)).collect())
        .await
        .unwrap();
    (cluster, c)
}

async fn kv(addr: &str) -> KvClient<Channel> {
    KvClient::connect(format!("http://{addr}")).await.unwrap()
}

/// What a store answers to a direct read of `key` in `region`: the routing
/// error kind, or `None` if it served the read.
async fn direct_get(
    store: &mut KvClient<Channel>,
    region: &Region,
    key: &[u8],
) -> Option<RegionErrorKind> {
    let resp = store
        .get(GetRequest {
            context: Some(Context {
                region_id: region.id,
                region_epoch: region.epoch,
            }),
            key: key.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    resp.region_error.and_then(|e| e.error)
}

/// The region as it was on the source store, before the move bumped conf_ver.
fn before_move(moved: &Region, source: u64) -> Region {
    let e = moved.epoch.unwrap();
    Region {
        epoch: Some(RegionEpoch {
            version: e.version,
            conf_ver: e.conf_ver - 1,
        }),
        store_id: source,
        ..moved.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_import_answer_is_settled_and_never_served_twice() {
    let (cluster, c) = cluster_with_target_failpoint("import-answer-lost").await;
    let (source, target) = (cluster.stores[0].id, cluster.stores[1].id);

    // The target serves the region but its answer is lost: the source asks
    // it (SettleImport), learns the move happened, and completes it.
    let (_, right) = c.split(k("m"), false).await.unwrap();
    let moved = right.region.unwrap();
    assert_eq!(moved.store_id, target, "the new region went to the target");

    // The source no longer serves it, at either epoch.
    let mut src = kv(&cluster.stores[0].addr).await;
    for r in [before_move(&moved, source), moved.clone()] {
        assert!(
            matches!(
                direct_get(&mut src, &r, b"x").await,
                Some(RegionErrorKind::RegionNotFound(_))
            ),
            "the source still serves region {} at {:?}",
            r.id,
            r.epoch
        );
    }
    // The target does, with every key.
    let mut dst = kv(&cluster.stores[1].addr).await;
    assert_eq!(direct_get(&mut dst, &moved, b"x").await, None);
    for l in letters() {
        assert_eq!(c.get(l.clone()).await.unwrap().unwrap().value, l);
    }
    c.put(k("x"), k("after")).await.unwrap();
    assert_eq!(c.get(k("x")).await.unwrap().unwrap().value, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_crash_after_import_pauses_the_region_until_settled() {
    let (mut cluster, c) = cluster_with_target_failpoint("import-crash-after-serving").await;
    let (source, target) = (cluster.stores[0].id, cluster.stores[1].id);

    // The target commits the region and dies before answering: the source
    // cannot learn the outcome, so the split's move fails and the region
    // stays paused on the source.
    let err = c.split(k("m"), false).await.unwrap_err();
    assert!(
        matches!(
            &err,
            rdb_client::Error::Rpc {
                code: tonic::Code::Aborted,
                ..
            }
        ),
        "the split stands but the move is not confirmed: {err:?}"
    );
    let routes = c.regions().await.unwrap();
    assert_eq!(routes.len(), 2);
    let right = routes[1].region.clone().unwrap();
    assert_eq!(right.start_key, b"m");
    assert_eq!(right.store_id, source, "PD still has it on the source");

    let paused = |e: Option<RegionErrorKind>| matches!(e, Some(RegionErrorKind::ServerIsBusy(_)));
    let mut src = kv(&cluster.stores[0].addr).await;
    assert!(paused(direct_get(&mut src, &right, b"x").await));
    let put = src
        .put(PutRequest {
            context: Some(Context {
                region_id: right.id,
                region_epoch: right.epoch,
            }),
            key: k("x"),
            value: k("lost?"),
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused(put.region_error.and_then(|e| e.error)));

    // A source restart (kill -9) while the target is down keeps it paused.
    cluster.stores[0].restart();
    let mut src = kv(&cluster.stores[0].addr).await;
    assert!(paused(direct_get(&mut src, &right, b"x").await));

    // The target comes back (without the failpoint) and serves the region it
    // had committed; the source settles the move and drops its copy.
    cluster.stores[1].env.clear();
    cluster.stores[1].restart();
    let moved = Region {
        epoch: Some(RegionEpoch {
            version: right.epoch.unwrap().version,
            conf_ver: right.epoch.unwrap().conf_ver + 1,
        }),
        store_id: target,
        ..right.clone()
    };
    let settled = eventually(150, Duration::from_millis(100), || {
        let mut src = src.clone();
        let right = right.clone();
        async move {
            matches!(
                direct_get(&mut src, &right, b"x").await,
                Some(RegionErrorKind::RegionNotFound(_))
            )
            .then_some(())
        }
    })
    .await;
    assert!(settled.is_some(), "the source never settled the move");
    let mut dst = kv(&cluster.stores[1].addr).await;
    assert_eq!(direct_get(&mut dst, &moved, b"x").await, None);

    // Every key is there, served once, and writes work again.
    let fresh = cluster.client().await;
    for l in letters() {
        assert_eq!(fresh.get(l.clone()).await.unwrap().unwrap().value, l);
    }
    fresh.put(k("x"), k("after")).await.unwrap();
    assert_eq!(fresh.get(k("x")).await.unwrap().unwrap().value, b"after");
    let routes = fresh.regions().await.unwrap();
    assert_eq!(routes[1].region.as_ref().unwrap().store_id, target);
}
