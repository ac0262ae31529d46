//! TLS and mutual TLS against real daemons, with a throw-away CA generated
//! at test time (rcgen): PD, stores and clients all talk TLS; a plaintext
//! client, a client trusting the wrong CA, and (with mutual TLS) a client
//! without a certificate or with one from another CA all get a clear error
//! and no data.

use std::time::Duration;

use flaredb_tests::{TestCluster, TestPki};
use rdb_client::{Client, ClientConfig, Error};
use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::GetRequest;

/// A client expected to connect: the default retry budget (a busy test
/// machine can be slow to finish a handshake).
async fn connect_ok(c: &TestCluster, tls: rdb_client::ClientTls) -> Client {
    let config = ClientConfig {
        tls: Some(tls),
        ..Default::default()
    };
    Client::connect_with([c.pd.addr.clone()], config)
        .await
        .expect("TLS client connects")
}

/// A client expected to be refused: a short retry budget, the failure is
/// not transient.
async fn connect(c: &TestCluster, tls: Option<rdb_client::ClientTls>) -> Result<Client, Error> {
    let config = ClientConfig {
        tls,
        retry_deadline: Duration::from_secs(2),
        max_attempts: 2,
        ..Default::default()
    };
    Client::connect_with([c.pd.addr.clone()], config).await
}

/// Runs rdb-cli against the cluster with extra TLS flags.
fn cli(c: &TestCluster, tls: &[String], args: &[&str]) -> std::process::Output {
    std::process::Command::new(flaredb_tests::binary("rdb-cli"))
        .arg("--pd")
        .arg(&c.pd.addr)
        .args(tls)
        .args(args)
        .output()
        .expect("run rdb-cli")
}

