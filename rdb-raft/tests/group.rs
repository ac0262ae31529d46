//! Three members of one group in this process, over real gRPC on loopback:
//! election, replication, failover, a restart from disk, and a member
//! added later that catches up (from the log or a snapshot).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdb_raft::{Group, GroupConfig, Member, StateMachine, Timing, Transport};
use rdb_storage::{Engine, WriteOp};

/// Sums the commands (u64, big-endian); answers the sum after each.
#[derive(Default)]
struct Sum(Mutex<u64>);

impl StateMachine for Sum {
    fn apply(&self, _index: u64, command: &[u8], batch: &mut Vec<WriteOp>) -> Vec<u8> {
        let add = u64::from_be_bytes(command.try_into().unwrap_or([0; 8]));
        let mut s = self.0.lock().unwrap();
        *s += add;
        batch.push(WriteOp::PutMeta {
            key: b"sum".to_vec(),
            value: s.to_be_bytes().to_vec(),
        });
        s.to_be_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.lock().unwrap().to_be_bytes().to_vec()
    }
    fn restore(&self, data: &[u8], batch: &mut Vec<WriteOp>) -> Result<(), String> {
        let v = u64::from_be_bytes(data.try_into().map_err(|_| "bad snapshot".to_string())?);
        *self.0.lock().unwrap() = v;
        batch.push(WriteOp::PutMeta {
            key: b"sum".to_vec(),
            value: v.to_be_bytes().to_vec(),
        });
        Ok(())
    }
}

struct Node {
    group: Group,
    sum: Arc<Sum>,
    server: tokio::task::JoinHandle<()>,
    /// Stops the server gracefully: its connections are closed too, as
    /// when a process exits (an aborted server task would leave them open).
    stop: tokio::sync::oneshot::Sender<()>,
}

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
    }
}

/// The member that has no Raft lane (see [`start_on`]).
const NO_LANE: u64 = 3;

async fn start(id: u64, dir: &std::path::Path, listener: tokio::net::TcpListener) -> Node {
    let engine = Engine::open(dir, Default::default()).unwrap();
    start_on(id, engine, listener, Duration::ZERO).await
}

/// [`start`] on an open engine, the member's group started `late` after
/// its server (which answers meanwhile that the group is not running).
async fn start_on(
    id: u64,
    engine: Engine,
    listener: tokio::net::TcpListener,
    late: Duration,
) -> Node {
    let sum = Arc::new(Sum(Mutex::new(
        engine
            .get_meta(b"sum")
            .unwrap()
            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
            .unwrap_or(0),
    )));
    let transport = Transport::new(None);
    let svc = transport.service();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let conns = tokio_stream::wrappers::TcpListenerStream::new(listener);
    // Member 3 serves gRPC only, as an older version would: the others
    // reach it over gRPC and each other over the Raft lane.
    let conns: rdb_raft::Incoming = if id == NO_LANE {
        Box::pin(conns)
    } else {
        transport.split_incoming(conns)
    };
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(conns, async {
                let _ = stopped.await;
            })
            .await;
    });
    tokio::time::sleep(late).await;
    let group = Group::start(
        GroupConfig {
            group_id: 7,
            node_id: id,
            timing: timing(),
            snapshot_every: 20,
            lease_on_demand: true,
            hibernate: true,
        },
        engine.clone(),
        sum.clone(),
        transport,
    )
    .await
    .unwrap();
    Node {
        group,
        sum,
        server,
        stop,
    }
}

