//! What faults cost the clients: a follower that returns (after a pause
//! or a partition) costs the leader nothing: no election, no gap in the
//! writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flaredb_tests::{cut_raft, free_port, heal_raft, http_get, metric, TestCluster};

/// The leaderships won on every store of `statuses`, summed: it moves on
/// every leader change.
fn leaderships_won(statuses: &[String]) -> u64 {
    statuses
        .iter()
        .map(|addr| {
            let (code, text) = http_get(addr, "/metrics").expect("scrape");
            assert_eq!(code, 200);
            metric(&text, "flaredb_leaderships_won_total", "").unwrap_or(0.0) as u64
        })
        .sum()
}

/// The longest time without a successful write within `[from, to]`.
fn longest_gap(acked: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut inside: Vec<Instant> = acked
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    inside.sort();
    let mut gap = Duration::ZERO;
    let mut last = from;
    for t in inside.into_iter().chain([to]) {
        gap = gap.max(t.saturating_duration_since(last));
        last = t;
    }
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_follower_costs_the_leader_nothing() {
    let mut cluster = TestCluster::start_with(0, &[], &[]);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let status = format!("127.0.0.1:{}", free_port());
        cluster.add_store_with_env(&[("FLAREDB_SERVER_STATUS_ADDR".into(), status.clone())]);
        statuses.push(status);
    }
    let client = cluster.client().await;
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let routes = flaredb_tests::wait_for_replicas(&client, 3).await;
    let leader = routes[0].region.as_ref().unwrap().store_id;
    let followers: Vec<usize> = (0..3).filter(|i| cluster.stores[*i].id != leader).collect();

    // One writer, one put at a time, recording when each was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let (c, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..1_000_000u32 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if c.put(format!("w{i:07}").into_bytes(), b"v".to_vec())
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = leaderships_won(&statuses);

    // A follower cut off for longer than an election timeout, then back;
    // another paused as long, then resumed.
    let cut = &cluster.stores[followers[0]];
    cut_raft(cut);
    tokio::time::sleep(Duration::from_secs(4)).await;
    heal_raft(cut);
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = &cluster.stores[followers[1]];
    paused.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    paused.resume();
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let after = leaderships_won(&statuses);
    let acked = acked.lock().unwrap().clone();
    let gaps = [
        longest_gap(&acked, healed, healed + Duration::from_secs(3)),
        longest_gap(&acked, resumed, resumed + Duration::from_secs(3)),
    ];
    assert_eq!(
        after, before,
        "a leader change after a follower returned (writes' longest gaps after each return: {gaps:?})"
    );
    let routes = client.regions().await.unwrap();
    assert_eq!(routes[0].region.as_ref().unwrap().store_id, leader);
    // No election: the writes went on. (A gap of an election timeout or
    // more is what a deposed leader costs; a write takes milliseconds.)
    for g in gaps {
        assert!(
            g < Duration::from_millis(800),
            "writes stopped for {g:?} after a follower returned"
        );
    }
    flaredb_tests::assert_replicas_agree(&client).await;
}

/// A region's leader asleep after an idle spell takes the first write sent
/// to it (it wakes for it) instead of answering `NotLeader` naming nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_leader_takes_the_first_write_after_an_idle_spell() {
    use rdb_proto::v1::kv_client::KvClient;
    use rdb_proto::v1::{Context, PutRequest};
    let cluster = TestCluster::start(3);
    let client = cluster.client().await;
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let routes = flaredb_tests::wait_for_replicas(&client, 3).await;
    let region = routes[0].region.clone().unwrap();
    let leader = routes[0].leader.clone().unwrap();
    for round in 0..2 {
        // Idle for longer than it takes the group to fall asleep.
        tokio::time::sleep(Duration::from_secs(9)).await;
        let mut kv = KvClient::connect(format!("http://{}", leader.address))
            .await
            .unwrap();
        let r = kv
            .put(PutRequest {
                context: Some(Context {
                    region_id: region.id,
                    region_epoch: region.epoch,
                    stale_read: false,
                }),
                key: format!("after-idle-{round}").into_bytes(),
                value: b"v".to_vec(),
                request_id: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            r.region_error.is_none(),
            "round {round}: the sleeping leader refused the first write: {r:?}"
        );
    }
}