fn flag(name: &str, path: std::path::PathBuf) -> Vec<String> {
    vec![name.to_string(), path.display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_serves_clients_that_trust_its_ca_and_refuses_others() {
    let pki = TestPki::generate();
    let c = TestCluster::start_with(2, &pki.node_flags(false), &pki.node_flags(false));

    // Stores registered with PD over TLS; data goes to a store over TLS.
    let client = connect_ok(&c, pki.client_tls("ca.pem", None)).await;
    let v = client
        .put(b"secret".to_vec(), b"v1".to_vec())
        .await
        .unwrap();
    assert_eq!(
        client
            .get(b"secret".to_vec())
            .await
            .unwrap()
            .unwrap()
            .version,
        v
    );
    // A split: PD calls the region's leader over TLS.
    let split_key: Vec<u8> = b"m".into();
    client.split(split_key).await.expect("split over TLS");
    client.put(b"x".to_vec(), b"right".to_vec()).await.unwrap();
    assert_eq!(
        client.get(b"x".to_vec()).await.unwrap().unwrap().value,
        b"right"
    );

    // A plaintext client: refused, with a hint at TLS.
    let Err(e) = connect(&c, None).await else {
        panic!("plaintext client refused");
    };
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("TLS"), "no TLS hint in: {e}");

    // A client that trusts another CA: the server's certificate is refused.
    let Err(e) = connect(&c, Some(pki.client_tls("other-ca.pem", None))).await else {
        panic!("wrong CA refused");
    };
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // Straight to a store in plaintext, bypassing PD: no data either.
    let store = &c.stores[0].addr;
    let res = async {
        let mut kv = KvClient::connect(format!("http://{store}")).await?;
        let r = kv
            .get(GetRequest {
                context: None,
                key: b"secret".to_vec(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(r.into_inner())
    }
    .await;
    assert!(
        res.is_err(),
        "plaintext request to a TLS store answered: {res:?}"
    );

    // rdb-cli: with --ca it works; without, exit 5 and a TLS hint.
    let ca = flag("--ca", pki.path("ca.pem"));
    let out = cli(&c, &ca, &["get", "secret"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");
    let out = cli(&c, &[], &["--timeout", "2", "get", "secret"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    let out = cli(
        &c,
        &flag("--ca", pki.path("other-ca.pem")),
        &["--timeout", "2", "get", "secret"],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(out.stdout.is_empty());

    // A TLS store offers no plaintext Raft lane: a connection that opens
    // with the lane's magic meets the TLS handshake, not the magic back.
    for store in &c.stores {
        assert!(
            !flaredb_tests::answers_raft_lane(&store.addr),
            "TLS store {} answered the plaintext Raft lane",
            store.addr
        );
    }
    assert!(!flaredb_tests::answers_raft_lane(&c.pd.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_cluster_ca() {
    let pki = TestPki::generate();
    let c = TestCluster::start_with(1, &pki.node_flags(true), &pki.node_flags(true));

    let client = connect_ok(&c, pki.client_tls("ca.pem", Some("client"))).await;
    client.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    assert_eq!(
        client.get(b"k".to_vec()).await.unwrap().unwrap().value,
        b"v"
    );

    // No client certificate: the handshake is refused.
    let Err(e) = connect(&c, Some(pki.client_tls("ca.pem", None))).await else {
        panic!("client without a certificate refused");
    };
    assert!(e.is_unavailable(), "{e}");
    assert!(
        e.to_string().contains("client certificate"),
        "no hint in: {e}"
    );
    // A certificate from another CA: refused too.
    let Err(e) = connect(&c, Some(pki.client_tls("ca.pem", Some("other-client")))).await else {
        panic!("client with a foreign certificate refused");
    };
    assert!(e.is_unavailable(), "{e}");
    assert!(
        e.to_string().contains("client certificate"),
        "no hint in: {e}"
    );

    // The same through rdb-cli.
    let mut ok = flag("--ca", pki.path("ca.pem"));
    ok.extend(flag("--cert", pki.path("client.pem")));
    ok.extend(flag("--key", pki.path("client.key")));
    let out = cli(&c, &ok, &["get", "k"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli(
        &c,
        &flag("--ca", pki.path("ca.pem")),
        &["--timeout", "2", "get", "k"],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(out.stdout.is_empty());
    let mut half = flag("--ca", pki.path("ca.pem"));
    half.extend(flag("--cert", pki.path("client.pem")));
    let out = cli(&c, &half, &["get", "k"]);
    assert_eq!(out.status.code(), Some(2), "--cert without --key: {out:?}");
}

#[test]
fn daemons_refuse_incomplete_tls_settings_naming_the_key() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(flaredb_tests::binary("rdb-pd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("pd"))
        .args(["--cert-path"])
        .arg(pki.path("node.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("security.key-path"), "{err}");
    let out = std::process::Command::new(flaredb_tests::binary("rdb-pd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("pd"))
        .arg("--ca-path")
        .arg(pki.path("ca.pem"))
        .arg("--cert-path")
        .arg(pki.path("node.pem"))
        .arg("--key-path")
        .arg(pki.path("missing.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.key"), "{err}");
}

/// The members of a three-member PD elect a leader and replicate over
/// mutual TLS (Raft travels on the gRPC port, with the node certificate as
/// client certificate); stores and clients reach it with certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pd_of_three_members_replicates_over_mutual_tls() {
    let pki = TestPki::generate();
    let root = tempfile::Builder::new()
        .prefix("flaredb-pd-tls-")
        .tempdir()
        .unwrap();
    // Each member prints its ready line only once a leader was elected and
    // the cluster id replicated to it: over mutual TLS.
    let pd = flaredb_tests::PdGroup::start(root.path(), 3, &pki.node_flags(true));
    let addrs = pd.addrs();
    let mut flags = vec!["--pd".to_string(), addrs.clone()];
    flags.extend(pki.node_flags(true));
    let _store = flaredb_tests::Daemon::start(
        flaredb_tests::Kind::Server,
        &root.path().join("store1"),
        "127.0.0.1:0",
        &flags,
    );
    let config = ClientConfig {
        tls: Some(pki.client_tls("ca.pem", Some("client"))),
        ..Default::default()
    };
    let client = Client::connect_with(addrs.split(','), config)
        .await
        .unwrap();
    client.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    assert!(client.tso().await.is_ok());
    let mut tls = flag("--ca", pki.path("ca.pem"));
    tls.extend(flag("--cert", pki.path("client.pem")));
    tls.extend(flag("--key", pki.path("client.key")));
    let out = std::process::Command::new(flaredb_tests::binary("rdb-cli"))
        .args(["--pd", &addrs, "--json"])
        .args(&tls)
        .args(["pd", "members"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["role"] == "voter"));
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1);
}
