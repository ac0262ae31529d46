//! Key-value operations and CAS through the client against real processes;
//! bad input is refused with InvalidArgument by the client and by the server.

use std::sync::Arc;

use flaredb_tests::TestCluster;
use rdb_client::{CasExpect, Error, ScanOptions};
use rdb_proto::limits::{MAX_KEY_SIZE, MAX_VALUE_SIZE};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::*;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_get_delete_scan_and_batches() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;

    let v1 = c.put(k("a"), k("1")).await.unwrap();
    assert_eq!(c.get(k("a")).await.unwrap().unwrap().value, b"1");
    let v2 = c.put(k("a"), k("2")).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(c.get(k("a")).await.unwrap().unwrap().version, v2);
    assert!(c.delete(k("a")).await.unwrap());
    assert!(!c.delete(k("a")).await.unwrap());
    assert_eq!(c.get(k("a")).await.unwrap(), None);

    // Binary keys and values, including 0x00 and 0xff.
    c.put(vec![0x00, 0xff], vec![0xff, 0x00]).await.unwrap();
    assert_eq!(
        c.get(vec![0x00, 0xff]).await.unwrap().unwrap().value,
        vec![0xff, 0x00]
    );

    let pairs: Vec<_> = (0..50)
        .map(|i| {
            (
                format!("key{i:03}").into_bytes(),
                format!("v{i}").into_bytes(),
            )
        })
        .collect();
    let versions = c.batch_put(pairs.clone()).await.unwrap();
    assert_eq!(versions.len(), 50);
    let got = c
        .batch_get(vec![k("key007"), k("missing"), k("key001")])
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![k("key007"), k("key001")]
    );
    assert_eq!(got[0].value, b"v7");

    let all = c.scan(k("key"), k("kez"), 0).await.unwrap();
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    let first3 = c.scan(k("key"), Vec::new(), 3).await.unwrap();
    assert_eq!(
        first3.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![k("key000"), k("key001"), k("key002")]
    );
    let last2 = c
        .scan_with(
            k("key"),
            k("kez"),
            ScanOptions {
                limit: 2,
                reverse: true,
                keys_only: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        last2.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        vec![k("key049"), k("key048")]
    );
    assert!(last2.iter().all(|p| p.value.is_empty()));

    assert_eq!(
        c.batch_delete(vec![k("key000"), k("key001"), k("nope")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(c.delete_range(k("key010"), k("key020")).await.unwrap(), 10);
    assert_eq!(c.scan(k("key"), k("kez"), 0).await.unwrap().len(), 38);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_in_all_three_modes() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;

    let r = c
        .compare_and_swap(k("c"), CasExpect::Absent, Some(k("one")))
        .await
        .unwrap();
    assert!(r.succeeded && r.current.is_none());
    let v = r.new_version.unwrap();
    let r = c
        .compare_and_swap(k("c"), CasExpect::Absent, Some(k("x")))
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.current.as_ref().unwrap().value, b"one");
    assert_eq!(r.current.as_ref().unwrap().version, v);

    let r = c
        .compare_and_swap(k("c"), CasExpect::Version(v + 1000), Some(k("x")))
        .await
        .unwrap();
    assert!(!r.succeeded && r.new_version.is_none());
    let r = c
        .compare_and_swap(k("c"), CasExpect::Version(v), Some(k("two")))
        .await
        .unwrap();
    assert!(r.succeeded);
    let v2 = r.new_version.unwrap();
    assert!(v2 > v);

    let r = c
        .compare_and_swap(k("c"), CasExpect::Value(k("one")), Some(k("x")))
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.current.unwrap().value, b"two");
    let r = c
        .compare_and_swap(k("c"), CasExpect::Value(k("two")), None)
        .await
        .unwrap();
    assert!(r.succeeded && r.new_version.is_none());
    assert_eq!(c.get(k("c")).await.unwrap(), None);

    // After delete and re-create the version is still higher: no ABA.
    let r = c
        .compare_and_swap(k("c"), CasExpect::Absent, Some(k("again")))
        .await
        .unwrap();
    assert!(r.new_version.unwrap() > v2);
    let r = c
        .compare_and_swap(k("c"), CasExpect::Version(v), Some(k("x")))
        .await
        .unwrap();
    assert!(
        !r.succeeded,
        "an old version must not match a re-created key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_cas_incrementers() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;
    c.put(k("counter"), k("0")).await.unwrap();
    let successes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        let successes = successes.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let cur = c.get(k("counter")).await.unwrap().unwrap();
                let n: u64 = String::from_utf8(cur.value).unwrap().parse().unwrap();
                let r = c
                    .compare_and_swap(
                        k("counter"),
                        CasExpect::Version(cur.version),
                        Some((n + 1).to_string().into_bytes()),
                    )
                    .await
                    .unwrap();
                if r.succeeded {
                    successes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = successes.load(std::sync::atomic::Ordering::SeqCst);
    let v = c.get(k("counter")).await.unwrap().unwrap();
    assert!(
        total >= 40,
        "at least one task's worth of increments succeeded ({total})"
    );
    assert_eq!(String::from_utf8(v.value).unwrap(), total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_invalid_argument_from_client_and_server() {
    let cluster = TestCluster::start(1);
    let c = cluster.client().await;
    let big_key = vec![b'k'; MAX_KEY_SIZE + 1];
    let big_value = vec![b'v'; MAX_VALUE_SIZE + 1];
    for (what, err) in [
        ("empty key", c.put(Vec::new(), k("v")).await.unwrap_err()),
        (
            "key over the limit",
            c.put(big_key.clone(), k("v")).await.unwrap_err(),
        ),
        (
            "value over the limit",
            c.put(k("k"), big_value.clone()).await.unwrap_err(),
        ),
        (
            "end before start",
            c.scan(k("z"), k("a"), 0).await.unwrap_err(),
        ),
        (
            "empty key in get",
            c.get(Vec::new()).await.map(|_| ()).unwrap_err(),
        ),
    ] {
        assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err:?}");
    }

    // The server refuses the same input on its own, with a message that says what was wrong.
    let route = c.regions().await.unwrap().remove(0);
    let region = route.region.unwrap();
    let context = Some(Context {
        region_id: region.id,
        region_epoch: region.epoch,
        stale_read: false,
    });
    let mut kv = KvClient::connect(format!("http://{}", route.leader.unwrap().address))
        .await
        .unwrap();
    let s = kv
        .put(PutRequest {
            context,
            key: Vec::new(),
            value: k("v"),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("empty"), "{}", s.message());
    let s = kv
        .put(PutRequest {
            context,
            key: big_key,
            value: k("v"),
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("4096"), "{}", s.message());
    let s = kv
        .put(PutRequest {
            context,
            key: k("k"),
            value: big_value,
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("value"), "{}", s.message());
    let s = kv
        .scan(ScanRequest {
            context,
            start_key: k("z"),
            end_key: k("a"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("before"), "{}", s.message());
    let s = kv
        .get(GetRequest {
            context: None,
            key: k("k"),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = kv
        .compare_and_swap(CompareAndSwapRequest {
            context,
            key: k("k"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // And it keeps serving.
    assert!(kv
        .get(GetRequest {
            context,
            key: k("k")
        })
        .await
        .unwrap()
        .into_inner()
        .region_error
        .is_none());
}

/// Concurrent single-key puts and gets from many tasks are coalesced into
/// batch RPCs per store and region: every call still gets its own answer
/// (its version, the value of its key), across two regions on two stores,
/// with the same key written by several tasks at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_puts_and_gets_answer_each_call() {
    let cluster = TestCluster::start(2);
    let client = cluster.client().await;
    client.split(k("m")).await.expect("split at m");
    let regions = client.regions().await.unwrap();
    assert_eq!(regions.len(), 2);
    let plain = rdb_client::Client::connect_with(
        [cluster.pd.addr.clone()],
        rdb_client::ClientConfig {
            coalesce: false,
            ..TestCluster::client_config()
        },
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let c = if t % 4 == 0 {
            plain.clone()
        } else {
            client.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..50u32 {
                // 40 distinct keys on both sides of "m": many tasks share keys.
                let key = format!("{}{:02}", if i % 2 == 0 { "a" } else { "x" }, (t + i) % 20);
                let value = format!("{t}/{i}");
                let version = c.put(k(&key), k(&value)).await.unwrap();
                let got = c.get(k(&key)).await.unwrap().expect("just written");
                // Ours, or a later write of the same key by another task.
                assert!(
                    got.version >= version,
                    "{key}: read {got:?} after writing v{version}"
                );
                if got.version == version {
                    assert_eq!(got.value, k(&value));
                }
                mine.push((key, version, value));
            }
            mine
        }));
    }
    let mut last: std::collections::HashMap<String, (u64, String)> = Default::default();
    let mut versions = std::collections::HashSet::new();
    for t in tasks {
        for (key, version, value) in t.await.unwrap() {
            assert!(
                versions.insert((key.clone(), version)),
                "{key} v{version} twice"
            );
            let e = last.entry(key).or_insert((0, String::new()));
            if version > e.0 {
                *e = (version, value);
            }
        }
    }
    assert_eq!(last.len(), 40);
    // The stored value of each key is its highest-versioned write.
    for (key, (version, value)) in last {
        let got = plain.get(k(&key)).await.unwrap().unwrap();
        assert_eq!((got.version, got.value), (version, k(&value)), "{key}");
    }
}

/// Concurrent compare-and-swaps are coalesced into BatchCompareAndSwap
/// RPCs: each call still gets its own outcome, checked and applied in
/// order (a CAS sees the writes of those before it in the batch). Raw
/// batches show the order; bad operations in a batch are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_compare_and_swaps_answer_each_call() {
    let status = format!("127.0.0.1:{}", flaredb_tests::free_port());
    let cluster = TestCluster::start_with(1, &[], &["--status-addr".into(), status.clone()]);
    let c = cluster.client().await;
    // 32 calls create the same key at once: exactly one wins, and every
    // other sees the winner's value and version.
    let tasks: Vec<_> = (0..32u32)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c
                    .compare_and_swap(k("once"), CasExpect::Absent, Some(k(&format!("t{t}"))))
                    .await
                    .unwrap();
                (t, r)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.succeeded).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (w, won) = winners[0];
    let version = won.new_version.expect("the winner's version");
    for (_, r) in results.iter().filter(|(_, r)| !r.succeeded) {
        let cur = r.current.as_ref().expect("the key existed for the losers");
        assert_eq!(
            (cur.value.clone(), cur.version),
            (k(&format!("t{w}")), version)
        );
    }
    // 16 incrementers on 4 counters: the successes add up to each value.
    for i in 0..4 {
        c.put(k(&format!("n{i}")), k("0")).await.unwrap();
    }
    let tasks: Vec<_> = (0..16u32)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                let key = k(&format!("n{}", t % 4));
                let mut won = 0u64;
                for _ in 0..30 {
                    let cur = c.get(key.clone()).await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(cur.value).unwrap().parse().unwrap();
                    let r = c
                        .compare_and_swap(
                            key.clone(),
                            CasExpect::Version(cur.version),
                            Some((n + 1).to_string().into_bytes()),
                        )
                        .await
                        .unwrap();
                    won += u64::from(r.succeeded);
                }
                (t % 4, won)
            })
        })
        .collect();
    let mut sums = [0u64; 4];
    for t in tasks {
        let (i, won) = t.await.unwrap();
        sums[i as usize] += won;
    }
    for (i, sum) in sums.iter().enumerate() {
        let v = c.get(k(&format!("n{i}"))).await.unwrap().unwrap();
        assert_eq!(String::from_utf8(v.value).unwrap(), sum.to_string(), "n{i}");
    }
    // The calls went out in fewer RPCs than there were calls.
    let (code, text) = flaredb_tests::http_get(&status, "/metrics").unwrap();
    assert_eq!(code, 200);
    let rpcs = |method: &str| {
        flaredb_tests::metric(
            &text,
            "flaredb_grpc_requests_total",
            &format!(r#"code="OK",method="/flaredb.v1.Kv/{method}""#),
        )
        .unwrap_or(0.0)
    };
    let batches = rpcs("BatchCompareAndSwap");
    assert!(
        batches >= 1.0 && batches + rpcs("CompareAndSwap") < (32 + 16 * 30) as f64,
        "{batches} batches for {} calls",
        32 + 16 * 30
    );

    // A raw batch: each operation sees the ones before it.
    let route = c.regions().await.unwrap().remove(0);
    let region = route.region.unwrap();
    let context = Some(Context {
        region_id: region.id,
        region_epoch: region.epoch,
        stale_read: false,
    });
    let op = |key: &str, expected: cas_condition::Condition, value: &str| CasOp {
        key: k(key),
        expected: Some(CasCondition {
            condition: Some(expected),
        }),
        new_value: k(value),
        delete: false,
    };
    let absent = || cas_condition::Condition::Absent(Absent {});
    let mut kv = KvClient::connect(format!("http://{}", route.leader.unwrap().address))
        .await
        .unwrap();
    let r = kv
        .batch_compare_and_swap(BatchCompareAndSwapRequest {
            context,
            ops: vec![
                op("raw", absent(), "a"),
                op("raw", cas_condition::Condition::Value(k("a")), "b"),
                op("raw", absent(), "c"),
            ],
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.region_error.is_none(), "{r:?}");
    let won: Vec<bool> = r.outcomes.iter().map(|o| o.succeeded).collect();
    assert_eq!(won, vec![true, true, false]);
    assert_eq!(r.outcomes[2].current_value, k("b"));
    assert_eq!(r.outcomes[2].current_version, r.outcomes[1].new_version);
    assert_eq!(c.get(k("raw")).await.unwrap().unwrap().value, k("b"));
    // One bad operation refuses the whole batch, with what was wrong.
    for bad in [
        op("", absent(), "x"),
        CasOp {
            expected: None,
            ..op("raw2", absent(), "x")
        },
    ] {
        let e = kv
            .batch_compare_and_swap(BatchCompareAndSwapRequest {
                context,
                ops: vec![op("raw2", absent(), "x"), bad],
                request_id: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    assert!(c.get(k("raw2")).await.unwrap().is_none());
}
