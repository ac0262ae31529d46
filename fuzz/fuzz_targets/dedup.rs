//! A value of the `dedup` column family (the stored answer to an
//! exactly-once write request): `[0x01][u64 BE applied at][u32 BE count]
//! [results]`. The input is decoded as a stored record (never a panic; an
//! accepted record re-encodes to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::dedup_bytes(data);
});
