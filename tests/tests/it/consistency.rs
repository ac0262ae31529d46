//! The replicas of a region never disagree, and a linearizable read never
//! misses an acknowledged write: a re-sent write leaves every replica's
//! version counter where the others have it, also across a leader change
//! and a restart; a read that waited for its replica to apply a split is
//! refused with a region error, not answered from the region's old range.

use std::time::Duration;

use flaredb_tests::{cut_raft, eventually, heal_raft, TestCluster};
use rdb_client::Client;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{Context, GetRequest, GetResponse, PutRequest, PutResponse, Region};

fn context(region: &Region, stale_read: bool) -> Option<Context> {
    Some(Context {
        region_id: region.id,
        region_epoch: region.epoch,
        stale_read,
    })
}

async fn kv(address: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{address}"))
        .await
        .expect("connect to a store")
}

/// Puts `key` = `value` on the store at `address`, with request id `seq` of
/// a fixed client when `seq` is not 0.
async fn put_on(address: &str, region: &Region, key: &[u8], value: &[u8], seq: u64) -> PutResponse {
    kv(address)
        .await
        .put(PutRequest {
            context: context(region, false),
            key: key.to_vec(),
            value: value.to_vec(),
            request_id: (seq != 0).then(|| rdb_proto::v1::RequestId {
                client: vec![0x25; 16],
                seq,
            }),
        })
        .await
        .expect("put")
        .into_inner()
}

/// Gets `key` from the store at `address`.
async fn get_on(address: &str, region: &Region, key: &[u8], stale_read: bool) -> GetResponse {
    kv(address)
        .await
        .get(GetRequest {
            context: context(region, stale_read),
            key: key.to_vec(),
        })
        .await
        .expect("get")
        .into_inner()
}

/// The cluster's only region and its leader's address, once PD has a
/// replica of it on every store.
async fn replicated(cluster: &TestCluster, client: &Client) -> (Region, String) {
    client.put(b"boot".to_vec(), b"1".to_vec()).await.unwrap();
    let mut routes = flaredb_tests::wait_for_replicas(client, cluster.stores.len()).await;
    assert_eq!(routes.len(), 1);
    let route = routes.remove(0);
    (route.region.unwrap(), route.leader.unwrap().address)
}

/// Stale reads of `key` on every store, once each has applied a version of
/// it: the versions, in store order.
async fn versions_everywhere(cluster: &TestCluster, region: &Region, key: &[u8]) -> Vec<u64> {
    let mut versions = Vec::new();
    for s in &cluster.stores {
        let v = eventually(100, Duration::from_millis(100), || async {
            let r = get_on(&s.addr, region, key, true).await;
            (r.region_error.is_none() && r.found).then_some(r.version)
        })
        .await;
        versions.push(v.unwrap_or_else(|| panic!("store {} never served {key:?}", s.id)));
    }
    versions
}

/// The duplicate of a request id used to skip the whole entry on every
/// replica, the region's counter and applied mark with it, while the counter
/// in memory had moved: the next entry that was not a write (a new leader's
/// first entry) moved the applied mark past it, and a replica restarted then
/// reloaded the old counter and numbered later writes one lower than its
/// peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_write_keeps_every_replicas_versions_alike_across_a_restart() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let (region, leader) = replicated(&cluster, &client).await;
    let first = put_on(&leader, &region, b"k1", b"v", 1).await;
    assert!(first.region_error.is_none(), "{first:?}");
    let again = put_on(&leader, &region, b"k1", b"v", 1).await;
    assert!(again.region_error.is_none(), "{again:?}");
    assert_eq!(again.version, first.version, "answered from the record");

    // A new leader: its first entry is not a write.
    let old = region.store_id;
    let new = cluster.stores.iter().find(|s| s.id != old).unwrap().id;
    client.transfer_leader(region.id, new).await.unwrap();
    // Every replica applies the new leader's first entry (its commit
    // reaches them with the next heartbeats), moving its applied mark past
    // the duplicate's entry; then a follower restarts from what it has on
    // disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idx = cluster
        .stores
        .iter()
        .position(|s| s.id != old && s.id != new)
        .unwrap();
    cluster.stores[idx].restart();

    let put = eventually(100, Duration::from_millis(100), || async {
        client.clear_region_cache();
        client.put(b"k2".to_vec(), b"w".to_vec()).await.ok()
    })
    .await
    .expect("a put after the restart");
    let region = client.regions().await.unwrap().remove(0).region.unwrap();
    let versions = versions_everywhere(&cluster, &region, b"k2").await;
    assert!(
        versions.iter().all(|v| *v == put),
        "k2's version on each store {versions:?}, acknowledged as {put}"
    );
    assert_eq!(
        versions_everywhere(&cluster, &region, b"k1").await,
        vec![first.version; 3]
    );
    flaredb_tests::assert_replicas_agree(&client).await;
}