async fn leader(nodes: &[Option<Node>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n {
                let st = n.group.status();
                if st.is_leader && n.group.ensure_leader().await.is_ok() {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn converge(nodes: &[Option<Node>], want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sums: Vec<u64> = nodes
            .iter()
            .flatten()
            .map(|n| *n.sum.0.lock().unwrap())
            .collect();
        if sums.iter().all(|s| *s == want) {
            return;
        }
        assert!(Instant::now() < deadline, "sums {sums:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` members (ids 1..=n) on free loopback ports: their records and
/// their listeners.
async fn listen(n: u64) -> (BTreeMap<u64, Member>, Vec<Option<tokio::net::TcpListener>>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for i in 1..=n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            i,
            Member {
                name: format!("n{i}"),
                address: l.local_addr().unwrap().to_string(),
            },
        );
        listeners.push(Some(l));
    }
    (members, listeners)
}

/// Four members' addresses; the first three started and initialized as
/// the group (the fourth's listener is returned for a later start).
async fn three_of_four(
    dirs: &[tempfile::TempDir],
) -> (
    Vec<Option<Node>>,
    BTreeMap<u64, Member>,
    Vec<Option<tokio::net::TcpListener>>,
) {
    let (members, mut listeners) = listen(4).await;
    let initial: BTreeMap<_, _> = members
        .iter()
        .filter(|(id, _)| **id <= 3)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for i in 0..3 {
        nodes.push(Some(
            start(i as u64 + 1, dirs[i].path(), listeners[i].take().unwrap()).await,
        ));
    }
    for n in nodes.iter().flatten() {
        n.group.initialize(initial.clone()).await.unwrap();
    }
    (nodes, members, listeners)
}

/// Stops a member as its process would stop: the group, then its server
/// (and so its connections).
async fn stop(node: Node) {
    node.group.shutdown().await;
    let Node {
        group,
        server,
        stop,
        ..
    } = node;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    drop(group);
}

/// Waits (at most 10 s) until every running member sleeps.
async fn all_asleep(nodes: &[Option<Node>]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes.iter().flatten().all(|n| n.group.is_asleep()) {
        let awake: Vec<_> = nodes
            .iter()
            .flatten()
            .filter(|n| !n.group.is_asleep())
            .map(|n| n.group.node_id())
            .collect();
        assert!(
            Instant::now() < deadline,
            "members {awake:?} still awake after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_sleeps_wakes_when_used_and_elects_when_its_leader_dies() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, _, _) = three_of_four(&dirs).await;
    let l = leader(&nodes).await;
    let g = nodes[l].as_ref().unwrap().group.clone();
    let term = g.status().term;
    g.write(1u64.to_be_bytes().to_vec()).await.unwrap();
    // Idle for two election timeouts (1.2 s): the whole group sleeps.
    all_asleep(&nodes).await;
    assert!(
        !g.lease_holds() || !g.is_asleep(),
        "a sleeping leader holds no lease"
    );
    // Used again, it wakes and answers; the term did not move (nobody
    // elected while it slept).
    g.write(2u64.to_be_bytes().to_vec()).await.unwrap();
    assert!(!g.is_asleep());
    converge(&nodes, 3).await;
    assert_eq!(g.status().term, term);
    // A read wakes it too (its lease is renewed).
    all_asleep(&nodes).await;
    let renewed = async {
        while !g.lease_holds() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), renewed)
        .await
        .expect("a sleeping leader asked for its lease wakes and renews it");
    assert_eq!(g.status().term, term);
    // Asleep again, the leader's process stops: the followers hear no
    // heartbeat, but the transport's pings find its process silent, and
    // they elect.
    all_asleep(&nodes).await;
    stop(nodes[l].take().unwrap()).await;
    let l2 = leader(&nodes).await;
    assert_ne!(l2, l);
    let g2 = nodes[l2].as_ref().unwrap().group.clone();
    assert!(g2.status().term > term);
    g2.write(4u64.to_be_bytes().to_vec()).await.unwrap();
    converge(&nodes, 7).await;
    for n in nodes.iter().flatten() {
        n.group.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_fail_over_restart_and_grow() {
    // RUST_LOG=openraft=debug shows the members' Raft traffic.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, members, mut listeners) = three_of_four(&dirs).await;
    let l = leader(&nodes).await;
    // The lease is kept on demand: after two election timeouts without
    // anyone asking for it, it lapses (no rounds for an idle leader); asked
    // for again, it is renewed within a heartbeat or two.
    let g = &nodes[l].as_ref().unwrap().group;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        g.is_leader() && !g.lease_holds(),
        "an idle leader's lease lapses"
    );
    let renewed = async {
        while !g.lease_holds() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), renewed)
        .await
        .expect("the lease is renewed once asked for");
    let mut total = 0;
    for i in 1..=50u64 {
        let answer = nodes[l]
            .as_ref()
            .unwrap()
            .group
            .write(i.to_be_bytes().to_vec())
            .await
            .unwrap();
        total += i;
        assert_eq!(answer, total.to_be_bytes().to_vec());
    }
    converge(&nodes, total).await;
    // A follower refuses writes and names the leader.
    let f = (l + 1) % 3;
    match nodes[f]
        .as_ref()
        .unwrap()
        .group
        .write(1u64.to_be_bytes().to_vec())
        .await
    {
        Err(rdb_raft::Error::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, l as u64 + 1),
        other => panic!("follower write: {other:?}"),
    }

    // The leader stops: the other two elect a new one and keep going.
    let old = nodes[l].take().unwrap();
    let old_term = old.group.status().term;
    stop(old).await;
    let addr = members[&(l as u64 + 1)].address.clone();
    let l2 = leader(&nodes).await;
    assert_ne!(l2, l);
    assert!(nodes[l2].as_ref().unwrap().group.status().term > old_term);
    for i in 1..=30u64 {
        nodes[l2]
            .as_ref()
            .unwrap()
            .group
            .write(i.to_be_bytes().to_vec())
            .await
            .unwrap();
        total += i;
    }
    // The old leader restarts from its disk (same address) and catches up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    nodes[l] = Some(start(l as u64 + 1, dirs[l].path(), listener).await);
    converge(&nodes, total).await;

    // A fourth member joins as a learner, catches up, becomes a voter.
    let n4 = start(4, dirs[3].path(), listeners[3].take().unwrap()).await;
    nodes.push(Some(n4));
    let l3 = leader(&nodes).await;
    let g = nodes[l3].as_ref().unwrap().group.clone();
    g.add_learner(4, members[&4].clone()).await.unwrap();
    converge(&nodes, total).await;
    g.promote(4).await.unwrap();
    assert!(g.status().voters.contains(&4));
    // Ids and names are unique.
    assert!(g.add_learner(5, members[&4].clone()).await.is_err());
    // Removing a member.
    let victim = (1..=3u64).find(|id| *id != l3 as u64 + 1).unwrap();
    g.remove(victim).await.unwrap();
    assert!(!g.status().members.contains_key(&victim));
    g.write(5u64.to_be_bytes().to_vec()).await.unwrap();
    total += 5;
    let rest: Vec<Option<Node>> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| if i as u64 + 1 == victim { None } else { n })
        .collect();
    converge(&rest, total).await;

    // Leadership handed over: the old leader gives up its lease at once, and
    // the target leads in a higher term (without waiting out a lease).
    let from = leader(&rest).await;
    let old = rest[from].as_ref().unwrap().group.clone();
    let old_term = old.status().term;
    assert!(old.lease_valid(old_term));
    let to = rest
        .iter()
        .enumerate()
        .find(|(i, n)| *i != from && n.is_some())
        .map(|(i, _)| i)
        .unwrap();
    let started = Instant::now();
    old.transfer_leader(to as u64 + 1).await.unwrap();
    assert!(
        !old.lease_valid(old_term),
        "the lease is given up before the transfer"
    );
    let now_leader = leader(&rest).await;
    assert_eq!(now_leader, to, "leadership went to the target");
    let st = rest[to].as_ref().unwrap().group.status();
    assert!(st.term > old_term);
    eprintln!("leader transfer took {:?}", started.elapsed());
    rest[to]
        .as_ref()
        .unwrap()
        .group
        .write(7u64.to_be_bytes().to_vec())
        .await
        .unwrap();
    total += 7;
    converge(&rest, total).await;
    for n in rest.iter().flatten() {
        n.group.shutdown().await;
    }
}

/// Three members of a group created from seeded logs, as a region's split
/// creates the new region's group: the member told to campaign does so
/// before the others' groups have started (its requests wait for them
/// there) and leads in the first term; with that member gone, the other
/// two elect on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_group_is_led_by_its_campaigner_and_elects_without_it() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    for with_campaigner in [true, false] {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (members, mut listeners) = listen(3).await;
        let voters: BTreeSet<u64> = members.keys().copied().collect();
        let mut engines = Vec::new();
        for d in &dirs {
            let engine = Engine::open(d.path(), Default::default()).unwrap();
            let seed = rdb_raft::seed_ops(&engine, 7, 3, members.clone(), voters.clone()).unwrap();
            assert_eq!(seed.len(), 1, "one first entry");
            engine.write(seed).await.unwrap();
            engines.push(Some(engine));
        }
        // Members 1 and 2 answer at once, their groups start 50 ms later.
        let mut others = Vec::new();
        for i in 0..2 {
            let (e, l) = (engines[i].take().unwrap(), listeners[i].take().unwrap());
            others.push(tokio::spawn(start_on(
                i as u64 + 1,
                e,
                l,
                Duration::from_millis(50),
            )));
        }
        let mut nodes: Vec<Option<Node>> = vec![None, None, None];
        if with_campaigner {
            let (e, l) = (engines[2].take().unwrap(), listeners[2].take().unwrap());
            let n3 = start_on(3, e, l, Duration::ZERO).await;
            n3.group.campaign().await.unwrap();
            nodes[2] = Some(n3);
        }
        for (i, o) in others.into_iter().enumerate() {
            nodes[i] = Some(o.await.unwrap());
        }
        let l = leader(&nodes).await;
        let st = nodes[l].as_ref().unwrap().group.status();
        if with_campaigner {
            assert_eq!((l, st.term), (2, 1), "the campaigner won the first term");
        } else {
            assert!(l < 2, "one of the two started members leads");
        }
        let g = nodes[l].as_ref().unwrap().group.clone();
        g.write(5u64.to_be_bytes().to_vec()).await.unwrap();
        converge(&nodes, 5).await;
        // A seeded member already has its log: initializing is a no-op.
        for n in nodes.iter().flatten() {
            assert!(n.group.is_initialized().await.unwrap());
        }
        for n in nodes.into_iter().flatten() {
            stop(n).await;
        }
    }
}
