//! Prometheus metrics on `--status-addr` and one tracing span per request,
//! against real daemons.

use std::time::Duration;

use flaredb_tests::{free_port, http_get, metric, TestCluster};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::{Context, GetRequest, RegionEpoch};

fn scrape(addr: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_tso_heartbeats_and_storage() {
    let pd_status = format!("127.0.0.1:{}", free_port());
    let store_status = format!("127.0.0.1:{}", free_port());
    let c = TestCluster::start_with(
        1,
        &["--status-addr".into(), pd_status.clone()],
        &["--status-addr".into(), store_status.clone()],
    );
    let client = c.client().await;
    for i in 0..20u32 {
        client
            .put(format!("k{i}").into_bytes(), vec![7; 100])
            .await
            .unwrap();
    }
    assert!(client.get(b"k1".to_vec()).await.unwrap().is_some());
    client.tso_batch(10).await.unwrap();

    // An empty key (InvalidArgument) and a stale epoch (a region error),
    // sent straight to the store.
    let mut kv = KvClient::connect(format!("http://{}", c.stores[0].addr))
        .await
        .unwrap();
    let bad = kv
        .get(GetRequest {
            context: None,
            key: vec![],
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    let r = client.regions().await.unwrap()[0].region.clone().unwrap();
    let stale = kv
        .get(GetRequest {
            context: Some(Context {
                region_id: r.id,
                region_epoch: Some(RegionEpoch {
                    version: r.epoch.as_ref().map_or(0, |e| e.version) + 5,
                    conf_ver: 0,
                }),
                stale_read: false,
            }),
            key: b"k1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stale.region_error.is_some());

    let store = scrape(&store_status);
    let ok_puts = metric(
        &store,
        "flaredb_grpc_requests_total",
        r#"code="OK",method="/flaredb.v1.Kv/BatchPut""#,
    )
    .unwrap_or(0.0)
        + metric(
            &store,
            "flaredb_grpc_requests_total",
            r#"code="OK",method="/flaredb.v1.Kv/Put""#,
        )
        .unwrap_or(0.0);
    assert!(ok_puts >= 1.0, "no successful puts counted:\n{store}");
    assert_eq!(
        metric(
            &store,
            "flaredb_grpc_requests_total",
            r#"code="InvalidArgument",method="/flaredb.v1.Kv/Get""#
        ),
        Some(1.0),
        "{store}"
    );
    assert!(
        metric(
            &store,
            "flaredb_region_errors_total",
            r#"kind="epoch_not_match""#
        )
        .is_some_and(|v| v >= 1.0),
        "{store}"
    );
    assert!(
        store.contains(
            r#"flaredb_grpc_request_duration_seconds_bucket{method="/flaredb.v1.Kv/Get""#
        ),
        "{store}"
    );
    assert_eq!(metric(&store, "flaredb_regions_served", ""), Some(1.0));
    for p in [
        "estimate-num-keys",
        "cur-size-all-mem-tables",
        "estimate-pending-compaction-bytes",
        "num-running-compactions",
    ] {
        assert!(
            metric(&store, "flaredb_rocksdb", &format!(r#"property="{p}""#)).is_some(),
            "missing RocksDB property {p}:\n{store}"
        );
    }
    assert!(metric(
        &store,
        "flaredb_rocksdb",
        r#"property="cur-size-all-mem-tables""#
    )
    .is_some_and(|v| v > 0.0));

    // Heartbeats every 200 ms: wait for a few.
    let pd = flaredb_tests::eventually(50, Duration::from_millis(200), || async {
        let text = scrape(&pd_status);
        metric(&text, "flaredb_heartbeats_total", r#"result="ok""#)
            .is_some_and(|v| v >= 2.0)
            .then_some(text)
    })
    .await
    .expect("PD counts heartbeats");
    assert!(metric(&pd, "flaredb_tso_timestamps_total", "").is_some_and(|v| v >= 10.0));
    assert!(metric(&pd, "flaredb_tso_requests_total", "").is_some_and(|v| v >= 1.0));
    assert_eq!(metric(&pd, "flaredb_regions", ""), Some(1.0));
    assert_eq!(metric(&pd, "flaredb_stores", r#"state="up""#), Some(1.0));
    // A single PD is the leader of its own group, and serves.
    assert_eq!(metric(&pd, "flaredb_pd_leader", ""), Some(1.0));
    assert_eq!(
        metric(&pd, "flaredb_pd_members", r#"role="voter""#),
        Some(1.0)
    );
    assert_eq!(
        metric(&pd, "flaredb_pd_members", r#"role="learner""#),
        Some(0.0)
    );
    assert!(metric(&pd, "flaredb_pd_term", "").is_some_and(|t| t >= 1.0));
    assert!(metric(&pd, "flaredb_pd_applied_index", "").is_some_and(|i| i >= 1.0));
    assert!(
        metric(
            &pd,
            "flaredb_grpc_requests_total",
            r#"code="OK",method="/flaredb.v1.Pd/StoreHeartbeat""#
        )
        .is_some_and(|v| v >= 2.0),
        "{pd}"
    );
    let store_side = scrape(&store_status);
    assert!(
        metric(&store_side, "flaredb_heartbeats_total", r#"result="ok""#).is_some_and(|v| v >= 2.0),
        "{store_side}"
    );
    // Unknown paths are not labels.
    assert_eq!(http_get(&store_status, "/nope").unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_a_span_with_its_method_and_region_id() {
    let root = tempfile::tempdir().unwrap();
    let pd = flaredb_tests::Daemon::start(
        flaredb_tests::Kind::Pd,
        &root.path().join("pd"),
        "127.0.0.1:0",
        &[],
    );
    let store_dir = root.path().join("s1");
    let _store = flaredb_tests::Daemon::start_env(
        flaredb_tests::Kind::Server,
        &store_dir,
        "127.0.0.1:0",
        &[
            "--pd".into(),
            pd.addr.clone(),
            "--log-format".into(),
            "json".into(),
        ],
        &[("RUST_LOG".into(), "info,rdb_daemon=debug".into())],
    );
    let client = rdb_client::Client::connect([pd.addr.clone()])
        .await
        .unwrap();
    client.put(b"traced".to_vec(), b"v".to_vec()).await.unwrap();
    let region_id = client.regions().await.unwrap()[0]
        .region
        .as_ref()
        .unwrap()
        .id;
    // The log line is written when the request ends; give it a moment.
    let found = flaredb_tests::eventually(50, Duration::from_millis(100), || async {
        let log = std::fs::read_to_string(store_dir.with_extension("log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["fields"]["message"] == "rpc"
                    && v["span"]["name"] == "rpc"
                    && v["span"]["method"]
                        .as_str()
                        .is_some_and(|m| m.ends_with("Put"))
                    && v["span"]["region_id"].as_u64() == Some(region_id)
                    && v["fields"]["code"] == "OK"
            })
    })
    .await;
    assert!(
        found.is_some(),
        "no rpc line with the region id {region_id} in the store's log"
    );
}