/// A leader whose disk is slow applies a split seconds after its peers: the
/// new region's leader (on another store) acknowledges writes meanwhile. A
/// Get sent to the old leader with the region's old epoch waits for the
/// replica to apply what was committed, the split among it; it used to be
/// answered then, from the old range, with the value from before those
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_that_waited_for_a_split_to_apply_is_refused_not_served_stale() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let (region, _) = replicated(&cluster, &client).await;
    client.put(b"x".to_vec(), b"old".to_vec()).await.unwrap();
    // The first store applies splits 6 s late; it leads the region.
    let slow = cluster.stores[0].id;
    cluster.stores[0]
        .env
        .push(("FAILPOINTS".into(), "split-apply-delay=return(6000)".into()));
    cluster.stores[0].restart();
    let led = eventually(100, Duration::from_millis(200), || async {
        client.transfer_leader(region.id, slow).await.ok()
    })
    .await
    .expect("the slow store leads");
    let region = led.region.unwrap();
    let slow_addr = led.leader.unwrap().address;
    let got = get_on(&slow_addr, &region, b"x", false).await;
    assert!(got.region_error.is_none() && got.value == b"old", "{got:?}");

    let splitter = client.clone();
    let started = std::time::Instant::now();
    let split = tokio::spawn(async move { Client::split(&splitter, b"m".to_vec()).await });
    // The other replicas apply the split and elect the new region's leader
    // (PD learns of it from that leader), which takes a write of x.
    let right = eventually(60, Duration::from_millis(100), || async {
        let routes = client.regions().await.ok()?;
        routes.into_iter().find(|r| {
            r.region.as_ref().is_some_and(|g| g.start_key == b"m")
                && r.leader.as_ref().is_some_and(|l| l.address != slow_addr)
        })
    })
    .await
    .expect("the new region has a leader on another store");
    let right_region = right.region.unwrap();
    let acked = put_on(
        &right.leader.unwrap().address,
        &right_region,
        b"x",
        b"new",
        0,
    )
    .await;
    assert!(acked.region_error.is_none(), "{acked:?}");
    assert!(
        started.elapsed() < Duration::from_millis(5000),
        "the new region took a write only {:?} after the split began",
        started.elapsed()
    );

    // The old leader has not applied the split yet: a read waits (up to an
    // election timeout) for it to apply what was committed, the split
    // among it. Sent shortly before the split applies there, and again
    // while the wait times out, until one is answered.
    tokio::time::sleep(Duration::from_millis(5200).saturating_sub(started.elapsed())).await;
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(12) {
        let got = get_on(&slow_addr, &region, b"x", false).await;
        match got.region_error.as_ref().and_then(|e| e.error.as_ref()) {
            Some(RegionErrorKind::EpochNotMatch(_)) | Some(RegionErrorKind::KeyNotInRegion(_)) => {
                refused = Some(got);
                break;
            }
            // The wait timed out before the split applied: ask again.
            Some(RegionErrorKind::NotLeader(_)) => continue,
            _ => panic!(
                "a read of the old range after an acknowledged write in the new region: {got:?}"
            ),
        }
    }
    assert!(refused.is_some(), "the old leader never answered the read");
    let _ = split.await;
    // Through the client, the acknowledged value.
    client.clear_region_cache();
    let v = client.get(b"x".to_vec()).await.unwrap().unwrap();
    assert_eq!(v.value, b"new");
    flaredb_tests::assert_replicas_agree(&client).await;
}

