//! Writes are applied once even when the client has to send them again: a
//! proxy in front of the store lets each request through and drops the
//! answer (the connection is cut after sending), the client re-sends the same
//! request with the same request id, and the store answers with what it
//! recorded for the first copy. Without the store's de-duplication each of
//! these tests fails: the CAS would fail on its own first write, the delete
//! would say the key did not exist, the put would come back with a second
//! version.

use std::time::Duration;

use flaredb_tests::{Cut, CutProxy, TestCluster};
use rdb_client::{CasExpect, Client, ClientConfig, Error};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::{Context, GetRequest};

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A cluster of one store reached only through a [`CutProxy`].
struct Setup {
    cluster: TestCluster,
    proxy: CutProxy,
}

impl Setup {
    fn start() -> Setup {
        let proxy = CutProxy::start("");
        let mut cluster =
            TestCluster::start_with(0, &[], &["--advertise-addr".into(), proxy.addr.clone()]);
        let store = cluster.add_store().addr.clone();
        proxy.set_target(&store);
        Setup { cluster, proxy }
    }

    /// A client that keeps re-sending long enough for a store restart.
    async fn client(&self, coalesce: bool) -> Client {
        let config = ClientConfig {
            coalesce,
            max_attempts: 200,
            retry_deadline: Duration::from_secs(30),
            max_backoff: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let c = Client::connect_with([self.cluster.pd.addr.clone()], config)
            .await
            .expect("connect");
        // Open the store connection, so that the next answer is the write's.
        c.get(k("warm-up")).await.expect("warm-up read");
        c
    }

    /// Reads `key` straight from the store, around the proxy: (value, version).
    async fn raw_get(&self, client: &Client, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        let route = client
            .regions()
            .await
            .expect("regions")
            .into_iter()
            .find(|r| r.region.as_ref().is_some_and(|g| g.contains(key)))
            .expect("a region holds the key");
        let region = route.region.expect("region");
        let mut kv = KvClient::connect(format!("http://{}", self.cluster.stores[0].addr))
            .await
            .expect("connect to the store");
        let r = kv
            .get(GetRequest {
                context: Some(Context {
                    region_id: region.id,
                    region_epoch: region.epoch,
                    stale_read: false,
                }),
                key: key.to_vec(),
            })
            .await
            .expect("raw get")
            .into_inner();
        r.found.then_some((r.value, r.version))
    }

    /// Polls the store (around the proxy) until `done` holds for `key`.
    async fn until_applied(
        &self,
        client: &Client,
        key: &[u8],
        done: impl Fn(Option<&(Vec<u8>, u64)>) -> bool,
    ) -> Option<(Vec<u8>, u64)> {
        for _ in 0..200 {
            let got = self.raw_get(client, key).await;
            if done(got.as_ref()) {
                // Let the answer of the copy that was applied reach the
                // proxy (and be dropped) before the caller lets answers
                // through again: the answer the client then gets is a
                // later copy's.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the write never reached the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_whose_answer_was_lost_is_applied_once() {
    let s = Setup::start();
    // Coalesced (a BatchCompareAndSwap of one) and alone (CompareAndSwap).
    for coalesce in [true, false] {
        let c = s.client(coalesce).await;
        let key = format!("cas-{coalesce}");
        s.proxy.set(Cut::All);
        let task = {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                c.compare_and_swap(k(&key), CasExpect::Absent, Some(k("first")))
                    .await
            })
        };
        let (_, version) = s
            .until_applied(&c, key.as_bytes(), |v| v.is_some())
            .await
            .unwrap();
        s.proxy.set(Cut::Pass);
        let r = task
            .await
            .unwrap()
            .expect("the re-sent CAS gets the first copy's answer");
        assert!(
            r.succeeded,
            "coalesce={coalesce}: the CAS failed against its own first copy: {r:?}"
        );
        assert_eq!(r.new_version, Some(version));
        assert_eq!(r.current, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_whose_answers_were_lost_keep_their_first_version() {
    let s = Setup::start();
    for coalesce in [true, false] {
        let c = s.client(coalesce).await;
        let key = format!("put-{coalesce}");
        s.proxy.set(Cut::All);
        let task = {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { c.put(k(&key), k("v")).await })
        };
        let (_, version) = s
            .until_applied(&c, key.as_bytes(), |v| v.is_some())
            .await
            .unwrap();
        s.proxy.set(Cut::Pass);
        let got = task.await.unwrap().expect("the re-sent put is answered");
        assert_eq!(
            got, version,
            "coalesce={coalesce}: the put was applied twice"
        );
        assert_eq!(s.raw_get(&c, key.as_bytes()).await.unwrap().1, version);

        // A batch put of three keys, the same way.
        let keys: Vec<String> = (0..3).map(|i| format!("batch-{coalesce}-{i}")).collect();
        s.proxy.set(Cut::All);
        let task = {
            let c = c.clone();
            let pairs = keys.iter().map(|key| (k(key), k("b"))).collect();
            tokio::spawn(async move { c.batch_put(pairs).await })
        };
        s.until_applied(&c, keys[2].as_bytes(), |v| v.is_some())
            .await;
        s.proxy.set(Cut::Pass);
        let versions = task.await.unwrap().expect("the re-sent batch is answered");
        for (key, v) in keys.iter().zip(versions) {
            assert_eq!(s.raw_get(&c, key.as_bytes()).await.unwrap().1, v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_whose_answers_were_lost_report_what_they_deleted() {
    let s = Setup::start();
    let c = s.client(true).await;
    let keys: Vec<Vec<u8>> = (0..5).map(|i| format!("d{i}").into_bytes()).collect();
    c.batch_put(keys.iter().map(|key| (key.clone(), k("x"))).collect())
        .await
        .unwrap();

    s.proxy.set(Cut::All);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.delete(k("d0")).await })
    };
    s.until_applied(&c, b"d0", |v| v.is_none()).await;
    s.proxy.set(Cut::Pass);
    assert!(
        task.await.unwrap().unwrap(),
        "delete re-sent: the key existed"
    );

    s.proxy.set(Cut::All);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.batch_delete(vec![k("d1"), k("d2")]).await })
    };
    s.until_applied(&c, b"d2", |v| v.is_none()).await;
    s.proxy.set(Cut::Pass);
    assert_eq!(task.await.unwrap().unwrap(), 2);

    s.proxy.set(Cut::All);
    let task = {
        let c = c.clone();
        tokio::spawn(async move { c.delete_range(k("d3"), k("d9")).await })
    };
    s.until_applied(&c, b"d4", |v| v.is_none()).await;
    s.proxy.set(Cut::Pass);
    assert_eq!(task.await.unwrap().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_recorded_before_kill_9_is_not_applied_again_after_restart() {
    let mut s = Setup::start();
    let c = s.client(false).await;
    s.proxy.set(Cut::All);
    let task = {
        let c = c.clone();
        tokio::spawn(async move {
            c.compare_and_swap(k("durable"), CasExpect::Absent, Some(k("1")))
                .await
        })
    };
    let (_, version) = s
        .until_applied(&c, b"durable", |v| v.is_some())
        .await
        .unwrap();
    s.cluster.stores[0].restart();
    s.proxy.set_target(&s.cluster.stores[0].addr);
    s.proxy.set(Cut::Pass);
    let r = task.await.unwrap().expect("answered after the restart");
    assert!(r.succeeded, "applied twice across kill -9: {r:?}");
    assert_eq!(r.new_version, Some(version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_whose_answer_never_comes_is_undetermined() {
    let s = Setup::start();
    let config = ClientConfig {
        retry_deadline: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let c = Client::connect_with([s.cluster.pd.addr.clone()], config)
        .await
        .unwrap();
    c.get(k("warm-up")).await.unwrap();
    s.proxy.set(Cut::All);
    for coalesce_put in [true, false] {
        let r = if coalesce_put {
            c.put(k("lost"), k("v")).await.map(|_| ())
        } else {
            c.compare_and_swap(k("lost2"), CasExpect::Absent, Some(k("v")))
                .await
                .map(|_| ())
        };
        match r {
            Err(Error::Undetermined { message, .. }) => assert!(!message.is_empty()),
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
    }
    s.proxy.set(Cut::Pass);
    // Applied once or not at all (the copies sent on fresh connections may
    // never have reached the store): never anything else.
    for key in ["lost", "lost2"] {
        if let Some(v) = c.get(k(key)).await.unwrap() {
            assert_eq!(v.value, b"v");
        }
    }
}
