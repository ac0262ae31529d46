//! Bootstrap whose outcome the store does not learn: PD applies it and the
//! answer is lost, or the store dies between its own record and PD's. The
//! store settles with PD instead of deleting its first region, and the
//! cluster serves afterwards. Faults come from failpoints (`FAILPOINTS`; the
//! daemons are built with feature `failpoints`).

use flaredb_tests::{Daemon, Kind, TestCluster};

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Puts and reads back a few keys, and checks PD maps the whole key space
/// to `store_id` with one region.
async fn serves(cluster: &TestCluster, store_id: u64) {
    let c = cluster.client().await;
    for key in ["a", "m", "z"] {
        c.put(k(key), k("v")).await.unwrap();
        assert_eq!(c.get(k(key)).await.unwrap().unwrap().value, b"v");
    }
    let routes = c.regions().await.unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0].region.as_ref().unwrap().store_id, store_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_bootstrap_answer_is_settled_with_pd_and_the_region_kept() {
    // Every Bootstrap is applied by PD, and every answer is lost.
    let mut cluster = TestCluster::start_with(0, &[], &[]);
    cluster.pd.env = vec![("FAILPOINTS".into(), "bootstrap-answer-lost=return".into())];
    cluster.pd.restart();
    // The store learns from PD that its region was recorded, and serves it.
    cluster.add_store();
    let store_id = cluster.stores[0].id;
    serves(&cluster, store_id).await;
    // Also after a restart of the store.
    cluster.stores[0].restart();
    serves(&cluster, store_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_dies_mid_bootstrap_finishes_it_when_restarted() {
    let cluster = TestCluster::start_with(0, &[], &[]);
    let dir = cluster.root.path().join("store1");
    let flags = vec!["--pd".to_string(), cluster.pd.addr.clone()];
    // The store records its first region, then dies before telling PD.
    let crashed = Daemon::try_start_env(
        Kind::Server,
        &dir,
        "127.0.0.1:0",
        &flags,
        &[(
            "FAILPOINTS".into(),
            "bootstrap-crash-before-pd=return".into(),
        )],
    );
    assert!(crashed.is_err(), "the store should have died mid-bootstrap");
    let log = std::fs::read_to_string(dir.with_extension("log")).unwrap();
    assert!(log.contains("failpoint bootstrap-crash-before-pd"), "{log}");
    // Restarted without the failpoint, it resumes the bootstrap.
    let store = Daemon::start(Kind::Server, &dir, "127.0.0.1:0", &flags);
    serves(&cluster, store.id).await;
}
