//! A PD of three members (real processes) under faults: its leader killed
//! with `kill -9`, paused with SIGSTOP, and cut off from the other members
//! (test builds' Raft cut switch). Timestamps are taken by several clients
//! throughout, and the whole history is checked: no timestamp is given
//! twice, and every timestamp is above every one returned before it was
//! asked for. Reads, writes and CAS on three stores keep working. Members
//! are added and removed with `rdb-cli pd`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flaredb_tests::{binary, Daemon, Kind, PdGroup};
use rdb_client::{CasExpect, Client, ClientConfig};

/// One `tso()` call: when it was asked for, when it returned, what it got.
#[derive(Clone, Copy, Debug)]
struct Call {
    invoked: Instant,
    returned: Instant,
    ts: Option<u64>,
}

type History = Arc<Mutex<Vec<Call>>>;

/// Checks the history: no timestamp twice; if call `a` returned before call
/// `b` was invoked, `a`'s timestamp is below `b`'s.
fn check_history(calls: &[Call]) {
    let ok: Vec<&Call> = calls.iter().filter(|c| c.ts.is_some()).collect();
    let mut seen = std::collections::HashSet::new();
    for c in &ok {
        assert!(seen.insert(c.ts), "timestamp {:?} handed out twice", c.ts);
    }
    // Sweep in invocation order; `done` holds the calls returned before the
    // current invocation, and only their highest timestamp matters.
    let mut by_return = ok.clone();
    by_return.sort_by_key(|c| c.returned);
    let mut by_invoke = ok.clone();
    by_invoke.sort_by_key(|c| c.invoked);
    let (mut j, mut highest) = (0, 0u64);
    for c in by_invoke {
        while j < by_return.len() && by_return[j].returned < c.invoked {
            highest = highest.max(by_return[j].ts.unwrap_or(0));
            j += 1;
        }
        let ts = c.ts.unwrap_or(0);
        assert!(
            ts > highest,
            "timestamp {ts} was asked for after {highest} had been returned, but is not above it"
        );
    }
}

/// The longest time within `[from, from + span]` in which no call returned a
/// timestamp: what callers saw of a fault at `from`.
fn longest_gap(calls: &[Call], from: Instant, span: Duration) -> Duration {
    let mut returns: Vec<Instant> = calls
        .iter()
        .filter(|c| c.ts.is_some() && c.returned >= from && c.returned <= from + span)
        .map(|c| c.returned)
        .collect();
    returns.sort();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for r in returns {
        gap = gap.max(r - last);
        last = r;
    }
    gap
}

fn config() -> ClientConfig {
    ClientConfig {
        retry_deadline: Duration::from_secs(30),
        ..Default::default()
    }
}