/// Whether every region has a voter on each of `stores` stores, none of
/// them reported down by its leader.
async fn every_region_whole(client: &Client, stores: usize) -> Option<Vec<Region>> {
    client.clear_region_cache();
    let routes = client.regions().await.ok()?;
    let mut regions = Vec::new();
    for route in routes {
        let r = route.region?;
        let voters: std::collections::BTreeSet<u64> = r
            .peers
            .iter()
            .filter(|p| p.role != rdb_client::PeerRole::Learner as i32)
            .map(|p| p.store_id)
            .collect();
        if voters.len() != stores || !route.down_peer_ids.is_empty() || route.leader.is_none() {
            return None;
        }
        regions.push(r);
    }
    Some(regions)
}

/// A follower down while its region splits, and while the region's log is
/// purged past the split, catches up on the region by a snapshot, which
/// says nothing of the split: the new region's replica on its store was
/// never created, and its peers' messages to it were refused forever. Its
/// store now reports the replica missing and PD replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_missed_a_split_is_replaced_and_every_region_is_whole() {
    let mut cluster = TestCluster::start_with(0, &[], &[]);
    // Snapshots every 20 entries: the log is purged past the split after
    // a few dozen writes.
    let fp = [(
        "FAILPOINTS".to_string(),
        "raft-snapshot-every=return(20)".to_string(),
    )];
    for _ in 0..3 {
        cluster.add_store_with_env(&fp);
    }
    let client = cluster.client().await;
    let (region, _) = replicated(&cluster, &client).await;
    client.put(b"x".to_vec(), b"before".to_vec()).await.unwrap();
    // The first store leads; the second goes down.
    let leader = cluster.stores[0].id;
    eventually(50, Duration::from_millis(200), || async {
        client.transfer_leader(region.id, leader).await.ok()
    })
    .await
    .expect("the first store leads");
    let idx = 1;
    cluster.stores[idx].kill9();
    Client::split(&client, b"m".to_vec()).await.expect("split");
    for i in 0..150u32 {
        let key = format!("a{i:04}").into_bytes();
        eventually(50, Duration::from_millis(200), || async {
            client.put(key.clone(), b"left".to_vec()).await.ok()
        })
        .await
        .expect("put in the left region");
    }
    client.put(b"x".to_vec(), b"after".to_vec()).await.unwrap();
    cluster.stores[idx].restart();
    // Whole: every region with a live voter on every store, and the
    // returned store serving both regions' data from its own replicas.
    let addr = cluster.stores[idx].addr.clone();
    let whole = eventually(450, Duration::from_millis(200), || {
        let (client, addr) = (client.clone(), addr.clone());
        async move {
            let regions = every_region_whole(&client, 3).await?;
            for (key, want) in [(&b"a0149"[..], &b"left"[..]), (b"x", b"after")] {
                let r = regions.iter().find(|r| {
                    r.start_key.as_slice() <= key
                        && (r.end_key.is_empty() || key < r.end_key.as_slice())
                })?;
                let g = get_on(&addr, r, key, true).await;
                if g.region_error.is_some() || g.value != want {
                    return None;
                }
            }
            Some(regions)
        }
    })
    .await;
    let log =
        std::fs::read_to_string(cluster.stores[idx].dir.with_extension("log")).unwrap_or_default();
    let regions = whole.unwrap_or_else(|| {
        panic!(
            "the returned store never served every region; its log ends:\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        )
    });
    assert_eq!(regions.len(), 2, "{regions:?}");
    assert!(
        log.contains("Raft messages arrived for replicas this store does not run"),
        "the store reported its missing replica"
    );
    flaredb_tests::assert_replicas_agree(&client).await;
}

