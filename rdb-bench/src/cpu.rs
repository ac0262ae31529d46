//! CPU time of processes, read from `/proc/PID/stat`, so that a report can
//! say how much CPU the servers (and this client) spent per operation.
//!
//! CPU time per operation is much steadier than throughput on a shared,
//! noisy machine: it does not count the time a process waits for the disk,
//! the network or a core, only the time it runs. A process's `utime` and
//! `stime` include every thread it has or had (also threads that exited,
//! such as idle blocking-pool threads).

use std::path::Path;

use serde::Serialize;

/// A process whose CPU time a run measures.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), for the report.
    pub name: String,
}

impl Watched {
    /// A process that exists now; the error says why not.
    pub fn new(pid: u32) -> Result<Watched, String> {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(|e| format!("process {pid}: cannot read /proc/{pid}/comm: {e}"))?;
        Ok(Watched {
            pid,
            name: name.trim().to_string(),
        })
    }
}

/// The CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64, String> {
    parse_stat(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

/// This process's own CPU time so far, in seconds.
pub fn own_cpu_secs() -> Result<f64, String> {
    parse_stat(Path::new("/proc/self/stat"))
}

fn parse_stat(path: &Path) -> Result<f64, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let ticks =
        stat_ticks(&text).ok_or_else(|| format!("{}: unexpected format", path.display()))?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat`
/// line. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_ticks(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU readings of the watched processes and of this one at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// One reading per watched process (`None`: it could not be read, for
    /// example because the process exited).
    servers: Vec<Option<f64>>,
    /// This process.
    client: Option<f64>,
}

/// Takes a sample of `watched` and of this process.
pub fn sample(watched: &[Watched]) -> Sample {
    Sample {
        servers: watched.iter().map(|w| cpu_secs(w.pid).ok()).collect(),
        client: own_cpu_secs().ok(),
    }
}

/// One process's CPU time over the measured interval.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub name: String,
    /// CPU seconds (user + system) used during the measured interval.
    pub cpu_secs: f64,
    /// Microseconds of CPU per completed operation.
    pub cpu_us_per_op: f64,
}

/// CPU time of the servers and of the client over the measured interval.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Each watched server process.
    pub servers: Vec<ProcessCpu>,
    /// All watched server processes together, microseconds per operation
    /// (`None` when no server process was watched).
    pub server_cpu_us_per_op: Option<f64>,
    /// This benchmark client (all its threads), microseconds per operation.
    pub client_cpu_us_per_op: Option<f64>,
    /// Client CPU seconds over the interval.
    pub client_cpu_secs: Option<f64>,
}

fn per_op(secs: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        (secs * 1e6 / ops as f64 * 10.0).round() / 10.0
    }
}

impl CpuReport {
    /// The CPU used between `before` and `after` by `watched` and this
    /// process, per one of `ops` operations.
    pub fn between(watched: &[Watched], before: &Sample, after: &Sample, ops: u64) -> CpuReport {
        let servers: Vec<ProcessCpu> = watched
            .iter()
            .zip(before.servers.iter().zip(&after.servers))
            .filter_map(|(w, (b, a))| {
                let secs = (a.as_ref()? - b.as_ref()?).max(0.0);
                Some(ProcessCpu {
                    pid: w.pid,
                    name: w.name.clone(),
                    cpu_secs: (secs * 1000.0).round() / 1000.0,
                    cpu_us_per_op: per_op(secs, ops),
                })
            })
            .collect();
        let server_cpu_us_per_op = (!servers.is_empty()).then(|| {
            let total: f64 = servers.iter().map(|s| s.cpu_secs).sum();
            per_op(total, ops)
        });
        let client = match (before.client, after.client) {
            (Some(b), Some(a)) => Some((a - b).max(0.0)),
            _ => None,
        };
        CpuReport {
            servers,
            server_cpu_us_per_op,
            client_cpu_us_per_op: client.map(|s| per_op(s, ops)),
            client_cpu_secs: client.map(|s| (s * 1000.0).round() / 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        // A command name with spaces and parentheses, as the kernel prints it.
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 55 0 0";
        assert_eq!(stat_ticks(line), Some(281));
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = own_cpu_secs().expect("own stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = own_cpu_secs().expect("own stat");
        assert!(after - before >= 0.1, "{before} -> {after} ({x})");
    }

    #[test]
    fn per_op_figures() {
        let w = vec![Watched {
            pid: 1,
            name: "rdb-server".into(),
        }];
        let before = Sample {
            servers: vec![Some(1.0)],
            client: Some(2.0),
        };
        let after = Sample {
            servers: vec![Some(3.0)],
            client: Some(2.5),
        };
        let r = CpuReport::between(&w, &before, &after, 100_000);
        assert_eq!(r.server_cpu_us_per_op, Some(20.0));
        assert_eq!(r.client_cpu_us_per_op, Some(5.0));
        assert_eq!(r.servers[0].cpu_secs, 2.0);
        // A process that could not be read is left out, not counted as 0.
        let gone = Sample {
            servers: vec![None],
            client: Some(2.5),
        };
        let r = CpuReport::between(&w, &before, &gone, 100);
        assert!(r.servers.is_empty());
        assert_eq!(r.server_cpu_us_per_op, None);
    }
}
