//! A store's protobuf meta records, as `load_regions` loads them:
//! `region/<id>` (`Region`, with its peers). Its data records are the
//! `record` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rdb_proto::v1::Region;
use rdb_storage::check;

fuzz_target!(|data: &[u8]| {
    check::message_bytes(data, |b: &[u8]| Region::decode(b), Region::encode_to_vec);
});
