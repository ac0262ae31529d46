//! The `IDENTITY` file of a data directory (`role=`, `cluster_id=`,
//! `node_id=` lines), as `DataDir::identity` reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::identity_bytes(data);
});
