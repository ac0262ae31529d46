//! Test harness: starts real `rdb-pd` and `rdb-server` processes on free
//! loopback ports, each in its own temporary data directory, and stops them
//! (kill -9) when dropped. Daemon logs go to `<data dir>.log`, printed when a
//! daemon fails to start.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdb_client::{Client, ClientConfig};

/// How long a daemon may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a workspace binary (built by `cargo build --workspace --bins`).
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
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        let mut parts = rest.split_whitespace();
                        let addr = parts.next().unwrap_or_default().to_string();
                        let id = parts
                            .next()
                            .and_then(|p| p.split_once('='))
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or_default();
                        return Ok(Daemon {
                            kind,
                            child: Some(child),
                            addr,
                            dir: dir.to_path_buf(),
                            id,
                            extra: extra.to_vec(),
                            env: env.to_vec(),
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(|e| e.to_string())?;
                    return Err(format!("{bin} exited with {status} before it was ready"));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{bin} exited with {status} before it was ready"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{bin} not ready after {READY_TIMEOUT:?}"));
            }
        }
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
}

impl TestCluster {
    /// Starts a PD and `stores` stores.
    pub fn start(stores: usize) -> TestCluster {
        let root = tempfile::Builder::new()
            .prefix("flaredb-test-")
            .tempdir()
            .expect("temp dir");
        let pd = Daemon::start(
            Kind::Pd,
            &root.path().join("pd"),
            "127.0.0.1:0",
            &["--store-down-after-secs".into(), "3".into()],
        );
        let mut c = TestCluster {
            pd,
            stores: Vec::new(),
            root,
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
        let d = Daemon::start_env(Kind::Server, &dir, "127.0.0.1:0", &extra, env);
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
