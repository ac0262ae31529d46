//! A throw-away local FlareDB cluster (one PD, one store) in a temporary
//! directory, for runs without `--pd`. Stopped (SIGTERM, then SIGKILL) and
//! deleted when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::target::BenchError;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LocalCluster {
    /// PD address.
    pub pd: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// Where `rdb-pd` and `rdb-server` are: `bin_dir`, else next to this executable.
fn daemon_path(bin_dir: Option<&Path>, name: &str) -> Result<PathBuf, BenchError> {
    let dir = match bin_dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or_else(|| BenchError::Local("cannot find this executable's directory".into()))?,
    };
    let path = dir.join(name);
    if !path.exists() {
        return Err(BenchError::Local(format!(
            "{} not found: build it (cargo build --release --bins) or pass --bin-dir, or give --pd",
            path.display()
        )));
    }
    Ok(path)
}

/// Waits for `child` to print a stdout line starting with `prefix` (a
/// daemon's ready line) and returns the rest of that line. Fails if the
/// child exits first or `timeout` passes (the child is then killed). The
/// child's stdout must be piped; it is drained on a thread afterwards.
pub fn wait_ready(child: &mut Child, prefix: &str, timeout: Duration) -> Result<String, String> {
    let stdout = child
        .stdout
        .take()
        .ok_or("the daemon's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!("exited with {status} before it was ready"));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before it was ready"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not ready after {timeout:?}"));
        }
    }
}

/// Starts `bin` with `args`, waits for its `<bin> listening on ADDR ...` line.
fn start(bin: &Path, args: &[&str], log: &Path) -> Result<(Child, String), BenchError> {
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let log_file = std::fs::File::create(log)
        .map_err(|e| BenchError::Local(format!("{}: {e}", log.display())))?;
    let mut child = Command::new(bin)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| BenchError::Local(format!("cannot run {}: {e}", bin.display())))?;
    match wait_ready(&mut child, &format!("{name} listening on "), READY_TIMEOUT) {
        Ok(rest) => {
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Ok((child, addr))
        }
        Err(e) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Err(BenchError::Local(format!("{name} {e}; its log:\n{text}")))
        }
    }
}

impl LocalCluster {
    /// Starts PD and one store on free loopback ports, writes fsynced.
    pub fn start(bin_dir: Option<&Path>) -> Result<LocalCluster, BenchError> {
        let pd_bin = daemon_path(bin_dir, "rdb-pd")?;
        let server_bin = daemon_path(bin_dir, "rdb-server")?;
        let dir = tempfile::Builder::new()
            .prefix("rdb-bench-")
            .tempdir()
            .map_err(|e| BenchError::Local(format!("temporary directory: {e}")))?;
        let root = dir.path().to_path_buf();
        let path = |p: &str| root.join(p);
        let mut cluster = LocalCluster {
            pd: String::new(),
            children: Vec::new(),
            _dir: dir,
        };
        let pd_dir = path("pd");
        let (pd, pd_addr) = start(
            &pd_bin,
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &pd_dir.to_string_lossy(),
            ],
            &path("pd.log"),
        )?;
        cluster.children.push(pd);
        let store_dir = path("store1");
        let (store, _) = start(
            &server_bin,
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &store_dir.to_string_lossy(),
                "--pd",
                &pd_addr,
            ],
            &path("store1.log"),
        )?;
        cluster.children.push(store);
        cluster.pd = pd_addr;
        Ok(cluster)
    }
}

impl LocalCluster {
    /// The process ids of its daemons (PD first), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Stores first, then PD.
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}
