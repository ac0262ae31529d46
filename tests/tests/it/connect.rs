//! What a client sees while a cluster starts, and when it is given the PDs
//! of two different clusters.

use std::process::{Command, Stdio};
use std::time::Duration;

use flaredb_tests::{binary, TestCluster};
use rdb_client::{Client, ClientConfig, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_made_before_the_first_store_joins_wait_for_bootstrap() {
    let mut cluster = TestCluster::start(0);
    let c = cluster.client().await;
    assert!(c.stores().await.unwrap().is_empty());
    let put = {
        let c = c.clone();
        tokio::spawn(async move { c.put(b"early".to_vec(), b"bird".to_vec()).await })
    };
    // The CLI too: started before the store, it waits and succeeds.
    let cli = Command::new(binary("rdb-cli"))
        .args(["--pd", &cluster.pd.addr, "put", "cli-early", "v"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!put.is_finished(), "the put waited for the cluster");
    cluster.add_store();
    let version = put
        .await
        .unwrap()
        .expect("the put succeeds once bootstrapped");
    assert!(version > 0);
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        c.get(b"cli-early".to_vec()).await.unwrap().unwrap().value,
        b"v"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_store_the_wait_ends_with_a_clear_error() {
    let cluster = TestCluster::start(0);
    let config = ClientConfig {
        retry_deadline: Duration::from_millis(800),
        ..ClientConfig::default()
    };
    let c = Client::connect_with([cluster.pd.addr.clone()], config)
        .await
        .unwrap();
    match c.get(b"k".to_vec()).await {
        Err(e @ Error::NotBootstrapped { .. }) => {
            assert!(e.to_string().contains("not bootstrapped"), "{e}")
        }
        other => panic!("expected NotBootstrapped, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pd_of_another_cluster_is_refused() {
    let mut one = TestCluster::start(1);
    let other = TestCluster::start(1);
    assert_ne!(one.pd.id, other.pd.id, "two clusters, two ids");
    let c = Client::connect_with(
        [one.pd.addr.clone(), other.pd.addr.clone()],
        ClientConfig {
            retry_deadline: Duration::from_secs(3),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let before = c.tso().await.unwrap();
    c.put(b"a".to_vec(), b"1".to_vec()).await.unwrap();
    one.pd.kill9();
    // The client fails over to the second endpoint, finds another cluster
    // and refuses it: no timestamps from a second oracle, no routes from a
    // second region map.
    match c.stores().await {
        Err(Error::ClusterMismatch { got, want, .. }) => {
            assert_eq!((got, want), (other.pd.id, one.pd.id));
        }
        other => panic!("expected ClusterMismatch, got {other:?}"),
    }
    match c.tso().await {
        Ok(ts) => panic!("took timestamp {ts} (after {before}) from another cluster"),
        Err(e) => assert!(e.to_string().contains("cluster"), "{e}"),
    }
}