/// Takes timestamps until `stop`, recording every call.
async fn take_timestamps(client: Client, history: History, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let invoked = Instant::now();
        let ts = client.tso().await.ok();
        let returned = Instant::now();
        history.lock().unwrap().push(Call {
            invoked,
            returned,
            ts,
        });
        if ts.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long from `since` until a fresh client gets a timestamp.
async fn first_timestamp_after(addrs: &str, since: Instant) -> Duration {
    let client = Client::connect_with(addrs.split(','), config())
        .await
        .expect("connect to PD");
    for _ in 0..600 {
        if client.tso().await.is_ok() {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no timestamp within 30 s of the fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_pd_members_survive_their_leader_killed_paused_and_partitioned() {
    let root = tempfile::Builder::new()
        .prefix("flaredb-pd-ha-")
        .tempdir()
        .unwrap();
    let mut pd = PdGroup::start(root.path(), 3, &[]);
    let addrs = pd.addrs();
    let mut stores = Vec::new();
    for i in 1..=3 {
        let flags = vec![
            "--pd".to_string(),
            addrs.clone(),
            "--heartbeat-ms".into(),
            "200".into(),
        ];
        stores.push(Daemon::start(
            Kind::Server,
            &root.path().join(format!("store{i}")),
            "127.0.0.1:0",
            &flags,
        ));
    }
    let client = Client::connect_with(addrs.split(','), config())
        .await
        .unwrap();
    client.put(b"k".to_vec(), b"0".to_vec()).await.unwrap();

    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        // Two clients, two callers each: ordering is checked across clients.
        let c = Client::connect_with(addrs.split(','), config())
            .await
            .unwrap();
        for _ in 0..2 {
            tasks.push(tokio::spawn(take_timestamps(
                c.clone(),
                history.clone(),
                stop.clone(),
            )));
        }
    }
    // Reads, writes and CAS go on during the faults; none may fail (stores
    // serve from the client's cached routes; PD is needed for timestamps).
    let kv_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let kv = {
        let (client, stop, errors) = (client.clone(), stop.clone(), kv_errors.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = async {
                    client
                        .put(
                            format!("key{}", n % 50).into_bytes(),
                            n.to_string().into_bytes(),
                        )
                        .await?;
                    let cur = client.get(b"k".to_vec()).await?;
                    let v = cur.map(|v| v.version).unwrap_or(0);
                    client
                        .compare_and_swap(
                            b"k".to_vec(),
                            CasExpect::Version(v),
                            Some(n.to_string().into_bytes()),
                        )
                        .await?;
                    Ok::<(), rdb_client::Error>(())
                }
                .await;
                if let Err(e) = r {
                    errors.lock().unwrap().push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        })
    };

    let mut report = Vec::new();
    let mut faults = Vec::new();
    // 1. kill -9 the leader.
    let l = pd.leader(None, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    faults.push(("kill -9", t));
    pd.members[l].kill9();
    let took = first_timestamp_after(&addrs, t).await;
    let l2 = pd.leader(Some(l), Duration::from_secs(10)).await;
    assert_ne!(l2, l);
    report.push(format!("kill -9: first timestamp after {took:?}"));
    pd.members[l].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Pause the leader longer than the election timeout, then resume it.
    let l = pd.leader(None, Duration::from_secs(10)).await;
    let t = Instant::now();
    faults.push(("SIGSTOP", t));
    pd.members[l].pause();
    let took = first_timestamp_after(&addrs, t).await;
    report.push(format!("SIGSTOP: first timestamp after {took:?}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    pd.members[l].resume();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 3. Cut the leader off from the other members; clients still reach it.
    let l = pd.leader(None, Duration::from_secs(10)).await;
    let t = Instant::now();
    faults.push(("partition", t));
    pd.cut(l);
    let l3 = pd.leader(Some(l), Duration::from_secs(10)).await;
    assert_ne!(l3, l);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pd.heal(l);
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let kv_ops = kv.await.unwrap();
    let calls = history.lock().unwrap().clone();
    for (name, at) in faults {
        let gap = longest_gap(&calls, at, Duration::from_secs(8));
        report.push(format!("{name}: callers went {gap:?} without a timestamp"));
        assert!(
            gap < Duration::from_secs(8),
            "{name}: no timestamp for {gap:?}"
        );
    }
    eprintln!("{}", report.join("\n"));
    let ok = calls.iter().filter(|c| c.ts.is_some()).count();
    eprintln!(
        "{} timestamp calls, {ok} answered; {kv_ops} KV rounds",
        calls.len()
    );
    assert!(ok > 100, "too few timestamps taken: {ok}");
    assert_eq!(
        ok,
        calls.len(),
        "every timestamp call succeeds within the client's retry budget"
    );
    check_history(&calls);
    let errors = kv_errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "KV calls failed during PD faults: {errors:?}"
    );

    // Everything written is there, and PD still serves metadata and ids.
    let v = client.get(b"k".to_vec()).await.unwrap().unwrap();
    assert!(!v.value.is_empty());
    assert_eq!(client.stores().await.unwrap().len(), 3);
    // The stores' heartbeats reach whichever member leads now.
    let all_up = flaredb_tests::eventually(50, Duration::from_millis(200), || async {
        let stores = client.stores().await.ok()?;
        stores
            .iter()
            .all(|s| s.state == rdb_client::StoreState::Up as i32)
            .then_some(())
    })
    .await;
    assert!(all_up.is_some(), "stores are not all up after the faults");
    assert!(client.tso().await.is_ok());
}

/// The leader's name in a `pd members --json` answer.
fn view_leader_name(view: &serde_json::Value) -> String {
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["leader"] == true)
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

fn cli(pd: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(binary("rdb-cli"))
        .args(["--pd", pd, "--json", "--timeout", "20"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rdb-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_with_rdb_cli_and_ids_are_never_reused() {
    let root = tempfile::Builder::new()
        .prefix("flaredb-pd-members-")
        .tempdir()
        .unwrap();
    let pd = PdGroup::start(root.path(), 3, &[]);
    let addrs = pd.addrs();
    let members = cli(&addrs, &["pd", "members"]);
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(
        list.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{members}"
    );

    // Add pd4, start it, wait until it votes.
    let addr4 = format!("127.0.0.1:{}", flaredb_tests::free_port());
    let added = cli(&addrs, &["pd", "add-member", "pd4", &addr4]);
    assert_eq!(added["member"]["id"], 4, "{added}");
    assert_eq!(added["member"]["role"], "learner");
    let initial = added["initial_cluster"].as_str().unwrap().to_string();
    assert!(initial.contains(&format!("pd4={addr4}")));
    // One change at a time: a second member is refused while pd4 is a learner.
    let refused = std::process::Command::new(binary("rdb-cli"))
        .args(["--pd", &addrs, "pd", "add-member", "pd9", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("one member change at a time"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let pd4 = Daemon::start(
        Kind::Pd,
        &root.path().join("pd4"),
        &addr4,
        &[
            "--name".into(),
            "pd4".into(),
            "--initial-cluster-state".into(),
            "existing".into(),
            "--initial-cluster".into(),
            initial,
        ],
    );
    let mut voter = false;
    for _ in 0..100 {
        let m = cli(&addrs, &["pd", "members"]);
        voter = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "pd4" && m["role"] == "voter");
        if voter {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(voter, "pd4 never became a voter");
    assert_eq!(pd4.id, pd.members[0].id, "pd4 joined the same cluster");

    // The leader cannot be removed while it leads (stop it first).
    let leader_name = view_leader_name(&cli(&addrs, &["pd", "members"]));
    let refused = std::process::Command::new(binary("rdb-cli"))
        .args(["--pd", &addrs, "pd", "remove-member", &leader_name])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is the PD leader"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Remove a follower; the next member gets a new id, never 1..4 again.
    let view = cli(&addrs, &["pd", "members"]);
    let follower = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["leader"] == false && m["name"] != "pd4")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let after = cli(&addrs, &["pd", "remove-member", &follower]);
    let names: Vec<&str> = after["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{after}");
    assert!(!names.contains(&follower.as_str()));
    let addr5 = format!("127.0.0.1:{}", flaredb_tests::free_port());
    let all = format!("{addrs},{}", pd4.addr);
    let added = cli(&all, &["pd", "add-member", "pd5", &addr5]);
    assert_eq!(added["member"]["id"], 5, "ids are never reused: {added}");
    // Bad input is refused with a clear error.
    let out = std::process::Command::new(binary("rdb-cli"))
        .args(["--pd", &all, "pd", "add-member", "pd6", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The group of pd4 and the two remaining initial members serves.
    let client = Client::connect_with(all.split(','), config())
        .await
        .unwrap();
    assert!(client.tso().await.is_ok());
}

#[test]
fn the_history_check_catches_a_timestamp_that_goes_back_or_repeats() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let call = |i, r, ts| Call {
        invoked: at(i),
        returned: at(r),
        ts: Some(ts),
    };
    // Overlapping calls may be answered in any order.
    check_history(&[call(0, 10, 5), call(1, 9, 4), call(11, 12, 6)]);
    let back = std::panic::catch_unwind(|| check_history(&[call(0, 1, 5), call(2, 3, 4)]));
    assert!(back.is_err(), "a later call got a lower timestamp");
    let twice = std::panic::catch_unwind(|| check_history(&[call(0, 5, 5), call(1, 6, 5)]));
    assert!(twice.is_err(), "a timestamp handed out twice");
}

/// Every member crashes at once and comes back: the metadata is all there,
/// timestamps continue above every one handed out before, and a store
/// given the members with the first one down still registers through
/// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pd_crashes_and_restarts_without_losing_anything() {
    let root = tempfile::Builder::new()
        .prefix("flaredb-pd-restart-")
        .tempdir()
        .unwrap();
    let mut pd = PdGroup::start(root.path(), 3, &[]);
    let addrs = pd.addrs();
    let store = |i: usize, pd_list: &str| {
        Daemon::start(
            Kind::Server,
            &root.path().join(format!("store{i}")),
            "127.0.0.1:0",
            &[
                "--pd".into(),
                pd_list.into(),
                "--heartbeat-ms".into(),
                "200".into(),
            ],
        )
    };
    let _s1 = store(1, &addrs);
    let client = Client::connect_with(addrs.split(','), config())
        .await
        .unwrap();
    client.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
    client.split(Vec::from("m")).await.unwrap();
    let mut before = 0;
    for _ in 0..1000 {
        before = before.max(client.tso().await.unwrap());
    }
    let cluster_id = pd.members[0].id;
    drop(client);

    for m in &mut pd.members {
        m.kill9();
    }
    // Restart them together: each is ready once they have a leader again.
    std::thread::scope(|s| {
        for m in pd.members.iter_mut() {
            s.spawn(move || m.restart());
        }
    });
    assert!(pd.members.iter().all(|m| m.id == cluster_id));

    let client = Client::connect_with(addrs.split(','), config())
        .await
        .unwrap();
    let after = client.tso().await.unwrap();
    assert!(after > before, "{after} after the restart, {before} before");
    assert_eq!(
        client.regions().await.unwrap().len(),
        2,
        "the split is remembered"
    );
    assert_eq!(client.stores().await.unwrap().len(), 1);
    assert_eq!(
        client.get(b"k".to_vec()).await.unwrap().map(|v| v.value),
        Some(b"v".to_vec())
    );

    // A new store whose first PD address is dead registers through the others.
    pd.members[0].kill9();
    let dead_first = format!(
        "{},{},{}",
        pd.members[0].addr, pd.members[1].addr, pd.members[2].addr
    );
    let _s2 = store(2, &dead_first);
    let stores = flaredb_tests::eventually(50, Duration::from_millis(200), || async {
        let s = client.stores().await.ok()?;
        (s.len() == 2).then_some(s)
    })
    .await;
    assert!(stores.is_some(), "the second store did not register");
}
