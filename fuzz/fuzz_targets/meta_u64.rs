//! The u64 meta records: the engine's `last_version`, PD's `cluster_id`,
//! `id_alloc_end` and `tso_window` (8 bytes, big-endian).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::meta_u64_bytes(data);
    let mut n = [0u8; 8];
    let len = data.len().min(8);
    n[..len].copy_from_slice(&data[..len]);
    check::meta_u64_round_trip(u64::from_le_bytes(n));
});
