//! TSO: strictly increasing across concurrent clients and across a PD restart.

use std::collections::HashSet;

use flaredb_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tso_strictly_increasing_across_clients_and_pd_restart() {
    let mut cluster = TestCluster::start(1);
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let client = cluster.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for j in 0..200u32 {
                if (i + j) % 5 == 0 {
                    let r = client.tso_batch(1 + j % 7).await.unwrap();
                    seen.extend(r);
                } else {
                    seen.push(client.tso().await.unwrap());
                }
            }
            seen
        }));
    }
    let mut all = HashSet::new();
    let mut max = 0;
    for t in tasks {
        let seen = t.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "each caller sees strictly increasing timestamps"
        );
        max = max.max(*seen.last().unwrap());
        for ts in seen {
            assert!(all.insert(ts), "timestamp {ts} handed out twice");
        }
    }
    assert!(all.len() > 1600);

    // Many tasks on one client share its stream and still never repeat.
    let shared = cluster.client().await;
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let c = shared.clone();
            tokio::spawn(async move { c.tso().await.unwrap() })
        })
        .collect();
    for h in handles {
        let ts = h.await.unwrap();
        assert!(ts > max && all.insert(ts));
    }
    let max = *all.iter().max().unwrap();

    // kill -9 the PD and start it again on the same address: timestamps keep rising,
    // and the clients reconnect by themselves.
    cluster.pd.kill9();
    cluster.pd.restart();
    let after = shared.tso().await.unwrap();
    assert!(after > max, "after restart {after} > {max}");
    let fresh = cluster.client().await.tso().await.unwrap();
    assert!(fresh > after);
}
