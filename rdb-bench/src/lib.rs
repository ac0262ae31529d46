//! rdb-bench as a library: the pieces the `rdb-bench` binary is made of,
//! shared with the integration tests (which start daemons the same way the
//! bench's local cluster does).
//!
//! Layout: `args` (the command line and its checks), `runner` (one run:
//! preload, workers, clock, report), `workload` (key and operation
//! pickers), `target` (FlareDB or etcd behind one interface), `report`
//! (histograms and the text/JSON report), `cpu` (CPU time of the servers
//! and the client from /proc), `local` (a local PD and store).

pub mod args;
pub mod cpu;
pub mod local;
pub mod report;
pub mod runner;
pub mod target;
pub mod workload;
