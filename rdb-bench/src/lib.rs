//! rdb-bench as a library: the pieces the `rdb-bench` binary is made of,
//! shared with the integration tests (which start daemons the same way the
//! bench's local cluster does).

pub mod local;
pub mod report;
pub mod target;
pub mod workload;
