//! PD's protobuf meta records, as `Cluster::open` loads them: `store/<id>`
//! (`Store`) and `region/<id>` (`Region`). PD's u64 records are the
//! `meta_u64` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rdb_proto::v1::{Region, Store};
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::message_bytes(data, |b: &[u8]| Store::decode(b), Store::encode_to_vec);
    check::message_bytes(data, |b: &[u8]| Region::decode(b), Region::encode_to_vec);
});
