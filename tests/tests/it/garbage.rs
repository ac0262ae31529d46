//! Random and truncated protobuf messages sent straight to the daemons' gRPC
//! methods: every call is answered (a response or an error status), the
//! daemons keep serving, and data written before is untouched.

use bytes::{Buf, BufMut};
use flaredb_tests::TestCluster;
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends and receives raw message bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn call(ch: &Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        Raw,
    )
    .await
    .map(|r| r.into_inner())
}

/// Methods that cannot change cluster metadata whatever they decode to
/// (random bytes could decode into a valid PutStore or SplitRegion).
const PD_METHODS: &[&str] = &[
    "/flaredb.v1.Pd/IsBootstrapped",
    "/flaredb.v1.Pd/GetStore",
    "/flaredb.v1.Pd/GetAllStores",
    "/flaredb.v1.Pd/GetRegion",
    "/flaredb.v1.Pd/GetRegionById",
    "/flaredb.v1.Pd/ScanRegions",
];

/// Every Kv method: a random message names a region id and epoch the store
/// does not have (or none), so it can only be refused or read.
const KV_METHODS: &[&str] = &[
    "/flaredb.v1.Kv/Get",
    "/flaredb.v1.Kv/BatchGet",
    "/flaredb.v1.Kv/Put",
    "/flaredb.v1.Kv/BatchPut",
    "/flaredb.v1.Kv/Delete",
    "/flaredb.v1.Kv/BatchDelete",
    "/flaredb.v1.Kv/Scan",
    "/flaredb.v1.Kv/DeleteRange",
    "/flaredb.v1.Kv/CompareAndSwap",
];

fn check_answer(path: &str, r: &Result<Vec<u8>, Status>) {
    if let Err(s) = r {
        assert!(
            !matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "{path}: the daemon did not answer: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_and_truncated_messages_get_errors_and_daemons_keep_serving() {
    let cluster = TestCluster::start(1);
    let client = cluster.client().await;
    let kept = client
        .put(b"kept".to_vec(), b"safe".to_vec())
        .await
        .unwrap();
    let pd = Channel::from_shared(format!("http://{}", cluster.pd.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let store = Channel::from_shared(format!("http://{}", cluster.stores[0].addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(0xF1A4E);
    let mut refused = 0;
    for (ch, methods) in [(&pd, PD_METHODS), (&store, KV_METHODS)] {
        for &path in methods {
            // Random bytes of random length, including 0 and well past a header.
            for i in 0..60 {
                let len = if i == 0 { 0 } else { rng.random_range(1..600) };
                let mut body = vec![0u8; len];
                rng.fill(&mut body[..]);
                let r = call(ch, path, body).await;
                check_answer(path, &r);
                refused += usize::from(r.is_err());
            }
        }
    }
    // A real, well-formed Put cut at every length.
    let routes = client.regions().await.unwrap();
    let region = routes[0].region.clone().unwrap();
    let put = rdb_proto::v1::PutRequest {
        context: Some(rdb_proto::v1::Context {
            region_id: region.id,
            region_epoch: region.epoch,
            stale_read: false,
        }),
        key: b"kept".to_vec(),
        value: vec![b'x'; 40],
        request_id: None,
    }
    .encode_to_vec();
    for cut in 0..put.len() {
        let path = "/flaredb.v1.Kv/Put";
        let r = call(&store, path, put[..cut].to_vec()).await;
        check_answer(path, &r);
        refused += usize::from(r.is_err());
        // Still serving after each one.
        if cut % 16 == 0 {
            assert!(client.get(b"kept".to_vec()).await.is_ok());
        }
    }
    assert!(
        refused > 100,
        "only {refused} refusals: the garbage was not garbage"
    );

    // Both daemons still serve, and what was written before is intact unless
    // a truncated Put happened to decode as a shorter valid Put of "kept"
    // (then its value is a prefix of the 40 x's, never anything else).
    let v = client.put(b"after".to_vec(), b"1".to_vec()).await.unwrap();
    assert!(v > kept);
    let got = client.get(b"kept".to_vec()).await.unwrap().unwrap();
    assert!(
        got.value == b"safe" || got.value.iter().all(|&b| b == b'x'),
        "kept is now {:?}",
        got.value
    );
    assert!(client.tso().await.is_ok());
    assert_eq!(client.stores().await.unwrap().len(), 1);
}
