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

/// Many callers on one client keep several requests in flight on the TSO
/// stream; a PD kill -9 and restart in the middle may fail some calls
/// (PD unavailable) but never hands out a timestamp twice or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_callers_across_pd_restart_never_repeat() {
    let mut cluster = TestCluster::start(1);
    let client = cluster.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..128 {
        let (c, stop) = (client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut seen, mut errors) = (Vec::new(), 0u32);
            // Bounded by count; the test also stops it once PD is back.
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match c.tso().await {
                    Ok(ts) => seen.push(ts),
                    Err(e) => {
                        assert!(e.is_unavailable(), "unexpected TSO error: {e}");
                        errors += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
            }
            (seen, errors)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cluster.pd.kill9();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    cluster.pd.restart();
    // Every caller gets timestamps again after the restart.
    let after_restart = client.tso().await.expect("TSO after PD restart");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = HashSet::new();
    let mut later = 0;
    for t in tasks {
        let (seen, _errors) = t.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "each caller sees strictly increasing timestamps"
        );
        later += seen.iter().filter(|&&ts| ts > after_restart).count();
        for ts in seen {
            assert!(all.insert(ts), "timestamp {ts} handed out twice");
        }
    }
    assert!(all.len() > 1000, "only {} timestamps", all.len());
    assert!(later > 0, "no caller got a timestamp after the restart");
}

/// On one raw TSO stream, a request with a bad count (0, or over the
/// maximum) is answered with its own error, and the requests after it on
/// the same stream are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tso_request_gets_its_error_and_the_stream_goes_on() {
    use rdb_proto::limits::MAX_TSO_COUNT;
    use rdb_proto::v1::pd_client::PdClient;
    use rdb_proto::v1::TsoRequest;

    let cluster = TestCluster::start(0);
    let mut pd = PdClient::connect(format!("http://{}", cluster.pd.addr))
        .await
        .unwrap();
    let counts = [1, 0, 5, MAX_TSO_COUNT + 1, 2];
    let requests = tokio_stream::iter(counts.map(|count| TsoRequest { count }));
    let mut answers = pd.tso(requests).await.unwrap().into_inner();
    let mut last = 0;
    for count in counts {
        let a = answers
            .message()
            .await
            .unwrap_or_else(|s| panic!("stream failed after count {count}: {s}"))
            .unwrap_or_else(|| panic!("stream ended before the answer to count {count}"));
        if count == 0 || count > MAX_TSO_COUNT {
            let e = a.error.expect("a bad count is refused");
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
            assert!(e.message.contains("count"), "{}", e.message);
            assert_eq!((a.first_timestamp, a.count), (0, 0));
        } else {
            assert!(a.error.is_none(), "{:?}", a.error);
            assert_eq!(a.count, count);
            assert!(a.first_timestamp > last);
            last = a.first_timestamp + u64::from(count) - 1;
        }
    }
    assert!(
        answers.message().await.unwrap().is_none(),
        "stream ends with the client's"
    );
}
