//! rdb-cli against a real cluster: every command, --json, and the exit codes.

use flaredb_tests::{binary, TestCluster};
use serde_json::Value;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn cli_commands_json_and_exit_codes() {
    // No replica checker: the split below is checked to keep the region's
    // one replica, which the checker would otherwise grow to two (one per
    // store) at any moment.
    let cluster = TestCluster::start_manual(2);
    let cli = |args: &[&str]| cluster.cli(args);

    assert_eq!(ok(&cli(&["put", "alpha", "1"])).trim(), "OK version=1");
    assert_eq!(ok(&cli(&["get", "alpha"])).trim(), "1");
    let j = json(&cli(&["--json", "get", "alpha"]));
    assert_eq!(
        (
            j["value"].as_str(),
            j["version"].as_u64(),
            j["found"].as_bool()
        ),
        (Some("1"), Some(1), Some(true))
    );
    ok(&cli(&["put", "beta", "2"]));
    ok(&cli(&["put", "gamma", "3"]));

    // Missing key: exit 3 with a one-line message.
    let out = cli(&["get", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "rdb-cli: key not found: nope"
    );
    assert_eq!(
        json(&cli(&["--json", "get", "nope"]))["found"],
        Value::Bool(false)
    );

    // Scan, plain and JSON, with limit and reverse.
    assert_eq!(ok(&cli(&["scan", "a"])), "alpha\t1\nbeta\t2\ngamma\t3\n");
    let j = json(&cli(&["--json", "scan", "a", "c", "--limit", "5"]));
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert_eq!(
        ok(&cli(&[
            "scan",
            "",
            "--reverse",
            "--limit",
            "1",
            "--keys-only"
        ]))
        .trim(),
        "gamma"
    );

    // CAS in all three modes; a failed CAS exits 4.
    assert!(ok(&cli(&["cas", "delta", "x", "--expect-absent"])).starts_with("OK version="));
    let out = cli(&["cas", "delta", "y", "--expect-absent"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAS failed"));
    let v = json(&cli(&["--json", "get", "delta"]))["version"]
        .as_u64()
        .unwrap();
    let j = json(&cli(&[
        "--json",
        "cas",
        "delta",
        "y",
        "--expect-version",
        &v.to_string(),
    ]));
    assert_eq!(j["succeeded"], Value::Bool(true));
    let out = cli(&["--json", "cas", "delta", "z", "--expect-value", "x"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(json(&out)["current"]["value"], Value::String("y".into()));
    ok(&cli(&[
        "cas",
        "delta",
        "",
        "--expect-value",
        "y",
        "--delete",
    ]));

    // Delete: exit 3 when the key was not there.
    assert_eq!(ok(&cli(&["delete", "alpha"])).trim(), "deleted");
    assert_eq!(cli(&["delete", "alpha"]).status.code(), Some(3));

    // Batches and range deletes.
    assert_eq!(
        ok(&cli(&["batch-put", "b1", "x", "b2", "y", "b3", "z"])).trim(),
        "OK 3 keys"
    );
    assert_eq!(
        ok(&cli(&["batch-get", "b1", "missing", "b3"])),
        "b1\tx\nb3\tz\n"
    );
    let j = json(&cli(&["--json", "batch-get", "b2"]));
    assert_eq!(j[0]["value"], Value::String("y".into()));
    assert_eq!(cli(&["batch-put", "b1", "x", "b2"]).status.code(), Some(2));
    assert_eq!(
        json(&cli(&["--json", "batch-delete", "b1", "b9"]))["deleted"].as_u64(),
        Some(1)
    );
    assert_eq!(ok(&cli(&["delete-range", "b2", "b4"])).trim(), "deleted 2");
    assert_eq!(ok(&cli(&["batch-get", "b1", "b2", "b3"])), "");

    // Hex keys and values.
    ok(&cli(&["--hex", "put", "00ff", "ff00"]));
    assert_eq!(ok(&cli(&["--hex", "get", "00ff"])).trim(), "ff00");

    // TSO.
    let a = json(&cli(&["--json", "tso", "--count", "10"]));
    let b: u64 = ok(&cli(&["tso"])).trim().parse().unwrap();
    assert_eq!(a["count"].as_u64(), Some(10));
    assert!(b >= a["first"].as_u64().unwrap() + 10);

    // Cluster layout and split.
    assert_eq!(
        json(&cli(&["--json", "stores"])).as_array().unwrap().len(),
        2
    );
    let j = json(&cli(&["--json", "split", "b"]));
    assert_ne!(j["left"]["id"], j["right"]["id"]);
    assert_eq!(
        j["left"]["store_id"], j["right"]["store_id"],
        "both halves keep the region's replica and leader"
    );
    let regions = json(&cli(&["--json", "regions"]));
    assert_eq!(regions.as_array().unwrap().len(), 2);
    for r in regions.as_array().unwrap() {
        let peers = r["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{r}");
        assert_eq!(peers[0]["store_id"], r["leader_store_id"], "{r}");
        assert_eq!(peers[0]["role"], "voter", "{r}");
    }
    assert_ne!(
        regions[0]["peers"][0]["id"], regions[1]["peers"][0]["id"],
        "each region's replica has a peer id of its own"
    );
    assert_eq!(regions[1]["start_key"], Value::String("b".into()));
    assert!(ok(&cli(&["regions"])).contains("+inf"));
    assert_eq!(
        ok(&cli(&["scan", "", "--keys-only"])),
        "\u{0}\u{fffd}\nbeta\ngamma\n"
    );

    // Usage errors exit 2; bad input is refused before it reaches the store.
    assert_eq!(cli(&["cas", "k", "v"]).status.code(), Some(2));
    assert_eq!(cli(&["put", "", "v"]).status.code(), Some(2));
    assert_eq!(cli(&["scan", "z", "a"]).status.code(), Some(2));
    assert_eq!(cli(&["--hex", "get", "zz"]).status.code(), Some(2));
    let help = ok(&std::process::Command::new(binary("rdb-cli"))
        .arg("--help")
        .output()
        .unwrap());
    assert!(help.contains("EXIT CODES"));
}

#[test]
fn put_without_a_value_reads_standard_input() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cluster = TestCluster::start(1);
    let put_stdin = |args: &[&str], input: &[u8]| {
        let mut child = Command::new(binary("rdb-cli"))
            .arg("--pd")
            .arg(&cluster.pd.addr)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    };
    // Larger than the 128 KiB a single shell argument may hold, and binary.
    let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 256) as u8).collect();
    ok(&put_stdin(&["put", "big"], &big));
    ok(&put_stdin(&["put", "dash", "-"], b"from stdin"));
    ok(&put_stdin(&["--hex", "put", "6869"], b"  00ff10\n"));
    let c = tokio::runtime::Runtime::new().unwrap();
    c.block_on(async {
        let client = cluster.client().await;
        assert!(client.get(b"big".to_vec()).await.unwrap().unwrap().value == big);
        assert_eq!(
            client.get(b"dash".to_vec()).await.unwrap().unwrap().value,
            b"from stdin"
        );
        assert_eq!(
            client.get(b"hi".to_vec()).await.unwrap().unwrap().value,
            vec![0x00, 0xff, 0x10]
        );
    });
    // Bad hex on standard input is a usage error, and nothing is written.
    assert_eq!(
        put_stdin(&["--hex", "put", "6868"], b"zz").status.code(),
        Some(2)
    );
}

#[test]
fn cli_unreachable_pd_exits_5() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = std::process::Command::new(binary("rdb-cli"))
        .args([
            "--pd",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "1",
            "get",
            "k",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("rdb-cli: cannot reach PD") && err.trim().lines().count() == 1,
        "{err}"
    );
}
