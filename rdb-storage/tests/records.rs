//! Decoding of every record read back from disk, on random inputs: the
//! stable-toolchain counterpart of the cargo-fuzz targets in `fuzz/`. Both
//! run the same checks, `rdb_storage::check` (see `docs/fuzzing.md`).

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use rdb_proto::v1::{Peer, Region, RegionEpoch, Store};
use rdb_storage::check;
use rdb_storage::codec::{encode_dedup, encode_record};
use rdb_storage::{CasOutcome, Identity, OpResult, VersionedValue};

/// Bytes that are sometimes a well-formed record: a tag that is often
/// `0x01`, then anything (shorter or longer than the rest of the header).
fn record_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x01u8), any::<u8>()],
        vec(any::<u8>(), 0..24),
    )
        .prop_map(|(tag, rest)| {
            let mut raw = vec![tag];
            raw.extend(rest);
            raw
        })
}

fn op_result() -> impl Strategy<Value = OpResult> {
    let versioned = (any::<u64>(), vec(any::<u8>(), 0..6))
        .prop_map(|(version, value)| VersionedValue { version, value });
    prop_oneof![
        any::<u64>().prop_map(OpResult::Put),
        any::<bool>().prop_map(OpResult::Delete),
        (
            any::<bool>(),
            proptest::option::of(versioned),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(succeeded, current, new_version)| OpResult::Cas(CasOutcome {
                    succeeded,
                    current,
                    new_version
                })
            ),
        any::<u64>().prop_map(OpResult::DeleteRange),
        Just(OpResult::Done),
    ]
}

/// Bytes that are often close to an exactly-once record: a real encoding,
/// damaged, or with a random tail after a well-formed header.
fn dedup_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u64>(), vec(op_result(), 0..4))
            .prop_flat_map(|(t, results)| damaged(encode_dedup(t, &results))),
        (any::<u64>(), 0u32..4, vec(any::<u8>(), 0..24)).prop_map(|(t, n, rest)| {
            let mut raw = vec![0x01];
            raw.extend_from_slice(&t.to_be_bytes());
            raw.extend_from_slice(&n.to_be_bytes());
            raw.extend(rest);
            raw
        }),
        vec(any::<u8>(), 0..24),
    ]
}

/// Lines of an `IDENTITY` file, mostly readable ones.
fn identity_line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ \t]*role[ \t]*=[ \t]*[a-z=#]{0,8}[ \t]*".prop_map(String::from),
        "[ \t]*cluster_id[ \t]*=[ \t]*\\+?[0-9]{1,21}[ \t]*".prop_map(String::from),
        "[ \t]*node_id[ \t]*=[ \t]*[0-9]{1,21}".prop_map(String::from),
        "[ \t]*#.{0,10}".prop_map(String::from),
        Just(String::new()),
        ".{0,12}".prop_map(String::from),
    ]
}

fn epoch() -> impl Strategy<Value = Option<RegionEpoch>> {
    proptest::option::of(
        (any::<u64>(), any::<u64>())
            .prop_map(|(version, conf_ver)| RegionEpoch { version, conf_ver }),
    )
}

fn peer() -> impl Strategy<Value = Peer> {
    (any::<u64>(), any::<u64>(), any::<i32>()).prop_map(|(id, store_id, role)| Peer {
        id,
        store_id,
        role,
    })
}

fn region() -> impl Strategy<Value = Region> {
    (
        any::<u64>(),
        vec(any::<u8>(), 0..12),
        vec(any::<u8>(), 0..12),
        epoch(),
        any::<u64>(),
        vec(peer(), 0..4),
    )
        .prop_map(|(id, start_key, end_key, epoch, store_id, peers)| Region {
            id,
            start_key,
            end_key,
            epoch,
            store_id,
            peers,
        })
}

fn store() -> impl Strategy<Value = Store> {
    (
        any::<u64>(),
        ".{0,16}",
        any::<i32>(),
        any::<u64>(),
        ".{0,8}",
        any::<bool>(),
    )
        .prop_map(
            |(id, address, state, last_heartbeat_ms, version, draining)| Store {
                id,
                address,
                state,
                last_heartbeat_ms,
                version,
                draining,
                ..Default::default()
            },
        )
}

