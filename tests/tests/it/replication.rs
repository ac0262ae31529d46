//! Regions replicated on three stores: a killed leader is replaced and no
//! acknowledged write is lost; a paused leader never serves a stale read
//! after another replica was elected; a leader cut off from its replicas
//! serves nothing and, healed, loses nothing; a store lost for good is
//! replaced by a replica on a fourth store (`rdb-cli operator`); a replica
//! added later answers a re-sent write from its exactly-once record; a
//! snapshot install cut short by a crash finishes at restart; a replica
//! whose snapshot predates its addition is kept and restarts; a replica
//! removed while its store was down is collected when the store returns;
//! stale reads are served by followers, also with the leader paused; no
//! replica is created under a stale overlapping one; a cluster started with
//! one store runs with one replica and PD adds replicas as stores join, up
//! to `max-replicas`, then balances; without TLS, Raft messages between
//! stores travel the Raft lane, not gRPC.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flaredb_tests::{eventually, TestCluster};
use rdb_client::{Client, PeerRole, RegionRoute};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{Context, GetRequest};

/// The only region of the cluster, after `client` wrote to it.
async fn only_region(client: &Client) -> RegionRoute {
    let regions = client.regions().await.expect("regions");
    assert_eq!(regions.len(), 1);
    regions.into_iter().next().unwrap()
}

/// Waits for PD's replica checker to give the cluster's region a voter on
/// every store.
async fn replicate(cluster: &TestCluster, client: &Client) -> RegionRoute {
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let mut routes = flaredb_tests::wait_for_replicas(client, cluster.stores.len()).await;
    assert_eq!(routes.len(), 1);
    routes.remove(0)
}

/// Adds a replica of the cluster's region on every store but the first,
/// by hand (a cluster of [`TestCluster::start_manual`]): three voters.
async fn replicate_by_hand(cluster: &TestCluster, client: &Client) -> RegionRoute {
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let id = only_region(client).await.region.unwrap().id;
    let mut route = None;
    for s in &cluster.stores[1..] {
        route = Some(client.add_replica(id, s.id).await.expect("add replica"));
    }
    let route = route.unwrap();
    let r = route.region.clone().unwrap();
    assert_eq!(r.peers.len(), cluster.stores.len());
    assert!(r.peers.iter().all(|p| p.role == PeerRole::Voter as i32));
    route
}

/// The store that leads the region now, as PD reports it, once it differs
/// from `not` (waits for PD to learn of a new leader).
async fn leader_other_than(client: &Client, not: u64) -> u64 {
    eventually(150, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let r = c.regions().await.ok()?.into_iter().next()?;
            let leader = r.region?.store_id;
            (leader != not && leader != 0).then_some(leader)
        }
    })
    .await
    .expect("a new leader reported to PD")
}

/// Acknowledged writes: key, value, when.
type Acked = Arc<std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>, Instant)>>>;

/// Writers putting unique keys into `acked` until stopped.
fn writers(
    client: &Client,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let c = client.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for i in 0..1_000_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("w{w}-{i:07}").into_bytes();
                    let value = format!("v{w}-{i}").into_bytes();
                    // A write whose outcome is unknown (its leader died) is
                    // not counted: only acknowledged ones must survive.
                    match c.put(key.clone(), value.clone()).await {
                        Ok(_) => acked.lock().unwrap().push((key, value, Instant::now())),
                        Err(e) => eprintln!("writer {w}: {e}"),
                    }
                }
            })
        })
        .collect()
}