/// A follower that fell behind a purged log installs a snapshot: its data
/// is cleared, then filled chunk by chunk. A stale read on it in between
/// used to be answered from the cleared range (keys missing that were never
/// deleted); it is refused until the install is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_read_during_a_snapshot_install_is_refused_not_answered_with_keys_missing() {
    let mut cluster = TestCluster::start_with(0, &[], &[]);
    let snapshots = "raft-snapshot-every=return(20)";
    for i in 0..3 {
        let fp = if i == 2 {
            format!("{snapshots};snapshot-restore-pause=return(3000)")
        } else {
            snapshots.to_string()
        };
        cluster.add_store_with_env(&[("FAILPOINTS".to_string(), fp)]);
    }
    let client = cluster.client().await;
    let (region, _) = replicated(&cluster, &client).await;
    // The paused store must be a follower: the first store leads.
    if region.store_id == cluster.stores[2].id {
        client
            .transfer_leader(region.id, cluster.stores[0].id)
            .await
            .expect("hand the leadership over");
    }
    client.put(b"k".to_vec(), b"kept".to_vec()).await.unwrap();
    let follower = &cluster.stores[2];
    let served = eventually(100, Duration::from_millis(100), || async {
        let g = get_on(&follower.addr, &region, b"k", true).await;
        (g.region_error.is_none() && g.found).then_some(())
    })
    .await;
    assert!(served.is_some(), "the follower serves k before the fault");
    let log = cluster.stores[2].dir.with_extension("log");
    let count = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    // Its first replica came by a snapshot too.
    let (installs, pauses) = (
        count("installed a snapshot"),
        count("failpoint snapshot-restore-pause"),
    );
    cluster.stores[2].kill9();
    for i in 0..100u32 {
        client
            .put(format!("w{i:04}").into_bytes(), b"x".to_vec())
            .await
            .unwrap();
    }
    cluster.stores[2].restart();
    let follower = &cluster.stores[2];
    let (mut refused, mut served_after) = (0, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let g = match tokio::time::timeout(Duration::from_secs(2), async {
            kv(&follower.addr)
                .await
                .get(GetRequest {
                    context: context(&region, true),
                    key: b"k".to_vec(),
                })
                .await
        })
        .await
        {
            Ok(Ok(g)) => g.into_inner(),
            // Starting up, or busy: ask again.
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match g.region_error {
            Some(_) => refused += 1,
            None => {
                assert!(g.found && g.value == b"kept", "a stale read saw {g:?}");
                if count("installed a snapshot") > installs {
                    served_after = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        count("failpoint snapshot-restore-pause") > pauses,
        "the follower installed a snapshot"
    );
    assert!(refused > 0, "no read was refused during the install");
    assert!(served_after, "the follower serves k after the install");
    flaredb_tests::assert_replicas_agree(&client).await;
}

/// The replica check finds replicas that disagree: one replica stores
/// every put with a byte more than its peers (failpoint `apply-tamper`), and
/// its digest differs from theirs. `rdb-cli check` says so with exit code 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replica_check_finds_a_replica_gone_wrong() {
    let mut cluster = TestCluster::start(3);
    let client = cluster.client().await;
    let (region, _) = replicated(&cluster, &client).await;
    for i in 0..20u32 {
        client
            .put(format!("k{i:02}").into_bytes(), b"v".to_vec())
            .await
            .unwrap();
    }
    let out = cluster.cli(&["--json", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j[0]["agree"], true, "{j}");
    assert_eq!(j[0]["replicas"].as_array().unwrap().len(), 3, "{j}");
    assert!(j[0]["replicas"][0]["keys"].as_u64().unwrap() >= 20, "{j}");

    // A follower goes wrong, then takes one more put.
    let idx = cluster
        .stores
        .iter()
        .position(|s| s.id != region.store_id)
        .unwrap();
    cluster.stores[idx]
        .env
        .push(("FAILPOINTS".into(), "apply-tamper=return(1)".into()));
    cluster.stores[idx].restart();
    eventually(100, Duration::from_millis(100), || async {
        client.put(b"late".to_vec(), b"v".to_vec()).await.ok()
    })
    .await
    .expect("a put after the restart");
    let out = eventually(50, Duration::from_millis(200), || async {
        let out = cluster.cli(&["--json", "check", "--wait-secs", "10"]);
        (out.status.code() == Some(6)).then_some(out)
    })
    .await
    .expect("rdb-cli check finds the replicas disagree");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j[0]["agree"], false, "{j}");
    let digests: Vec<&str> = j[0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["digest"].as_str())
        .collect();
    assert_eq!(digests.len(), 3, "{j}");
    let odd = j[0]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            digests
                .iter()
                .filter(|d| **d == r["digest"].as_str().unwrap())
                .count()
                == 1
        })
        .expect("one replica differs");
    assert_eq!(odd["store_id"], cluster.stores[idx].id, "{j}");
}

