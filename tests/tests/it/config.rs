//! Config files against the real binaries: the printed default starts a
//! daemon; unknown keys and invalid values stop it at start naming the key;
//! environment variables override the file and flags override both.

use std::path::Path;
use std::process::{Command, Output};

use flaredb_tests::{binary, free_port, http_get, Daemon, Kind};

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary(bin))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run daemon")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

#[test]
fn printed_default_configs_start_the_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let pd_default = run("rdb-pd", &["--print-default-config"], &[]);
    assert!(pd_default.status.success());
    let server_default = run("rdb-server", &["--print-default-config"], &[]);
    assert!(server_default.status.success());
    let text = String::from_utf8(pd_default.stdout).unwrap();
    assert!(text.contains("[security]") && text.contains("# "), "{text}");
    let pd_file = write(dir.path(), "pd.toml", &text);
    let server_file = write(
        dir.path(),
        "server.toml",
        &String::from_utf8(server_default.stdout).unwrap(),
    );
    // The defaults plus a data dir and a free port (given as flags).
    let pd = Daemon::start(
        Kind::Pd,
        &dir.path().join("pd"),
        "127.0.0.1:0",
        &["--config".into(), pd_file],
    );
    let store = Daemon::start(
        Kind::Server,
        &dir.path().join("s1"),
        "127.0.0.1:0",
        &[
            "--config".into(),
            server_file,
            "--pd".into(),
            pd.addr.clone(),
        ],
    );
    assert!(store.id > 0);
}

#[test]
fn unknown_keys_and_invalid_values_stop_the_daemon_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    let cases: &[(&str, &str, &str)] = &[
        ("rdb-server", "heartbeat-msx = 100\n", "heartbeat-msx"),
        ("rdb-server", "heartbeat-ms = \"fast\"\n", "heartbeat-ms"),
        ("rdb-server", "heartbeat-ms = 1\n", "heartbeat-ms"),
        (
            "rdb-server",
            "[limits]\nmax-key-size = 0\n",
            "limits.max-key-size",
        ),
        (
            "rdb-server",
            "[limits]\nmax-scan-limit = 20000\n",
            "limits.max-scan-limit",
        ),
        ("rdb-server", "[security]\nca-pth = \"x\"\n", "ca-pth"),
        ("rdb-server", "status-addr = \"nowhere\"\n", "status-addr"),
        ("rdb-pd", "listen = \"not an address\"\n", "listen"),
        (
            "rdb-pd",
            "store-down-after-secs = 0\n",
            "store-down-after-secs",
        ),
        ("rdb-pd", "log-format = \"xml\"\n", "log-format"),
        ("rdb-pd", "[limits]\nmax-key-size = 10\n", "max-key-size"),
    ];
    for (i, (bin, text, key)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("c{i}.toml"), text);
        let out = run(bin, &["--config", &file, "--data-dir", &data], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin} with {text:?}: {err}");
        assert!(
            err.contains(key),
            "{bin} with {text:?}: {err} does not name {key}"
        );
        assert!(out.stdout.is_empty(), "{bin} got ready with {text:?}");
    }
    // Without a data dir anywhere: refused, naming it.
    let out = run("rdb-pd", &[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data-dir"));
    // A config file that does not exist: named.
    let out = run("rdb-pd", &["--config", "/nonexistent/pd.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pd.toml"));
}

/// Whether a metrics endpoint answers on `port`.
fn serves_metrics(port: u16) -> bool {
    http_get(&format!("127.0.0.1:{port}"), "/metrics").is_ok_and(|(code, _)| code == 200)
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env, from_flag) = (free_port(), free_port(), free_port());
    let file = write(
        dir.path(),
        "pd.toml",
        &format!("status-addr = \"127.0.0.1:{from_file}\"\n"),
    );
    let env_value = format!("127.0.0.1:{from_env}");
    let start = |extra: &[String], name: &str| {
        let mut args = vec!["--config".to_string(), file.clone()];
        args.extend_from_slice(extra);
        Daemon::start_env(
            Kind::Pd,
            &dir.path().join(name),
            "127.0.0.1:0",
            &args,
            &[("FLAREDB_PD_STATUS_ADDR".into(), env_value.clone())],
        )
    };
    // File says A, environment says B: B.
    let pd = start(&[], "pd1");
    assert!(serves_metrics(from_env));
    assert!(!serves_metrics(from_file));
    drop(pd);
    // And a flag says C: C.
    let pd = start(
        &["--status-addr".into(), format!("127.0.0.1:{from_flag}")],
        "pd2",
    );
    assert!(serves_metrics(from_flag));
    assert!(!serves_metrics(from_env));
    drop(pd);
    // Only the file: A.
    let pd = Daemon::start(
        Kind::Pd,
        &dir.path().join("pd3"),
        "127.0.0.1:0",
        &["--config".into(), file.clone()],
    );
    assert!(serves_metrics(from_file));
    drop(pd);
}