/// An encoding with random damage: cut short, one byte changed, or both.
fn damaged(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len();
    (0..=len, any::<prop::sample::Index>(), any::<u8>()).prop_map(move |(cut, at, b)| {
        let mut raw = bytes.clone();
        if !raw.is_empty() {
            let i = at.index(raw.len());
            raw[i] = b;
        }
        raw.truncate(cut.max(len / 2));
        raw
    })
}

fn check_store(raw: &[u8]) -> bool {
    check::message_bytes(raw, |b: &[u8]| Store::decode(b), Store::encode_to_vec)
}

fn check_region(raw: &[u8]) -> bool {
    check::message_bytes(raw, |b: &[u8]| Region::decode(b), Region::encode_to_vec)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn data_records(raw in record_like()) {
        check::record_bytes(&raw);
    }

    #[test]
    fn data_record_round_trip(version in any::<u64>(), value in vec(any::<u8>(), 0..64)) {
        check::record_round_trip(version, &value);
    }

    #[test]
    fn dedup_records(raw in dedup_like()) {
        check::dedup_bytes(&raw);
    }

    #[test]
    fn dedup_record_round_trip(t in any::<u64>(), results in vec(op_result(), 0..6)) {
        check::dedup_round_trip(t, &results);
    }

    #[test]
    fn meta_u64(raw in vec(any::<u8>(), 0..12), n in any::<u64>()) {
        check::meta_u64_bytes(&raw);
        check::meta_u64_round_trip(n);
    }

    #[test]
    fn identity_files(lines in vec(identity_line(), 0..6), crlf in any::<bool>()) {
        let text = lines.join(if crlf { "\r\n" } else { "\n" });
        check::identity_text(&text);
        check::identity_bytes(text.as_bytes());
    }

    #[test]
    fn identity_round_trip(role in "[a-z_=#-]{0,10}", cluster_id in any::<u64>(), node_id in any::<u64>()) {
        check::identity_round_trip(&Identity { role, cluster_id, node_id });
    }

    #[test]
    fn protobuf_records_from_random_bytes(raw in vec(any::<u8>(), 0..48)) {
        check_store(&raw);
        check_region(&raw);
    }

    #[test]
    fn store_records(msg in store()) {
        check::message_round_trip(&msg, |b: &[u8]| Store::decode(b), Store::encode_to_vec);
    }

    #[test]
    fn region_records(msg in region()) {
        check::message_round_trip(&msg, |b: &[u8]| Region::decode(b), Region::encode_to_vec);
    }

    #[test]
    fn damaged_protobuf_records(
        raw in region().prop_flat_map(|m| damaged(m.encode_to_vec()))
    ) {
        check_store(&raw);
        check_region(&raw);
    }
}

/// The inputs reach both outcomes of every check: accepted and rejected.
#[test]
fn inputs_reach_both_outcomes() {
    let region = Region {
        id: 7,
        start_key: b"a".to_vec(),
        end_key: b"b".to_vec(),
        epoch: Some(RegionEpoch {
            version: 2,
            conf_ver: 3,
        }),
        store_id: 1,
        peers: vec![Peer {
            id: 9,
            store_id: 1,
            role: 1,
        }],
    };
    let bytes = region.encode_to_vec();
    assert!(check_region(&bytes));
    assert!(!check_region(&bytes[..bytes.len() - 1]));
    // Invalid UTF-8 in Store.address (field 2) is rejected.
    assert!(!check_store(&[0x12, 1, 0xff]));
    assert!(check_store(&[0x12, 1, b'x']));
    // Unknown fields are skipped, and dropped by re-encoding.
    assert!(check_region(&[0xf8, 0x01, 5]));
    check::record_bytes(&encode_record(9, b"v"));
    let dedup = encode_dedup(5, &[OpResult::Put(1), OpResult::Delete(true)]);
    assert!(rdb_storage::codec::decode_dedup(&dedup).is_ok());
    assert!(rdb_storage::codec::decode_dedup(&dedup[..dedup.len() - 1]).is_err());
    check::dedup_bytes(&dedup);
}