/// Whether a re-sent request is a duplicate is decided from the log alone:
/// its record sits in the time bucket of its entry's leader time, and a
/// copy whose entry comes two buckets later is a new write, on every
/// replica alike, also on one cut off in between for longer than that
/// (which used to drop records by its own clock). Buckets of 2 s here
/// (failpoint `dedup-bucket-ms`, on every store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_write_is_a_duplicate_for_two_buckets_by_the_log_on_every_replica() {
    let mut cluster = TestCluster::start_with(0, &[], &[]);
    let fp = [(
        "FAILPOINTS".to_string(),
        "dedup-bucket-ms=return(2000)".to_string(),
    )];
    for _ in 0..3 {
        cluster.add_store_with_env(&fp);
    }
    let client = cluster.client().await;
    let (region, leader) = replicated(&cluster, &client).await;
    // The leader writes format-1 entries once PD says every store reads them.
    let idx = cluster
        .stores
        .iter()
        .position(|s| s.id == region.store_id)
        .unwrap();
    let log = cluster.stores[idx].dir.with_extension("log");
    let format_1 = eventually(100, Duration::from_millis(100), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("written in a new format")
            .then_some(())
    })
    .await;
    assert!(format_1.is_some(), "the cluster version reached 0.2.0");

    let first = put_on(&leader, &region, b"k", b"v", 9).await;
    assert!(first.region_error.is_none(), "{first:?}");
    let again = put_on(&leader, &region, b"k", b"v", 9).await;
    assert_eq!(
        again.version, first.version,
        "a duplicate within its bucket"
    );

    // A follower cut off for longer than two buckets.
    let f = cluster
        .stores
        .iter()
        .position(|s| s.id != region.store_id)
        .unwrap();
    cut_raft(&cluster.stores[f]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = put_on(&leader, &region, b"k", b"v", 9).await;
    assert!(later.region_error.is_none(), "{later:?}");
    assert!(
        later.version > first.version,
        "two buckets on, the request id is new again: {later:?} after {first:?}"
    );
    heal_raft(&cluster.stores[f]);
    // Once each has applied the last entry, every replica holds the same.
    let caught_up = eventually(100, Duration::from_millis(100), || async {
        let v = versions_everywhere(&cluster, &region, b"k").await;
        v.iter().all(|v| *v >= later.version).then_some(v)
    })
    .await;
    assert_eq!(
        caught_up,
        Some(vec![later.version; 3]),
        "every replica decided alike"
    );
    flaredb_tests::assert_replicas_agree(&client).await;
}
