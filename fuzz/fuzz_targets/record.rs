//! A value of the `data` column family: `[0x01][u64 BE version][value]`.
//! The input is decoded as a stored record, and also read as a (version,
//! value) pair that must survive encoding and decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::record_bytes(data);
    let (head, value) = data.split_at(data.len().min(8));
    let mut version = [0u8; 8];
    version[..head.len()].copy_from_slice(head);
    check::record_round_trip(u64::from_le_bytes(version), value);
});
