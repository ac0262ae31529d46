//! Configurable caps against real daemons: requests past a cap get
//! INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming the cap, the daemon keeps
//! serving and loses nothing; scans page under a small scan cap; HTTP/2
//! stream caps hold further requests back instead of failing them.

use std::time::Duration;

use flaredb_tests::TestCluster;
use rdb_client::Error;
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::pd_client::PdClient;
use rdb_proto::v1::{
    BatchPutRequest, Context, GetAllStoresRequest, KvPair, PutRequest, ScanRequest, TsoRequest,
};

fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
}

const MESSAGE_CAP: usize = 8 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_a_cap_are_refused_naming_it_and_nothing_is_lost() {
    let c = TestCluster::start_with(
        1,
        &[],
        &flags(&[
            ("--max-key-size", "16"),
            ("--max-value-size", "64"),
            ("--max-batch-keys", "300"),
            ("--max-scan-limit", "5"),
            ("--max-message-size", &MESSAGE_CAP.to_string()),
        ]),
    );
    let client = c.client().await;
    for i in 0..20u32 {
        client
            .put(format!("key{i:02}").into_bytes(), vec![b'v'; 64])
            .await
            .unwrap();
    }

    // Key and value caps, through the SDK (whose own API limits are larger).
    let e = client.put(vec![b'k'; 17], b"v".to_vec()).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("limit of 16 bytes") && m.contains("max-key-size")),
        "{e}"
    );
    let e = client.put(b"ok".to_vec(), vec![0; 65]).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("limit of 64 bytes") && m.contains("max-value-size")),
        "{e}"
    );
    // Batch cap.
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..301u32)
        .map(|i| (format!("b{i:03}").into_bytes(), b"x".to_vec()))
        .collect();
    let e = client.batch_put(pairs.clone()).await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("limit of 300") && m.contains("max-batch-keys")),
        "{e}"
    );
    client.batch_put(pairs[..300].to_vec()).await.unwrap();

    // One over-size call among concurrent coalesced puts: only it fails.
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let value = if i == 7 { vec![0; 65] } else { vec![b'c'; 8] };
            (i, client.put(format!("c{i:02}").into_bytes(), value).await)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i == 7 {
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
        } else {
            assert!(r.is_ok(), "call {i} failed with another's bad value: {r:?}");
        }
    }

    // An over-size message: RESOURCE_EXHAUSTED with the limit, straight to the store.
    let route = client.regions().await.unwrap()[0].clone();
    let region = route.region.clone().unwrap();
    let context = Some(Context {
        region_id: region.id,
        region_epoch: region.epoch,
        stale_read: false,
    });
    let mut kv = KvClient::connect(format!("http://{}", c.stores[0].addr))
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let big: Vec<KvPair> = (0..9u32)
        .map(|i| KvPair {
            key: format!("big{i}").into_bytes(),
            value: vec![1; 1024 * 1024],
            version: 0,
        })
        .collect();
    let s = kv
        .batch_put(BatchPutRequest {
            context,
            pairs: big,
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains(&MESSAGE_CAP.to_string()), "{s:?}");
    // A value over the cap, sent raw: INVALID_ARGUMENT, nothing written.
    let s = kv
        .put(PutRequest {
            context,
            key: b"raw".to_vec(),
            value: vec![0; 65],
            request_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(client.get(b"raw".to_vec()).await.unwrap().is_none());

    // Scans: one answer is at most 5 pairs with has_more; the SDK pages.
    let page = kv
        .scan(ScanRequest {
            context,
            start_key: b"key".to_vec(),
            end_key: b"kez".to_vec(),
            limit: 100,
            reverse: false,
            keys_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.pairs.len(), 5);
    assert!(page.has_more);
    let all = client
        .scan(b"key".to_vec(), b"kez".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(all.len(), 20, "paged scan lost keys");
    let some = client
        .scan(b"key".to_vec(), b"kez".to_vec(), 12)
        .await
        .unwrap();
    assert_eq!(some.len(), 12);
    assert_eq!(some[11].key, b"key11");

    // Still serving, nothing lost.
    for i in 0..20u32 {
        let v = client
            .get(format!("key{i:02}").into_bytes())
            .await
            .unwrap()
            .expect("key kept");
        assert_eq!(v.value, vec![b'v'; 64]);
    }
    assert!(c.stores[0].addr.contains("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cap_holds_extra_requests_until_a_stream_ends() {
    let c = TestCluster::start_with(0, &flags(&[("--max-concurrent-streams", "2")]), &[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.pd.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut pd = PdClient::new(channel);
    // Two TSO streams held open on the one connection.
    let mut senders = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(TsoRequest { count: 1 }).await.unwrap();
        let mut s = pd
            .tso(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
        senders.push(tx);
        streams.push(s);
    }
    // A third request on the same connection waits for a free stream...
    let mut third = pd.clone();
    let mut call = tokio::spawn(async move { third.get_all_stores(GetAllStoresRequest {}).await });
    let early = tokio::time::timeout(Duration::from_millis(500), &mut call).await;
    assert!(early.is_err(), "answered past the stream cap: {early:?}");
    // ...and is answered once one ends.
    drop(senders.pop());
    drop(streams.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("answered after a stream ended")
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
}
