//! A data directory written by the release before opens and serves under
//! this build. The fixture `tests/fixtures/datadir-0.1.0.tar.gz` is a PD
//! (on 127.0.0.1:29379) and one store (127.0.0.1:29380) of FlareDB 0.1.0
//! (commit 3fdff16) after these `rdb-cli` commands, then SIGTERM: `put k1 v1`, `put k2 v2`, `cas counter 1
//! --expect-absent`, `cas counter 2 --expect-version 3`, `split m`, `put x
//! after-split`, `put y y1`, `delete k2`. Its Raft logs hold format-0
//! entries, its counters the 8-byte form, its exactly-once records the
//! clock-stamped form: this build reads them, appends format-1 entries
//! after them once PD reports the cluster version 0.2.0, and reads the
//! mixed log again after a restart.
//!
//! A PD member keeps the address it was created with (its peers and the
//! clients learn it from its membership), so the fixture's daemons are
//! started on their recorded ports: below the ephemeral range that every
//! other test's free ports come from.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flaredb_tests::{binary, eventually, Daemon, Kind};
use rdb_client::{Client, ClientConfig};

/// Unpacks the fixture into `dir`.
fn unpack(dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-0.1.0.tar.gz");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "unpacking {}", fixture.display());
}

/// The value and version of `key`, if found.
async fn get(client: &Client, key: &str) -> Option<(String, u64)> {
    client
        .get(key.as_bytes().to_vec())
        .await
        .expect("get")
        .map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.version))
}

/// Everything the 0.1 cluster acknowledged, as it left it.
async fn as_left(client: &Client) {
    assert_eq!(get(client, "k1").await, Some(("v1".into(), 1)));
    assert_eq!(get(client, "k2").await, None, "deleted");
    assert_eq!(get(client, "counter").await, Some(("2".into(), 4)));
    assert_eq!(get(client, "x").await, Some(("after-split".into(), 5)));
    assert_eq!(get(client, "y").await, Some(("y1".into(), 6)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_directory_of_0_1_opens_and_serves() {
    let root = tempfile::tempdir().unwrap();
    unpack(root.path());
    let pd = Daemon::start(Kind::Pd, &root.path().join("pd"), "127.0.0.1:29379", &[]);
    let store_flags = vec![
        "--pd".to_string(),
        pd.addr.clone(),
        "--heartbeat-ms".into(),
        "200".into(),
    ];
    let mut store = Daemon::start(
        Kind::Server,
        &root.path().join("store1"),
        "127.0.0.1:29380",
        &store_flags,
    );
    let client = Client::connect_with([pd.addr.clone()], ClientConfig::default())
        .await
        .unwrap();
    let regions = eventually(100, Duration::from_millis(100), || async {
        client.clear_region_cache();
        let r = client.regions().await.ok()?;
        (r.len() == 2 && r.iter().all(|r| r.leader.is_some())).then_some(r)
    })
    .await
    .expect("the two regions of the 0.1 cluster, led");
    assert_eq!(regions[1].region.as_ref().unwrap().start_key, b"m");
    as_left(&client).await;

    // This build writes format-1 entries once PD reports 0.2.0 for the
    // cluster: they go after the 0.1 entries in the same logs.
    let log = store.dir.with_extension("log");
    let format_1 = eventually(100, Duration::from_millis(100), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("written in a new format")
            .then_some(())
    })
    .await;
    assert!(format_1.is_some(), "the cluster version reached 0.2.0");
    let z = client.put(b"z".to_vec(), b"new".to_vec()).await.unwrap();
    assert_eq!(z, 7, "the right region's counter went on from 0.1's");
    let a = client.put(b"a".to_vec(), b"new".to_vec()).await.unwrap();
    assert!(a > 4, "the left region's counter went on from 0.1's: {a}");

    // A restart replays the mixed log.
    store.restart();
    client.clear_region_cache();
    let back = eventually(100, Duration::from_millis(100), || async {
        get(&client, "z").await.filter(|(v, _)| v == "new")
    })
    .await;
    assert_eq!(back, Some(("new".into(), 7)));
    as_left(&client).await;
    let out = Command::new(binary("rdb-cli"))
        .args(["--pd", &pd.addr, "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
