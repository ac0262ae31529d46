//! The standard gRPC health service and server reflection on every daemon,
//! as generic tools (grpc_health_probe, grpcurl) use them.

use flaredb_tests::TestCluster;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect")
}

async fn status(h: &mut HealthClient<Channel>, service: &str) -> Result<i32, tonic::Code> {
    h.check(HealthCheckRequest {
        service: service.to_string(),
    })
    .await
    .map(|r| r.into_inner().status)
    .map_err(|s| s.code())
}

/// One reflection request; `Err` with the status the stream ended with.
async fn try_reflect(
    ch: Channel,
    request: MessageRequest,
) -> Result<MessageResponse, tonic::Status> {
    let mut client = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection call")
        .into_inner();
    Ok(answers
        .message()
        .await?
        .and_then(|a| a.message_response)
        .expect("a response"))
}

async fn reflect(ch: Channel, request: MessageRequest) -> MessageResponse {
    try_reflect(ch, request).await.expect("reflection answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_on_every_daemon() {
    let cluster = TestCluster::start(1);
    // Each daemon's services, and another daemon's that it must not describe.
    let daemons = [
        (
            cluster.pd.addr.clone(),
            vec!["flaredb.v1.Pd"],
            vec!["flaredb.v1.Kv", "flaredb.v1.StoreAdmin"],
        ),
        (
            cluster.stores[0].addr.clone(),
            vec!["flaredb.v1.Kv", "flaredb.v1.StoreAdmin"],
            vec!["flaredb.v1.Pd"],
        ),
    ];
    for (addr, services, others) in daemons {
        let ch = channel(&addr).await;
        let mut health = HealthClient::new(ch.clone());
        for s in std::iter::once("").chain(services.iter().copied()) {
            assert_eq!(
                status(&mut health, s).await,
                Ok(ServingStatus::Serving as i32),
                "{addr}: health of {s:?}"
            );
        }
        assert_eq!(
            status(&mut health, "nosuch.v1.Service").await,
            Err(tonic::Code::NotFound),
            "{addr}: unknown service"
        );

        // Exactly what the daemon serves, as `grpcurl list` shows it.
        let MessageResponse::ListServicesResponse(list) =
            reflect(ch.clone(), MessageRequest::ListServices(String::new())).await
        else {
            panic!("{addr}: not a service list");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        let mut want: Vec<String> = services
            .iter()
            .chain(&[
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ])
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names, want, "{addr}: listed services");
        for s in &others {
            let answer = try_reflect(
                ch.clone(),
                MessageRequest::FileContainingSymbol(s.to_string()),
            )
            .await;
            assert!(
                matches!(&answer, Err(st) if st.code() == tonic::Code::NotFound),
                "{addr}: describes {s}, which it does not serve: {answer:?}"
            );
        }
        let MessageResponse::FileDescriptorResponse(files) = reflect(
            ch.clone(),
            MessageRequest::FileContainingSymbol(services[0].to_string()),
        )
        .await
        else {
            panic!("{addr}: no descriptor for {}", services[0]);
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

/// `--log-format json`: every log line on stderr is one JSON object with a
/// timestamp, a level and the message (here: PD's and a store's start-up).
#[test]
fn json_log_lines() {
    use flaredb_tests::{Daemon, Kind};
    let root = tempfile::tempdir().unwrap();
    let json = ["--log-format".to_string(), "json".to_string()];
    let pd = Daemon::start(Kind::Pd, &root.path().join("pd"), "127.0.0.1:0", &json);
    let mut extra = vec!["--pd".to_string(), pd.addr.clone()];
    extra.extend(json.iter().cloned());
    let store = Daemon::start(Kind::Server, &root.path().join("s1"), "127.0.0.1:0", &extra);
    for dir in [&pd.dir, &store.dir] {
        let log = std::fs::read_to_string(dir.with_extension("log")).expect("daemon log");
        let mut lines = 0;
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            assert!(v["timestamp"].is_string(), "{line}");
            assert!(v["level"].is_string(), "{line}");
            assert!(v["fields"]["message"].is_string(), "{line}");
            lines += 1;
        }
        assert!(lines >= 1, "no log lines in {}", dir.display());
    }
    assert!(std::fs::read_to_string(pd.dir.with_extension("log"))
        .unwrap()
        .contains("\"rdb-pd serving\""));
}
