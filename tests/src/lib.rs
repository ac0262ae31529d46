//! Test harness: starts real `rdb-pd` and `rdb-server` processes on free
//! loopback ports, each in its own temporary data directory, and stops them
//! (kill -9) when dropped. Daemon logs go to `<data dir>.log`, printed when a
//! daemon fails to start, and their last lines when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use rdb_client::{Client, ClientConfig};

pub mod history;
pub mod linearizability;
mod proxy;
pub use proxy::{Cut, CutProxy};

/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a workspace binary (built by `cargo build --workspace --bins`;
/// the failpoint tests need `--features rdb-server/failpoints,rdb-pd/failpoints`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the daemons first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Which daemon a [`Daemon`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rdb-pd`
    Pd,
    /// `rdb-server`
    Server,
}

/// A running daemon process.
pub struct Daemon {
    kind: Kind,
    child: Option<Child>,
    /// The address it serves on.
    pub addr: String,
    /// Its data directory.
    pub dir: PathBuf,
    /// The id from its ready line (cluster id for PD, store id for a server).
    pub id: u64,
    extra: Vec<String>,
    /// Extra environment variables, also used by [`Daemon::restart`]
    /// (clear them to restart without, say, a failpoint).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    fn log_path(dir: &Path) -> PathBuf {
        dir.with_extension("log")
    }

    /// Starts a daemon and waits for its ready line. `listen` may use port 0.
    pub fn start(kind: Kind, dir: &Path, listen: &str, extra: &[String]) -> Daemon {
        Self::start_env(kind, dir, listen, extra, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(
        kind: Kind,
        dir: &Path,
        listen: &str,
        extra: &[String],
        env: &[(String, String)],
    ) -> Daemon {
        match Self::try_start_env(kind, dir, listen, extra, env) {
            Ok(d) => d,
            Err(e) => {
                let log = std::fs::read_to_string(Self::log_path(dir)).unwrap_or_default();
                panic!("{kind:?} failed to start: {e}\n--- log ---\n{log}");
            }
        }
    }

    /// Starts a daemon; `Err` carries the reason (and the process's exit) if it never got ready.
    pub fn try_start(
        kind: Kind,
        dir: &Path,
        listen: &str,
        extra: &[String],
    ) -> Result<Daemon, String> {
        Self::try_start_env(kind, dir, listen, extra, &[])
    }

    /// [`Daemon::try_start`] with extra environment variables.
    pub fn try_start_env(
        kind: Kind,
        dir: &Path,
        listen: &str,
        extra: &[String],
        env: &[(String, String)],
    ) -> Result<Daemon, String> {
        let (bin, prefix) = match kind {
            Kind::Pd => ("rdb-pd", "rdb-pd listening on "),
            Kind::Server => ("rdb-server", "rdb-server listening on "),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(dir))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(binary(bin))
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        let rest = rdb_bench::local::wait_ready(&mut child, prefix, READY_TIMEOUT)
            .map_err(|e| format!("{bin} {e}"))?;
        if env.iter().any(|(k, _)| k == "FAILPOINTS") {
            check_failpoints_on(bin, &Self::log_path(dir));
        }
        let mut parts = rest.split_whitespace();
        let addr = parts.next().unwrap_or_default().to_string();
        let id = parts
            .next()
            .and_then(|p| p.split_once('='))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_default();
        Ok(Daemon {
            kind,
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
            id,
            extra: extra.to_vec(),
            env: env.to_vec(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory of the process so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses the process (SIGSTOP): it holds its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("daemon is running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same address and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        // The port was just released; retry briefly in case it is still held.
        let mut last = String::new();
        for _ in 0..50 {
            match Self::try_start_env(
                self.kind,
                &self.dir,
                &self.addr.clone(),
                &self.extra,
                &self.env,
            ) {
                Ok(d) => {
                    *self = d;
                    return;
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("cannot restart {:?} on {}: {last}", self.kind, self.addr);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what its daemons said last (their logs go
        // away with their temporary directories).
        if std::thread::panicking() {
            let log = std::fs::read_to_string(Self::log_path(&self.dir)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- last lines of {:?} {} ({}) ---\n{tail}",
                self.kind, self.id, self.addr
            );
        }
    }
}

/// Fails the test when a daemon started with `FAILPOINTS` did not turn them
/// on (its log says so at start): a binary built without the `failpoints`
/// feature would silently run a test without its fault.
fn check_failpoints_on(bin: &str, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        text.contains("failpoints on"),
        "{bin} ignored FAILPOINTS: build the daemons with \
         `--features rdb-server/failpoints,rdb-pd/failpoints` (scripts/test.sh does)"
    );
}

/// Checks, through `client`, that every key of `pairs` holds its value:
/// acknowledged writes were not lost.
pub async fn assert_all_readable(client: &Client, pairs: &[(Vec<u8>, Vec<u8>)]) {
    for chunk in pairs.chunks(500) {
        let got: std::collections::HashMap<_, _> = client
            .batch_get(chunk.iter().map(|(k, _)| k.clone()).collect())
            .await
            .expect("batch get")
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect();
        for (k, v) in chunk {
            assert_eq!(
                got.get(k),
                Some(v),
                "acknowledged write of {} lost",
                String::from_utf8_lossy(k)
            );
        }
    }
}

/// Checks, through `client`, that the replicas of every region hold the
/// same state: each region's replicas' digests at one log index are equal
/// ([`Client::check_replicas`]). Every fault test ends with it. A region
/// whose leader moves during the check is asked again (bounded).
pub async fn assert_replicas_agree(client: &Client) {
    client.clear_region_cache();
    let regions = client.regions().await.expect("regions");
    for r in regions {
        let id = r
            .region
            .as_ref()
            .map(|g| g.id)
            .expect("a route has its region");
        let mut last = None;
        for _ in 0..5 {
            match client.check_replicas(id, Duration::from_secs(30)).await {
                Ok(c) if c.agree() => {
                    last = None;
                    break;
                }
                Ok(c) => {
                    // A replica that gave no digest (still catching up, or
                    // its store down) is asked again; unequal digests fail.
                    let digests: Vec<_> =
                        c.replicas.iter().filter_map(|r| r.digest.clone()).collect();
                    assert!(
                        digests.windows(2).all(|w| w[0] == w[1]),
                        "the replicas of region {id} disagree at index {}: {:#?}",
                        c.index,
                        c.replicas
                    );
                    last = Some(format!("{c:#?}"));
                }
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(l) = last {
            panic!("region {id}: no digest from every replica: {l}");
        }
    }
}

/// The file whose existence cuts the Raft traffic of the daemon in `dir`.
fn cut_file(dir: &Path) -> PathBuf {
    dir.with_extension("raft-cut")
}

/// The environment that arms the Raft cut switch of the daemon in `dir`
/// (test builds with the `failpoints` feature).
fn cut_switch_env(dir: &Path) -> (String, String) {
    (
        "FLAREDB_TEST_RAFT_CUT".to_string(),
        cut_file(dir).display().to_string(),
    )
}

/// Cuts daemon `d`'s Raft traffic, both ways (clients still reach it).
pub fn cut_raft(d: &Daemon) {
    let log = std::fs::read_to_string(Daemon::log_path(&d.dir)).unwrap_or_default();
    assert!(
        log.contains("Raft cut switch armed"),
        "the daemon has no Raft cut switch: build it with `--features rdb-pd/failpoints,rdb-server/failpoints` \
         (scripts/test.sh does)"
    );
    std::fs::write(cut_file(&d.dir), b"cut").expect("write cut file");
}

/// Undoes [`cut_raft`].
pub fn heal_raft(d: &Daemon) {
    let _ = std::fs::remove_file(cut_file(&d.dir));
}

/// The members of a PD group, started together on free loopback ports.
/// Each member's Raft traffic can be cut both ways ([`PdGroup::cut`]; test
/// builds of rdb-pd only) while clients still reach it.
pub struct PdGroup {
    /// The members, `pd1`, `pd2`, ... in order.
    pub members: Vec<Daemon>,
}

impl PdGroup {
    /// Starts `n` members under `root` with `extra` flags, in parallel (each
    /// prints its ready line once the group has a leader and a cluster id).
    pub fn start(root: &Path, n: usize, extra: &[String]) -> PdGroup {
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("pd{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let members = std::thread::scope(|s| {
            let handles: Vec<_> = addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| {
                    let initial = initial.clone();
                    s.spawn(move || {
                        let dir = root.join(format!("pd{}", i + 1));
                        let mut flags = vec![
                            "--name".to_string(),
                            format!("pd{}", i + 1),
                            "--initial-cluster".into(),
                            initial,
                            "--store-down-after-secs".into(),
                            "3".into(),
                        ];
                        flags.extend_from_slice(extra);
                        let env = [cut_switch_env(&dir)];
                        Daemon::start_env(Kind::Pd, &dir, addr, &flags, &env)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("PD member start"))
                .collect()
        });
        PdGroup { members }
    }

    /// Every member's address, comma-separated (for `--pd`).
    pub fn addrs(&self) -> String {
        self.members
            .iter()
            .map(|m| m.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Cuts member `i`'s Raft traffic, both ways (clients still reach it).
    pub fn cut(&self, i: usize) {
        cut_raft(&self.members[i]);
    }

    /// Undoes [`PdGroup::cut`].
    pub fn heal(&self, i: usize) {
        heal_raft(&self.members[i]);
    }

    /// The members' view through `GetMembers` on member `i`.
    pub async fn view(&self, i: usize) -> Option<rdb_proto::v1::GetMembersResponse> {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.members[i].addr))
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect_lazy();
        rdb_proto::v1::pd_client::PdClient::new(ch)
            .get_members(rdb_proto::v1::GetMembersRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// The index of the leader that a majority of the running members
    /// (other than `except`) agree on, waiting up to `within`.
    pub async fn leader(&self, except: Option<usize>, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut votes = std::collections::HashMap::new();
            let mut answered = 0;
            for i in 0..self.members.len() {
                if Some(i) == except || self.members[i].pid().is_none() {
                    continue;
                }
                if let Some(v) = self.view(i).await {
                    answered += 1;
                    if v.leader_id != 0 {
                        *votes.entry(v.leader_address).or_insert(0usize) += 1;
                    }
                }
            }
            let found = votes
                .into_iter()
                .find(|(_, n)| *n >= 2 && *n * 2 > answered)
                .and_then(|(a, _)| self.members.iter().position(|m| m.addr == a))
                .filter(|i| Some(*i) != except);
            if let Some(i) = found {
                return i;
            }
            assert!(Instant::now() < deadline, "no PD leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A PD and some stores, in one temporary directory.
pub struct TestCluster {
    /// The PD.
    pub pd: Daemon,
    /// The stores, in start order (the first one bootstrapped the cluster).
    pub stores: Vec<Daemon>,
    /// Holds the temporary directory.
    pub root: tempfile::TempDir,
    /// Extra flags of every store.
    store_extra: Vec<String>,
}

impl TestCluster {
    /// Starts a PD and `stores` stores.
    pub fn start(stores: usize) -> TestCluster {
        Self::start_with(stores, &[], &[])
    }

    /// Starts a PD without its replica checker (`--patrol-interval-ms 0`),
    /// and `stores` stores: for tests that place replicas by hand
    /// (`rdb-cli operator`).
    pub fn start_manual(stores: usize) -> TestCluster {
        Self::start_with(stores, &["--patrol-interval-ms".into(), "0".into()], &[])
    }

    /// Starts a PD with `pd_extra` flags and `stores` stores with
    /// `store_extra` flags (also used by [`TestCluster::add_store`]).
    pub fn start_with(stores: usize, pd_extra: &[String], store_extra: &[String]) -> TestCluster {
        let root = tempfile::Builder::new()
            .prefix("flaredb-test-")
            .tempdir()
            .expect("temp dir");
        let mut extra = vec!["--store-down-after-secs".to_string(), "3".to_string()];
        extra.extend_from_slice(pd_extra);
        let pd = Daemon::start(Kind::Pd, &root.path().join("pd"), "127.0.0.1:0", &extra);
        let mut c = TestCluster {
            pd,
            stores: Vec::new(),
            root,
            store_extra: store_extra.to_vec(),
        };
        for _ in 0..stores {
            c.add_store();
        }
        c
    }

    /// Starts one more store.
    pub fn add_store(&mut self) -> &Daemon {
        self.add_store_with_env(&[])
    }

    /// Starts one more store with extra environment variables.
    pub fn add_store_with_env(&mut self, env: &[(String, String)]) -> &Daemon {
        let i = self.stores.len() + 1;
        let dir = self.root.path().join(format!("store{i}"));
        let extra = vec![
            "--pd".into(),
            self.pd.addr.clone(),
            "--heartbeat-ms".into(),
            "200".into(),
        ];
        let extra = [extra, self.store_extra.clone()].concat();
        let mut env = env.to_vec();
        env.push(cut_switch_env(&dir));
        let d = Daemon::start_env(Kind::Server, &dir, "127.0.0.1:0", &extra, &env);
        self.stores.push(d);
        self.stores.last().expect("just pushed")
    }

    /// Client settings for tests: the default retry budget.
    pub fn client_config() -> ClientConfig {
        ClientConfig::default()
    }

    /// A client connected to this cluster's PD.
    pub async fn client(&self) -> Client {
        Client::connect_with([self.pd.addr.clone()], Self::client_config())
            .await
            .expect("connect to PD")
    }

    /// Runs `rdb-cli --pd <pd> args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("rdb-cli"))
            .arg("--pd")
            .arg(&self.pd.addr)
            .args(args)
            .output()
            .expect("run rdb-cli")
    }
}

/// Waits (at most 30 s) until PD lists every region with `want` replicas,
/// all voters (PD's replica checker places them); the regions then.
pub async fn wait_for_replicas(client: &Client, want: usize) -> Vec<rdb_client::RegionRoute> {
    let routes = eventually(300, Duration::from_millis(100), || {
        let c = client.clone();
        async move {
            c.clear_region_cache();
            let routes = c.regions().await.ok()?;
            routes
                .iter()
                .all(|route| {
                    route.region.as_ref().is_some_and(|r| {
                        r.peers.len() == want
                            && r.peers
                                .iter()
                                .all(|p| p.role == rdb_client::PeerRole::Voter as i32)
                    })
                })
                .then_some(routes)
        }
    })
    .await;
    routes.unwrap_or_else(|| panic!("PD did not bring every region to {want} voters in 30 s"))
}

/// Runs `f` until it returns `Some`, up to `tries` times `every` apart.
pub async fn eventually<T, F, Fut>(tries: u32, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..tries {
        if let Some(t) = f().await {
            return Some(t);
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// `GET http://addr/path` over a plain TCP connection: (status code, body).
/// Enough HTTP/1.1 for the daemons' status endpoint.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // The status endpoint answers with a Content-Length, never chunked.
    Ok((code, body.to_string()))
}

/// The value of the Prometheus sample `name{labels}` (labels exactly as
/// rendered, e.g. `code="OK",method="/flaredb.v1.Kv/Get"`; empty for none).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether the process at `addr` answers the Raft lane's opening (8 bytes,
/// `FDBRAFT\x01`, sent back by a process that serves the lane), within 2 s.
pub fn answers_raft_lane(addr: &str) -> bool {
    use std::io::{Read, Write};
    const MAGIC: &[u8; 8] = b"FDBRAFT\x01";
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(MAGIC).is_err() {
        return false;
    }
    let mut back = [0u8; 8];
    s.read_exact(&mut back).is_ok() && &back == MAGIC
}

/// A throw-away certificate authority and certificates, as PEM files in a
/// temporary directory: `ca.pem`; `node.pem`/`node.key` (for 127.0.0.1 and
/// localhost, used by PD and stores, also as their client certificate);
/// `client.pem`/`client.key` (a client certificate from the same CA); and
/// `other-ca.pem` with `other-client.pem`/`other-client.key` from an
/// unrelated CA.
pub struct TestPki {
    /// Holds the files.
    pub dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA and certificates (rcgen).
    pub fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::Builder::new()
            .prefix("flaredb-pki-")
            .tempdir()
            .expect("temp dir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write PEM file")
        };
        for (prefix, cn) in [("", "FlareDB test CA"), ("other-", "Unrelated CA")] {
            let ca_key = KeyPair::generate().expect("CA key");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name.push(DnType::CommonName, cn);
            let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");
            write(&format!("{prefix}ca.pem"), ca_cert.pem());
            let issuer = Issuer::new(ca, ca_key);
            let leaves: &[(&str, Vec<String>)] = if prefix.is_empty() {
                &[
                    ("node", vec!["127.0.0.1".into(), "localhost".into()]),
                    ("client", vec!["flaredb-client".into()]),
                ]
            } else {
                &[("client", vec!["flaredb-client".into()])]
            };
            for (name, sans) in leaves {
                let key = KeyPair::generate().expect("leaf key");
                let mut params = CertificateParams::new(sans.clone()).expect("leaf params");
                params
                    .distinguished_name
                    .push(DnType::CommonName, format!("{prefix}{name}"));
                let cert = params.signed_by(&key, &issuer).expect("sign leaf");
                write(&format!("{prefix}{name}.pem"), cert.pem());
                write(&format!("{prefix}{name}.key"), key.serialize_pem());
            }
        }
        TestPki { dir }
    }

    /// Path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Flags that make a daemon serve TLS with the node certificate
    /// (and require client certificates with `mutual`).
    pub fn node_flags(&self, mutual: bool) -> Vec<String> {
        let mut f = vec![
            "--ca-path".to_string(),
            self.path("ca.pem").display().to_string(),
            "--cert-path".to_string(),
            self.path("node.pem").display().to_string(),
            "--key-path".to_string(),
            self.path("node.key").display().to_string(),
        ];
        if mutual {
            f.push("--require-client-cert".into());
        }
        f
    }

    /// Client TLS with the CA file `ca` and, optionally, a certificate
    /// `NAME.pem` / `NAME.key`.
    pub fn client_tls(&self, ca: &str, cert: Option<&str>) -> rdb_client::ClientTls {
        let (c, k) = match cert {
            Some(n) => (
                Some(self.path(&format!("{n}.pem"))),
                Some(self.path(&format!("{n}.key"))),
            ),
            None => (None, None),
        };
        rdb_client::ClientTls::from_pem_files(&self.path(ca), c.as_deref(), k.as_deref())
            .expect("load client TLS files")
    }
}

/// A free loopback port (bound, read, released: another process could take
/// it in between, which on a test machine is rare enough).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free loopback port")
}

/// A single-node etcd (Debian's `etcd-server`, installed by
/// scripts/setup-deps.sh) on free loopback ports in a temporary directory,
/// killed when dropped. Used to test rdb-bench's etcd adapter.
pub struct Etcd {
    child: Child,
    /// Client endpoint, HOST:PORT.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it has elected itself and answers `/health`.
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("flaredb-etcd-")
            .tempdir()
            .expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run etcd (install Debian's etcd-server: scripts/setup-deps.sh does)");
        let mut etcd = Etcd {
            child,
            addr: format!("127.0.0.1:{client}"),
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !etcd.healthy() {
            if let Ok(Some(st)) = etcd.child.try_wait() {
                let log = std::fs::read_to_string(etcd._dir.path().join("etcd.log"));
                panic!("etcd exited with {st}: {}", log.unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not listening after {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }
}

impl Etcd {
    /// The etcd process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether etcd's `/health` endpoint says it can serve (leader elected).
    fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
