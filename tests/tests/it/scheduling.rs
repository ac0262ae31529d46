//! PD's replica checker repairs regions on its own: a store stopped for good
//! has its replicas rebuilt on the other stores after
//! `max-store-down-time`, while clients keep writing and lose nothing; when
//! it comes back with its old data, its removed replicas are collected, not
//! served. A store that joins gets its share of replicas and leaderships
//! while clients' histories stay linearizable. A drained store can be
//! stopped without any region losing a replica. Regions split on their own
//! as writes grow them, and scans across the new boundaries stay whole.

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
        // Balancing may since have given it a new replica of the region
        // (a new peer, with PD's record listing it): only then may it serve.
        let served = !matches!(
            resp.region_error.and_then(|e| e.error),
            Some(RegionErrorKind::RegionNotFound(_))
        );
        let listed = placement(&client)
            .await
            .iter()
            .any(|(id, stores)| *id == r.id && stores.contains(&dead));
        assert!(
            !served || listed,
            "store {dead} still serves its removed replica of region {}",
            r.id
        );
    }
    // Three replicas each; the returned store may get some back by balancing.
    flaredb_tests::wait_for_replicas(&client, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_store_gets_its_share_of_replicas_and_leaders_while_clients_stay_linearizable() {
    let mut cluster =
        TestCluster::start_with(3, &["--patrol-interval-ms".into(), "200".into()], &[]);
    let client = cluster.client().await;
    client.put(b"a".to_vec(), b"0".to_vec()).await.unwrap();
    for at in ["b", "d", "f", "h", "j"] {
        client.split(at.into()).await.unwrap();
    }
    flaredb_tests::wait_for_replicas(&client, 3).await;
    // One key per region, read and written concurrently throughout.
    let keys: Vec<Vec<u8>> = ["a", "c", "e", "g", "i", "k"]
        .iter()
        .map(|p| format!("{p}-key").into_bytes())
        .collect();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(cluster.client().await);
    }
    let workload = flaredb_tests::history::Workload::start(clients, keys);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A fourth store joins: 18 replicas and 6 leaderships spread over four
    // stores, to within one of each other.
    let new = cluster.add_store().id;
    let spread = eventually(600, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let routes = c.regions().await.ok()?;
            let mut replicas = std::collections::HashMap::<u64, usize>::new();
            let mut leaders = std::collections::HashMap::<u64, usize>::new();
            for route in &routes {
                let r = route.region.as_ref()?;
                if r.peers.len() != 3 {
                    return None;
                }
                for p in &r.peers {
                    *replicas.entry(p.store_id).or_default() += 1;
                }
                *leaders.entry(r.store_id).or_default() += 1;
            }
            let even = |m: &std::collections::HashMap<u64, usize>| {
                m.len() == 4 && m.values().max().unwrap_or(&0) - m.values().min().unwrap_or(&0) <= 1
            };
            (even(&replicas) && even(&leaders)).then_some((replicas, leaders))
        }
    })
    .await;
    let (replicas, leaders) = spread.expect("replicas and leaders spread onto the new store");
    assert!(
        replicas[&new] >= 4 && leaders[&new] >= 1,
        "{replicas:?} {leaders:?}"
    );
    assert!(workload.answered() > 0);

    let summary = workload.finish(&client).await;
    eprintln!("balance: {}", summary.line());
    summary.assert_linearizable();
    flaredb_tests::wait_for_replicas(&client, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_store_can_be_stopped_without_any_region_losing_a_replica() {
    let mut cluster =
        TestCluster::start_with(4, &["--patrol-interval-ms".into(), "200".into()], &[]);
    let client = cluster.client().await;
    client.put(b"a".to_vec(), b"0".to_vec()).await.unwrap();
    for at in ["h", "p"] {
        client.split(at.into()).await.unwrap();
    }
    flaredb_tests::wait_for_replicas(&client, 3).await;
    let pairs: Vec<_> = (0..60)
        .map(|i| {
            (
                format!("{}{i:02}", ["c", "k", "t"][i % 3]).into_bytes(),
                b"v".to_vec(),
            )
        })
        .collect();
    client.batch_put(pairs.clone()).await.unwrap();
    // The store leading the most regions is drained, by the CLI.
    let stores = client.stores().await.unwrap();
    let victim = stores
        .iter()
        .max_by_key(|s| (s.leader_count, s.replica_count))
        .unwrap();
    let (idx, id) = (
        cluster
            .stores
            .iter()
            .position(|d| d.id == victim.id)
            .unwrap(),
        victim.id,
    );
    assert!(victim.leader_count >= 1, "{stores:?}");
    let out = cluster.cli(&["--json", "operator", "drain-store", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["store"]["draining"], true, "{j}");
    // Its leaderships and replicas move away while writes go on.
    let drained = eventually(600, Duration::from_millis(100), || {
        let c = client.clone();
        let out = cluster.cli(&["--json", "stores"]);
        async move {
            let _ = c.put(b"k-during".to_vec(), b"1".to_vec()).await;
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let s = j.as_array()?.iter().find(|s| s["id"] == id)?.clone();
            (s["replicas"] == 0 && s["leaders"] == 0).then_some(s)
        }
    })
    .await;
    let s = drained.expect("the store drained");
    assert_eq!(s["state"], "up,draining", "{s}");
    // Stopped: every region still has three replicas, all serving.
    cluster.stores[idx].kill9();
    for (_, stores) in placement(&client).await {
        assert_eq!(stores.len(), 3);
        assert!(!stores.contains(&id));
    }
    client.put(b"after".to_vec(), b"1".to_vec()).await.unwrap();
    flaredb_tests::assert_all_readable(&cluster.client().await, &pairs).await;
    // PD's operator log shows what the checker did, done.
    let out = cluster.cli(&["--json", "operators"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recent = j["recent"].as_array().unwrap();
    let did = |kind: &str| {
        recent
            .iter()
            .any(|o| o["kind"] == kind && o["source"] == "checker" && o["outcome"] == "done")
    };
    assert!(
        did("transfer-leader") && did("add-replica") && did("remove-replica"),
        "{j}"
    );
    assert!(
        recent
            .iter()
            .any(|o| o["kind"] == "remove-replica" && o["store_id"] == id),
        "{j}"
    );
    let text = cluster.cli(&["operators"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("remove-replica"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_split_on_their_own_as_writes_grow_them_and_scans_stay_whole() {
    let cluster = TestCluster::start_with(
        3,
        &["--patrol-interval-ms".into(), "200".into()],
        &[
            "--region-split-size".into(),
            "16384".into(),
            "--split-check-interval-ms".into(),
            "300".into(),
        ],
    );
    let client = cluster.client().await;
    client.put(b"k".to_vec(), b"0".to_vec()).await.unwrap();
    flaredb_tests::wait_for_replicas(&client, 3).await;
    // Four writers fill the key space with 512-byte values, about 160 KiB
    // in all; a scanner reads the whole range meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..80u32 {
                    let key = format!("k{:03}-{w}", (i * 37 + w * 11) % 80).into_bytes();
                    c.put(key.clone(), vec![b'x'; 512]).await.unwrap();
                    written.push(key);
                }
                written
            })
        })
        .collect();
    let scanner = {
        let (c, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut scans = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let pairs = c.scan(b"k".to_vec(), b"l".to_vec(), 0).await.unwrap();
                let keys: Vec<&Vec<u8>> = pairs.iter().map(|p| &p.key).collect();
                assert!(keys.windows(2).all(|w| w[0] < w[1]), "a scan out of order");
                scans += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            scans
        })
    };
    let mut all = BTreeSet::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all.insert(b"k".to_vec());
    let written = all.len() as u64;
    // Split more than once, on their own.
    let split = eventually(300, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let n = c.regions().await.ok()?.len();
            (n >= 4).then_some(n)
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    assert!(scanner.await.unwrap() > 0);
    let regions = split.expect("the region split at least three times");
    // A scan across every new boundary returns every key, in order.
    let pairs = client.scan(b"k".to_vec(), b"l".to_vec(), 0).await.unwrap();
    let keys: Vec<Vec<u8>> = pairs.into_iter().map(|p| p.key).collect();
    assert_eq!(
        keys,
        all.into_iter().collect::<Vec<_>>(),
        "{regions} regions"
    );
    // No split was asked by hand: the leaders asked for them.
    let asked: usize = cluster
        .stores
        .iter()
        .map(|s| {
            std::fs::read_to_string(s.dir.with_extension("log"))
                .unwrap_or_default()
                .matches("region too large: asking PD to split it")
                .count()
        })
        .sum();
    assert!(asked >= 3, "{asked} automatic splits asked");
    flaredb_tests::wait_for_replicas(&client, 3).await;
    // The leaders report each region's size and keys, as their last split
    // check counted them: every key once, 512 bytes of value each at least.
    let counted = eventually(300, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let routes = c.regions().await.ok()?;
            let keys: u64 = routes.iter().map(|r| r.approximate_keys).sum();
            let size: u64 = routes.iter().map(|r| r.approximate_size).sum();
            (keys == written).then_some(size)
        }
    })
    .await;
    let size = match counted {
        Some(size) => size,
        None => {
            let routes = client.regions().await.unwrap();
            let seen: Vec<_> = routes
                .iter()
                .map(|r| (r.approximate_keys, r.approximate_size))
                .collect();
            panic!("the regions' reported (keys, bytes) do not add up to the {written} keys written: {seen:?}");
        }
    };
    assert!(
        size >= 512 * written,
        "{size} bytes reported for {written} keys"
    );
    assert!(
        size <= 1024 * written,
        "{size} bytes reported for {written} keys"
    );
}