/// Checks that every pair is readable with its value, through a fresh client.
async fn all_readable(cluster: &TestCluster, pairs: &[(Vec<u8>, Vec<u8>)]) {
    flaredb_tests::assert_all_readable(&cluster.client().await, pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let route = replicate(&cluster, &client).await;
    let old = route.region.unwrap().store_id;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let tasks = writers(&client, 4, stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idx = cluster.stores.iter().position(|s| s.id == old).unwrap();
    cluster.stores[idx].kill9();
    let killed = Instant::now();
    let new = leader_other_than(&client, old).await;
    // Writes go on: wait (bounded) for one acknowledged after the kill.
    let first = eventually(300, Duration::from_millis(100), || {
        let acked = acked.clone();
        async move {
            let a = acked.lock().unwrap();
            a.iter()
                .map(|(_, _, at)| *at)
                .filter(|at| *at > killed)
                .min()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let gap = first.map(|f| f.duration_since(killed));
    eprintln!(
        "leader store {old} killed; store {new} leads; first write acknowledged {gap:?} after the kill; {} writes acknowledged",
        acked.len()
    );
    assert!(
        gap.is_some(),
        "writes go on after the leader was killed (a bound in time is measured by bench/replication, not here)"
    );
    let pairs: Vec<_> = acked.into_iter().map(|(k, v, _)| (k, v)).collect();
    all_readable(&cluster, &pairs).await;

    // The killed store comes back, catches up, and can lead with every write.
    cluster.stores[idx].restart();
    let region_id = only_region(&client).await.region.unwrap().id;
    let moved = eventually(50, Duration::from_millis(200), || {
        let c = client.clone();
        async move { c.transfer_leader(region_id, old).await.ok() }
    })
    .await
    .expect("leadership handed back to the restarted store");
    assert_eq!(moved.region.unwrap().store_id, old);
    all_readable(&cluster, &pairs).await;
}

/// Asked directly for `k` twenty times, the deposed leader (store `old`
/// at `addr`) answers the new value `after` or a routing error naming
/// another leader, never the value from before the new leader's write.
async fn no_stale_read(client: &Client, addr: &str, old: u64) {
    let mut kv = KvClient::connect(format!("http://{addr}")).await.unwrap();
    let now = only_region(client).await.region.unwrap();
    for _ in 0..20 {
        let resp = kv
            .get(GetRequest {
                context: Some(Context {
                    region_id: now.id,
                    region_epoch: now.epoch,
                    stale_read: false,
                }),
                key: b"k".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        match resp.region_error.and_then(|e| e.error) {
            Some(RegionErrorKind::NotLeader(n)) => {
                assert_ne!(n.leader.map(|s| s.id), Some(old), "it knows it lost")
            }
            Some(other) => panic!("unexpected region error {other:?}"),
            None => assert_eq!(resp.value, b"after", "stale read from the old leader"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times the store at `idx` logged a group it leads falling
/// asleep.
fn asleep_count(cluster: &TestCluster, idx: usize) -> usize {
    std::fs::read_to_string(cluster.stores[idx].dir.with_extension("log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("group asleep") && !l.contains("following"))
        .count()
}

/// Waits (at most 30 s) until the store at `idx` has logged a group it
/// leads falling asleep more than `before` times.
async fn leader_asleep(cluster: &TestCluster, idx: usize, before: usize) {
    let n = eventually(300, Duration::from_millis(100), || {
        let n = asleep_count(cluster, idx);
        async move { (n > before).then_some(n) }
    })
    .await;
    assert!(n.is_some(), "the idle region's group fell asleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_regions_paused_then_killed_leaders_are_replaced_and_nothing_is_lost() {
    // The stores log their groups falling asleep.
    let mut cluster = TestCluster::start(0);
    for _ in 0..3 {
        cluster.add_store_with_env(&[("RUST_LOG".into(), "info,rdb_raft=debug".into())]);
    }
    let client = cluster.client().await;
    replicate(&cluster, &client).await;
    let pairs: Vec<_> = (0..30)
        .map(|i| (format!("z{i:02}").into_bytes(), b"v".to_vec()))
        .collect();
    let before: Vec<usize> = (0..3).map(|i| asleep_count(&cluster, i)).collect();
    client.batch_put(pairs.clone()).await.unwrap();
    client.put(b"k".to_vec(), b"before".to_vec()).await.unwrap();
    let old = only_region(&client).await.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id == old).unwrap();
    // Idle: the group sleeps (no heartbeats, no election timers). Its
    // leader's process is paused: the followers' pings go unanswered, they
    // wake and elect.
    leader_asleep(&cluster, idx, before[idx]).await;
    cluster.stores[idx].pause();
    let new = leader_other_than(&client, old).await;
    let idx2 = cluster.stores.iter().position(|s| s.id == new).unwrap();
    let before2 = asleep_count(&cluster, idx2);
    client.put(b"k".to_vec(), b"after".to_vec()).await.unwrap();
    cluster.stores[idx].resume();
    // The old leader, resumed, never answers the value from before.
    let old_addr = cluster.stores[idx].addr.clone();
    no_stale_read(&client, &old_addr, old).await;
    // Asleep again under the new leader, whose store is killed: the others
    // elect, and every acknowledged write is there.
    leader_asleep(&cluster, idx2, before2).await;
    cluster.stores[idx2].kill9();
    let third = leader_other_than(&client, new).await;
    assert_ne!(third, new);
    client.put(b"k2".to_vec(), b"v".to_vec()).await.unwrap();
    let mut all = pairs;
    all.push((b"k".to_vec(), b"after".to_vec()));
    all.push((b"k2".to_vec(), b"v".to_vec()));
    all_readable(&cluster, &all).await;
}

/// The stores of the first region's replicas that PD shows down.
async fn down_stores(cluster: &TestCluster) -> Option<Vec<u64>> {
    let out = cluster.cli(&["--json", "regions"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let peers = j[0]["peers"].as_array()?.clone();
    let down: Vec<u64> = peers
        .iter()
        .filter(|p| p["down"] == serde_json::Value::Bool(true))
        .filter_map(|p| p["store_id"].as_u64())
        .collect();
    (!down.is_empty()).then_some(down)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_leader_reports_a_dead_follower_down() {
    let mut cluster = TestCluster::start(0);
    for _ in 0..3 {
        cluster.add_store_with_env(&[("RUST_LOG".into(), "info,rdb_raft=debug".into())]);
    }
    let client = cluster.client().await;
    replicate(&cluster, &client).await;
    let leader = only_region(&client).await.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id == leader).unwrap();
    let before = asleep_count(&cluster, idx);
    client.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    // Idle: the group sleeps, and its leader's heartbeats to PD skip it
    // (nothing it would report can change while it sleeps, as long as
    // every peer store answers pings). A follower's store dies: no write
    // wakes the leader, which still reports that replica down.
    leader_asleep(&cluster, idx, before).await;
    let f = cluster.stores.iter().position(|s| s.id != leader).unwrap();
    let lost = cluster.stores[f].id;
    cluster.stores[f].kill9();
    let down = eventually(100, Duration::from_millis(100), || down_stores(&cluster)).await;
    assert_eq!(
        down,
        Some(vec![lost]),
        "the dead follower's replica is down"
    );
    assert_eq!(
        only_region(&client).await.region.unwrap().store_id,
        leader,
        "no election"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_serves_no_stale_read_after_another_is_elected() {
    let cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let route = replicate(&cluster, &client).await;
    let region = route.region.unwrap();
    let old = region.store_id;
    let old_addr = route.leader.unwrap().address;
    client.put(b"k".to_vec(), b"before".to_vec()).await.unwrap();

    // Writers with calls in flight at the leader when it is paused.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let tasks = writers(&client, 4, stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused = cluster.stores.iter().find(|s| s.id == old).unwrap();
    paused.pause();
    let new = leader_other_than(&client, old).await;
    let elected = Instant::now();
    if let Err(e) = client.put(b"k".to_vec(), b"after".to_vec()).await {
        panic!("put after the election: {e}");
    }
    // While the old leader is still paused, every writer gets writes
    // acknowledged by the new one: the calls that were in flight at the
    // paused leader fail over (HTTP/2 pings go unanswered) instead of
    // waiting for the RPC timeout (30 s, longer than this wait).
    let all_moved_on = eventually(200, Duration::from_millis(100), || {
        let acked = acked.clone();
        async move {
            let a = acked.lock().unwrap();
            (0..4)
                .all(|w| {
                    let prefix = format!("w{w}-");
                    a.iter()
                        .any(|(k, _, at)| k.starts_with(prefix.as_bytes()) && *at > elected)
                })
                .then_some(())
        }
    })
    .await;
    assert!(
        all_moved_on.is_some(),
        "every writer's calls fail over from the paused leader while it is paused"
    );
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    paused.resume();
    let pairs: Vec<_> = std::mem::take(&mut *acked.lock().unwrap())
        .into_iter()
        .map(|(k, v, _)| (k, v))
        .collect();
    all_readable(&cluster, &pairs).await;

    // Asked directly, the old leader answers the new value or a routing
    // error, never the value from before the new leader's write.
    no_stale_read(&client, &old_addr, old).await;
    assert_ne!(new, old);
    assert_eq!(
        client.get(b"k".to_vec()).await.unwrap().unwrap().value,
        b"after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_lost_for_good_is_replaced_by_a_replica_on_a_fourth_store() {
    let mut cluster = TestCluster::start_manual(3);
    let client = cluster.client().await;
    let route = replicate_by_hand(&cluster, &client).await;
    let region_id = route.region.unwrap().id;
    // 3 MiB: the new replica's snapshot travels in several chunks.
    let mut pairs: Vec<_> = (0..300)
        .map(|i| {
            (
                format!("a{i:03}").into_bytes(),
                vec![b'x' + (i % 7) as u8; 10 << 10],
            )
        })
        .collect();
    for part in pairs.chunks(50) {
        client.batch_put(part.to_vec()).await.unwrap();
    }

    // A follower's store dies for good: the other two keep serving.
    let leader = only_region(&client).await.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id != leader).unwrap();
    let lost = cluster.stores[idx].id;
    cluster.stores[idx].kill9();
    let more: Vec<_> = (0..100)
        .map(|i| (format!("b{i:03}").into_bytes(), vec![b'y'; 100]))
        .collect();
    client.batch_put(more.clone()).await.unwrap();
    pairs.extend(more);

    // The leader reports the lost replica down; PD shows it, and only it.
    let down = eventually(100, Duration::from_millis(100), || down_stores(&cluster)).await;
    assert_eq!(down, Some(vec![lost]), "the lost store's replica is down");

    // By hand: remove the lost replica, add one on a new store.
    let out = cluster.cli(&[
        "--json",
        "operator",
        "remove-replica",
        &region_id.to_string(),
        &lost.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fourth = cluster.add_store().id;
    let out = cluster.cli(&[
        "--json",
        "operator",
        "add-replica",
        &region_id.to_string(),
        &fourth.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stores: Vec<u64> = j["region"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["store_id"].as_u64().unwrap())
        .collect();
    assert_eq!(stores.len(), 3, "{j}");
    assert!(stores.contains(&fourth) && !stores.contains(&lost), "{j}");

    // The new replica has everything: it leads and serves every write.
    client.transfer_leader(region_id, fourth).await.unwrap();
    all_readable(&cluster, &pairs).await;
    let r = only_region(&client).await.region.unwrap();
    assert_eq!(r.store_id, fourth);
}

/// Puts `k` = `one` on the store at `address` with one fixed request id.
async fn resend_one(address: String, region: &rdb_client::Region) -> rdb_proto::v1::PutResponse {
    let mut kv = KvClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    kv.put(rdb_proto::v1::PutRequest {
        context: Some(Context {
            region_id: region.id,
            region_epoch: region.epoch,
            stale_read: false,
        }),
        key: b"k".to_vec(),
        value: b"one".to_vec(),
        request_id: Some(rdb_proto::v1::RequestId {
            client: vec![7; 16],
            seq: 1,
        }),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_added_later_answers_a_resent_write_as_the_others_would() {
    let cluster = TestCluster::start_manual(3);
    let client = cluster.client().await;
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let route = only_region(&client).await;
    let region = route.region.unwrap();
    client
        .add_replica(region.id, cluster.stores[1].id)
        .await
        .unwrap();
    let now = only_region(&client).await;
    let region = now.region.unwrap();
    let first = resend_one(now.leader.unwrap().address, &region).await;
    assert!(first.region_error.is_none(), "{first:?}");
    client.put(b"k".to_vec(), b"two".to_vec()).await.unwrap();

    // A third replica, filled by a snapshot, then leading.
    let third = cluster.stores[2].id;
    client.add_replica(region.id, third).await.unwrap();
    let led = client.transfer_leader(region.id, third).await.unwrap();
    let region = led.region.clone().unwrap();
    // The transfer answers once the old leader saw the target lead; the
    // target may publish its own leadership a moment later (it answers
    // NotLeader until then). The same request id each time.
    let address = led.leader.unwrap().address;
    let mut resent = resend_one(address.clone(), &region).await;
    for _ in 0..50 {
        if resent.region_error.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        resent = resend_one(address.clone(), &region).await;
    }
    assert!(resent.region_error.is_none(), "{resent:?}");
    assert_eq!(resent.version, first.version, "answered from the record");
    assert_eq!(
        client.get(b"k".to_vec()).await.unwrap().unwrap().value,
        b"two",
        "the re-sent write was not applied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_replicas_serves_nothing_and_loses_nothing() {
    let cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let route = replicate(&cluster, &client).await;
    let old = route.region.clone().unwrap().store_id;
    let old_addr = route.leader.unwrap().address;
    client.put(b"k".to_vec(), b"before".to_vec()).await.unwrap();

    // The leader's Raft traffic is cut both ways; clients still reach it.
    let idx = cluster.stores.iter().position(|s| s.id == old).unwrap();
    flaredb_tests::cut_raft(&cluster.stores[idx]);
    let new = leader_other_than(&client, old).await;
    client.put(b"k".to_vec(), b"after".to_vec()).await.unwrap();

    // Asked directly, the minority side takes no write and serves no read.
    let region = only_region(&client).await.region.unwrap();
    let ctx = Some(Context {
        region_id: region.id,
        region_epoch: region.epoch,
        stale_read: false,
    });
    let mut kv = KvClient::connect(format!("http://{old_addr}"))
        .await
        .unwrap();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        kv.get(GetRequest {
            context: ctx,
            key: b"k".to_vec(),
        }),
    )
    .await
    .expect("a read is answered (within an election timeout)")
    .unwrap()
    .into_inner();
    match read.region_error.and_then(|e| e.error) {
        // A hint never names the answering store: a client following it
        // would come straight back.
        Some(RegionErrorKind::NotLeader(nl)) => assert!(
            nl.leader.as_ref().is_none_or(|l| l.id != old),
            "the cut-off store names itself the leader: {nl:?}"
        ),
        other => panic!("the cut-off store served the read: {other:?}"),
    }
    let write = tokio::time::timeout(
        Duration::from_secs(10),
        kv.put(rdb_proto::v1::PutRequest {
            context: ctx,
            key: b"k".to_vec(),
            value: b"minority".to_vec(),
            request_id: None,
        }),
    )
    .await;
    match write {
        Err(_) => {}
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(Ok(r)) => assert!(
            r.into_inner().region_error.is_some(),
            "the cut-off store took a write"
        ),
    }

    // Healed: it catches up, and nothing was lost or taken from it.
    flaredb_tests::heal_raft(&cluster.stores[idx]);
    let moved = eventually(50, Duration::from_millis(200), || {
        let c = client.clone();
        async move { c.transfer_leader(region.id, old).await.ok() }
    })
    .await
    .expect("leadership handed back to the healed store");
    assert_eq!(moved.region.unwrap().store_id, old);
    assert_ne!(new, old);
    assert_eq!(
        client.get(b"k".to_vec()).await.unwrap().unwrap().value,
        b"after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_install_cut_short_by_a_crash_finishes_at_restart() {
    let mut cluster = TestCluster::start_manual(1);
    let client = cluster.client().await;
    let region_id = only_region(&client).await.region.unwrap().id;
    // 3 MiB: several chunks, so the crash comes between two of them.
    let pairs: Vec<_> = (0..300)
        .map(|i| {
            (
                format!("s{i:03}").into_bytes(),
                vec![b'a' + (i % 11) as u8; 10 << 10],
            )
        })
        .collect();
    for part in pairs.chunks(50) {
        client.batch_put(part.to_vec()).await.unwrap();
    }
    // The new store dies after writing the first chunk of its snapshot.
    let failpoint = (
        "FAILPOINTS".to_string(),
        "snapshot-restore-crash=return".to_string(),
    );
    let new = cluster.add_store_with_env(&[failpoint]).id;
    let idx = cluster.stores.len() - 1;
    let adding = {
        let c = client.clone();
        tokio::spawn(async move { c.add_replica(region_id, new).await })
    };
    let log = cluster.stores[idx].dir.with_extension("log");
    let crashed = eventually(300, Duration::from_millis(100), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("failpoint snapshot-restore-crash")
                .then_some(())
        }
    })
    .await;
    assert!(crashed.is_some(), "the new store crashed mid-install");
    // Restarted without the failpoint, it installs the staged snapshot
    // again before its group starts, then catches up and votes.
    cluster.stores[idx].env.retain(|(k, _)| k != "FAILPOINTS");
    cluster.stores[idx].restart();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("a snapshot install was cut short: installing it again"),
        "the restart resumed the install"
    );
    let added = tokio::time::timeout(Duration::from_secs(120), adding)
        .await
        .expect("add-replica finished")
        .unwrap();
    if added.is_err() {
        // The operator gave up while the store was down: ask again.
        client.add_replica(region_id, new).await.unwrap();
    }
    client.put(b"after".to_vec(), b"1".to_vec()).await.unwrap();
    client.transfer_leader(region_id, new).await.unwrap();
    assert_eq!(only_region(&client).await.region.unwrap().store_id, new);
    let mut all = pairs;
    all.push((b"after".to_vec(), b"1".to_vec()));
    all_readable(&cluster, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_snapshot_predates_its_addition_is_kept_and_restarts() {
    let mut cluster = TestCluster::start_manual(1);
    let client = cluster.client().await;
    let pairs: Vec<_> = (0..20)
        .map(|i| (format!("p{i:02}").into_bytes(), b"v".to_vec()))
        .collect();
    client.batch_put(pairs.clone()).await.unwrap();
    let region_id = only_region(&client).await.region.unwrap().id;
    // The leader applies the learner's addition 1 s late, so the snapshot
    // it sends the learner (its applied state) predates the addition: the
    // new replica holds a membership without itself until it applies the
    // entry after the snapshot. It holds it 4 s here (two of its store's
    // looks for removed replicas), and is killed in the middle.
    let failpoint = |f: &str| ("FAILPOINTS".to_string(), f.to_string());
    cluster.stores[0]
        .env
        .push(failpoint("membership-flush-delay=return(1000)"));
    cluster.stores[0].restart();
    let new = cluster
        .add_store_with_env(&[failpoint("snapshot-installed-pause=return(4000)")])
        .id;
    let idx = cluster.stores.len() - 1;
    let log = cluster.stores[idx].dir.with_extension("log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let adding = {
        let c = client.clone();
        tokio::spawn(async move { c.add_replica(region_id, new).await })
    };
    let paused = eventually(300, Duration::from_millis(100), || {
        let text = read_log();
        async move {
            text.contains("failpoint snapshot-installed-pause")
                .then_some(())
        }
    })
    .await;
    assert!(paused.is_some(), "the new replica installed a snapshot");
    let text = read_log();
    let installed = text
        .lines()
        .find(|l| l.contains("installed a snapshot"))
        .unwrap_or_default()
        .to_string();
    assert!(!installed.is_empty(), "the install is logged: {text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.stores[idx].env.retain(|(k, _)| k != "FAILPOINTS");
    cluster.stores[idx].restart();
    // Restarted, the replica applies its addition and catches up: the
    // operator, waiting to promote it, finishes.
    tokio::time::timeout(Duration::from_secs(120), adding)
        .await
        .expect("add-replica finished")
        .unwrap()
        .expect("add-replica succeeded");
    let text = read_log();
    assert!(
        !text.contains("collecting a replica"),
        "the new replica was not collected: {text}"
    );
    client.transfer_leader(region_id, new).await.unwrap();
    let region = only_region(&client).await.region.unwrap();
    assert_eq!(region.store_id, new);
    assert_eq!(region.peers.len(), 2);
    all_readable(&cluster, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_removed_while_its_store_was_down_is_collected_when_it_returns() {
    let mut cluster = TestCluster::start_manual(3);
    let client = cluster.client().await;
    let route = replicate_by_hand(&cluster, &client).await;
    let region_id = route.region.unwrap().id;
    let pairs: Vec<_> = (0..50)
        .map(|i| (format!("g{i:02}").into_bytes(), b"v".to_vec()))
        .collect();
    client.batch_put(pairs.clone()).await.unwrap();
    // A follower's store goes down; its replica is removed meanwhile.
    let leader = only_region(&client).await.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id != leader).unwrap();
    let down = cluster.stores[idx].id;
    cluster.stores[idx].kill9();
    client.remove_replica(region_id, down).await.unwrap();
    // Back up, the store finds out from PD and deletes its replica.
    cluster.stores[idx].restart();
    let log = cluster.stores[idx].dir.with_extension("log");
    let collected = eventually(150, Duration::from_millis(100), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("replica destroyed").then_some(())
        }
    })
    .await;
    assert!(collected.is_some(), "the removed replica was collected");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("collecting a replica its region removed"),
        "{text}"
    );
    // The other replicas were not touched.
    let r = only_region(&client).await.region.unwrap();
    assert_eq!(r.peers.len(), 2);
    assert!(r.peers.iter().all(|p| p.store_id != down));
    all_readable(&cluster, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_reads_are_served_by_followers_even_with_the_leader_paused() {
    let cluster = TestCluster::start(3);
    let client = cluster.client().await;
    replicate(&cluster, &client).await;
    client.put(b"k".to_vec(), b"v1".to_vec()).await.unwrap();
    let region = only_region(&client).await.region.unwrap();
    let leader = region.store_id;
    let follower = cluster.stores.iter().find(|s| s.id != leader).unwrap();
    let get = |stale_read| GetRequest {
        context: Some(Context {
            region_id: region.id,
            region_epoch: region.epoch,
            stale_read,
        }),
        key: b"k".to_vec(),
    };
    // Asked directly, a follower refuses a linearizable read and serves a
    // stale one (once it has applied the write).
    let mut kv = KvClient::connect(format!("http://{}", follower.addr))
        .await
        .unwrap();
    let r = kv.get(get(false)).await.unwrap().into_inner();
    assert!(
        matches!(
            r.region_error.and_then(|e| e.error),
            Some(RegionErrorKind::NotLeader(_))
        ),
        "a follower serves no linearizable read"
    );
    let served = eventually(50, Duration::from_millis(100), || {
        let mut kv = kv.clone();
        let req = get(true);
        async move {
            let r = kv.get(req).await.ok()?.into_inner();
            (r.region_error.is_none() && r.found && r.value == b"v1").then_some(())
        }
    })
    .await;
    assert!(served.is_some(), "the follower serves the stale read");
    // With the leader paused, the client's stale reads are answered by
    // the other replicas (a paused one is skipped after the keep-alive
    // timeout), before and after a new leader is elected.
    let paused = cluster.stores.iter().find(|s| s.id == leader).unwrap();
    paused.pause();
    for _ in 0..5 {
        let v = client.get_stale(b"k".to_vec()).await.unwrap();
        assert_eq!(v.map(|v| v.value), Some(b"v1".to_vec()));
    }
    paused.resume();
    let out = cluster.cli(&["get", "--stale", "k"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_replica_is_created_under_a_stale_overlapping_one() {
    let mut cluster = TestCluster::start_manual(3);
    let client = cluster.client().await;
    let route = replicate_by_hand(&cluster, &client).await;
    let leader = route.region.unwrap().store_id;
    let idx = cluster.stores.iter().position(|s| s.id != leader).unwrap();
    let x = cluster.stores[idx].id;
    // Store x stops; the region splits, and the right half's replica on x
    // is removed: x's replica of the parent is stale and covers it all.
    cluster.stores[idx].kill9();
    let (_, right) = client.split(b"m".into()).await.unwrap();
    let right_id = right.region.unwrap().id;
    // (The new region elects its leader first.)
    let removed = eventually(50, Duration::from_millis(200), || {
        let c = client.clone();
        async move { c.remove_replica(right_id, x).await.ok() }
    })
    .await;
    assert!(removed.is_some(), "the right half's replica on x removed");
    client.put(b"n".to_vec(), b"right".to_vec()).await.unwrap();
    // Back, but cut off from its groups (the stale replica stays stale):
    // a replica of the right half is refused there.
    flaredb_tests::cut_raft(&cluster.stores[idx]);
    cluster.stores[idx].restart();
    let refused = eventually(50, Duration::from_millis(200), || {
        let c = client.clone();
        async move {
            match c.add_replica(right_id, x).await {
                Err(e) if e.to_string().contains("overlaps") => Some(e.to_string()),
                Ok(r) => panic!("a replica was added under a stale one: {r:?}"),
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(
        refused.is_some(),
        "the store refuses the overlapping replica"
    );
    // Healed, the stale replica catches up (it applies the split; its copy
    // of the right half, removed meanwhile, is collected), and the replica
    // can be added.
    flaredb_tests::heal_raft(&cluster.stores[idx]);
    let added = eventually(100, Duration::from_millis(300), || {
        let c = client.clone();
        async move { c.add_replica(right_id, x).await.ok() }
    })
    .await;
    assert!(added.is_some(), "added once the stale replica caught up");
    client.transfer_leader(right_id, x).await.unwrap();
    assert_eq!(
        client.get(b"n".to_vec()).await.unwrap().map(|v| v.value),
        Some(b"right".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_adds_replicas_as_stores_join_up_to_max_replicas() {
    let mut cluster =
        TestCluster::start_with(1, &["--patrol-interval-ms".into(), "200".into()], &[]);
    let client = cluster.client().await;
    let pairs: Vec<_> = (0..100)
        .map(|i| (format!("j{i:03}").into_bytes(), vec![b'j'; 1000]))
        .collect();
    client.batch_put(pairs.clone()).await.unwrap();
    // One store: one replica serves.
    let r = flaredb_tests::wait_for_replicas(&client, 1).await;
    assert_eq!(r.len(), 1);
    // Each store that joins gets a replica, up to the default three; the
    // split halves keep theirs.
    cluster.add_store();
    flaredb_tests::wait_for_replicas(&client, 2).await;
    client.split(b"j050".into()).await.unwrap();
    cluster.add_store();
    let routes = flaredb_tests::wait_for_replicas(&client, 3).await;
    assert_eq!(routes.len(), 2);
    // A fourth store gets no extra replica (every region stays at three),
    // only its share by balancing: the six replicas spread 2/2/1/1.
    let fourth = cluster.add_store().id;
    let routes = eventually(300, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let routes = c.regions().await.ok()?;
            let on_fourth = routes
                .iter()
                .filter_map(|r| r.region.as_ref())
                .filter(|r| r.peers.iter().any(|p| p.store_id == fourth))
                .count();
            (on_fourth >= 1).then_some(())
        }
    })
    .await;
    assert!(routes.is_some(), "the fourth store got its share");
    let routes = flaredb_tests::wait_for_replicas(&client, 3).await;
    // Every replica has the data: each of the left region's stores in
    // turn leads and serves it.
    let left = routes[0].region.clone().unwrap();
    for p in &left.peers {
        client.transfer_leader(left.id, p.store_id).await.unwrap();
        all_readable(&cluster, &pairs[..50]).await;
    }
}

/// Without TLS, the stores send each other Raft calls over the Raft lane:
/// every store answers its opening, the appends that replicate writes are
/// counted as lane calls, and none reaches the gRPC `Raft` service. The
/// stores run one worker thread each (`--worker-threads`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_between_stores_travel_the_raft_lane() {
    let mut cluster = TestCluster::start(0);
    let mut status = Vec::new();
    for _ in 0..3 {
        let addr = format!("127.0.0.1:{}", flaredb_tests::free_port());
        // One worker thread each, as bench/compare-etcd and
        // scripts/local-cluster.sh run stores sharing a small machine.
        cluster.add_store_with_env(&[
            ("FLAREDB_SERVER_STATUS_ADDR".into(), addr.clone()),
            ("FLAREDB_SERVER_WORKER_THREADS".into(), "1".into()),
        ]);
        status.push(addr);
    }
    for store in &cluster.stores {
        let log = std::fs::read_to_string(store.dir.with_extension("log")).expect("store log");
        assert!(
            log.contains("worker_threads=1"),
            "store {} did not start one worker thread:\n{log}",
            store.addr
        );
    }
    let client = cluster.client().await;
    replicate(&cluster, &client).await;
    for i in 0..50u32 {
        client
            .put(format!("lane{i}").into_bytes(), b"v".to_vec())
            .await
            .unwrap();
    }
    for store in &cluster.stores {
        assert!(
            flaredb_tests::answers_raft_lane(&store.addr),
            "store {} does not answer the Raft lane",
            store.addr
        );
    }
    let (mut sent, mut served) = (0.0, 0.0);
    for addr in &status {
        let (code, text) = flaredb_tests::http_get(addr, "/metrics").expect("scrape");
        assert_eq!(code, 200);
        let m =
            |labels: &str| flaredb_tests::metric(&text, "flaredb_raft_lane_calls_total", labels);
        sent += m(r#"side="sent""#).unwrap_or(0.0);
        served += m(r#"side="served""#).unwrap_or(0.0);
        for method in ["AppendEntries", "Vote", "PreVote"] {
            let grpc = text
                .lines()
                .filter(|l| {
                    l.starts_with("flaredb_grpc_requests_total")
                        && l.contains(&format!("/flaredb.v1.Raft/{method}\""))
                })
                .count();
            assert_eq!(grpc, 0, "Raft.{method} over gRPC on {addr}:\n{text}");
        }
    }
    // Each of the 50 writes was appended on two followers.
    assert!(
        sent >= 100.0 && served >= 100.0,
        "lane calls sent {sent}, served {served}"
    );
}
