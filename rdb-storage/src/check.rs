//! Properties of every record FlareDB reads back from disk, as functions that
//! panic when a property does not hold.
//!
//! They are written once and driven twice: by the cargo-fuzz targets in
//! `fuzz/` (nightly, coverage-guided, see `docs/fuzzing.md`) and by the
//! proptest suite `rdb-storage/tests/records.rs`, which runs on stable with
//! `cargo test` in CI.
//!
//! The records read back from disk:
//!
//! | record                                   | where               | decoder                 | check                 |
//! |------------------------------------------|---------------------|-------------------------|-----------------------|
//! | value in the `data` column family        | engine, writer      | [`decode_record`]       | [`record_bytes`], [`record_round_trip`] |
//! | `\x00last_version` (meta)                | engine              | [`decode_u64`]          | [`meta_u64_bytes`], [`meta_u64_round_trip`] |
//! | exactly-once record (`dedup`)            | writer, compaction filter | [`decode_dedup`], [`decode_dedup_time`] | [`dedup_bytes`], [`dedup_round_trip`] |
//! | `cluster_id`, `id_alloc_end` (PD meta)   | rdb-pd cluster      | [`decode_u64`]          | same                  |
//! | `tso_window` (PD meta)                   | rdb-pd tso          | [`decode_u64`]          | same                  |
//! | `store/<id>` (PD meta)                   | rdb-pd cluster      | protobuf `Store`        | [`message_bytes`], [`message_round_trip`] |
//! | `region/<id>` (PD and server meta)       | rdb-pd, rdb-server  | protobuf `Region`       | same                  |
//! | `region_version/<id>` (server meta)      | rdb-server peer     | [`decode_u64`]          | [`meta_u64_bytes`], [`meta_u64_round_trip`] |
//! | `IDENTITY` file of a data directory      | [`DataDir`](crate::DataDir) | [`Identity::parse`] | [`identity_bytes`], [`identity_round_trip`] |
//!
//! PD's `bootstrapped` meta key is only tested for presence; its value is
//! never decoded. The protobuf checks are generic over the decoder and the
//! encoder (prost's `M::decode` and `encode_to_vec`), so this crate needs no
//! protobuf dependency.

use std::fmt::{Debug, Display};

use crate::codec::{
    decode_counter, decode_dedup, decode_dedup_time, decode_record, decode_u64, encode_dedup,
    encode_record, DEDUP_HEADER_LEN, DEDUP_V1, HEADER_LEN, MAX_COUNTER, RECORD_V1,
};
use crate::{Identity, OpResult, StorageError};

/// Arbitrary bytes as a `data` record: decoding never panics; it accepts
/// exactly the inputs of at least [`HEADER_LEN`] bytes that start with
/// [`RECORD_V1`], rejects every other input as corruption, and an accepted
/// record encodes back to the same bytes.
pub fn record_bytes(raw: &[u8]) {
    let well_formed = raw.len() >= HEADER_LEN && raw[0] == RECORD_V1;
    match decode_record(raw) {
        Ok((version, value)) => {
            assert!(well_formed, "accepted a malformed record {raw:02x?}");
            assert_eq!(
                encode_record(version, value),
                raw,
                "re-encoding changed the record"
            );
        }
        Err(StorageError::Corruption(_)) => {
            assert!(!well_formed, "rejected a well-formed record {raw:02x?}")
        }
        Err(e) => panic!("decode_record failed with a non-corruption error: {e}"),
    }
}

/// A (version, value) pair survives encoding and decoding, the encoding is
/// header + value, and the encoding cut inside its header or with any other
/// format tag is rejected.
pub fn record_round_trip(version: u64, value: &[u8]) {
    let raw = encode_record(version, value);
    assert_eq!(raw.len(), HEADER_LEN + value.len());
    let decoded = decode_record(&raw).expect("an encoded record does not decode");
    assert_eq!(decoded, (version, value), "record round trip");
    for cut in 0..HEADER_LEN {
        assert!(
            decode_record(&raw[..cut]).is_err(),
            "accepted a record cut to {cut} bytes"
        );
    }
    let mut bad = raw.clone();
    for tag in [0x00, RECORD_V1 + 1, 0xff] {
        bad[0] = tag;
        assert!(
            decode_record(&bad).is_err(),
            "accepted format tag {tag:#04x}"
        );
    }
}

/// Arbitrary bytes as an exactly-once record: decoding never panics and
/// fails only as corruption; an accepted record encodes back to the same
/// bytes (the encoding is canonical); the header-only decoder of the
/// compaction filter agrees with the full one on every record the full one
/// accepts, and refuses exactly the inputs without a well-formed header.
pub fn dedup_bytes(raw: &[u8]) {
    let header_ok = raw.len() >= DEDUP_HEADER_LEN && raw[0] == DEDUP_V1;
    match decode_dedup_time(raw) {
        Ok(_) => assert!(header_ok, "accepted a malformed header {raw:02x?}"),
        Err(StorageError::Corruption(_)) => {
            assert!(!header_ok, "rejected a well-formed header {raw:02x?}")
        }
        Err(e) => panic!("decode_dedup_time failed with a non-corruption error: {e}"),
    }
    match decode_dedup(raw) {
        Ok((applied, results)) => {
            assert_eq!(
                decode_dedup_time(raw).ok(),
                Some(applied),
                "the two decoders disagree"
            );
            assert_eq!(
                encode_dedup(applied, &results),
                raw,
                "re-encoding changed the record"
            );
        }
        Err(StorageError::Corruption(_)) => {}
        Err(e) => panic!("decode_dedup failed with a non-corruption error: {e}"),
    }
}

/// Results survive encoding and decoding; the encoding cut short anywhere,
/// or with one byte more, is rejected.
pub fn dedup_round_trip(applied_ms: u64, results: &[OpResult]) {
    let raw = encode_dedup(applied_ms, results);
    let decoded = decode_dedup(&raw).expect("an encoded exactly-once record does not decode");
    assert_eq!(
        decoded,
        (applied_ms, results.to_vec()),
        "exactly-once round trip"
    );
    for cut in 0..raw.len() {
        assert!(
            decode_dedup(&raw[..cut]).is_err(),
            "accepted an exactly-once record cut to {cut} bytes"
        );
    }
    let mut long = raw;
    long.push(0);
    assert!(decode_dedup(&long).is_err(), "accepted a trailing byte");
}

/// Arbitrary bytes as a u64 meta record (`last_version`, PD's `cluster_id`,
/// `id_alloc_end` and `tso_window`): accepted exactly when 8 bytes long, as
/// their big-endian value; anything else is corruption naming the record.
pub fn meta_u64_bytes(raw: &[u8]) {
    match decode_u64(raw, "fuzzed_counter") {
        Ok(n) => {
            assert_eq!(raw.len(), 8, "accepted {} bytes as a u64", raw.len());
            assert_eq!(n.to_be_bytes(), raw, "decoded the wrong value");
        }
        Err(StorageError::Corruption(m)) => {
            assert_ne!(raw.len(), 8, "rejected 8 bytes as a u64");
            assert!(
                m.contains("fuzzed_counter"),
                "error does not name the record: {m}"
            );
        }
        Err(e) => panic!("decode_u64 failed with a non-corruption error: {e}"),
    }
    // The counters the daemons count up from (`last_version`,
    // `id_alloc_end`): accepted only where the next value cannot overflow.
    match decode_counter(raw, "fuzzed_counter", MAX_COUNTER) {
        Ok(n) => {
            assert!(n <= MAX_COUNTER, "accepted counter {n}");
            assert!(n.checked_add(1).is_some());
        }
        Err(StorageError::Corruption(m)) => assert!(
            m.contains("fuzzed_counter"),
            "error does not name the record: {m}"
        ),
        Err(e) => panic!("decode_counter failed with a non-corruption error: {e}"),
    }
}

/// A u64 counter survives its on-disk encoding; one byte more or less is
/// rejected.
pub fn meta_u64_round_trip(n: u64) {
    let raw = n.to_be_bytes();
    assert_eq!(decode_u64(&raw, "counter").expect("8 bytes rejected"), n);
    assert!(
        decode_u64(&raw[..7], "counter").is_err(),
        "accepted 7 bytes"
    );
    let mut long = raw.to_vec();
    long.push(0);
    assert!(decode_u64(&long, "counter").is_err(), "accepted 9 bytes");
}

/// Arbitrary bytes as an `IDENTITY` file. [`DataDir::identity`] reads the
/// file as UTF-8 text (other bytes are an I/O error before any parsing), so
/// only UTF-8 input reaches [`identity_text`].
///
/// [`DataDir::identity`]: crate::DataDir::identity
pub fn identity_bytes(raw: &[u8]) {
    if let Ok(text) = std::str::from_utf8(raw) {
        identity_text(text);
    }
}

/// Arbitrary text as an `IDENTITY` file: parsing never panics, an error names
/// the file, and a parsed identity is written back ([`Identity::to_text`]) as
/// text that parses to the same identity.
pub fn identity_text(text: &str) {
    match Identity::parse(text) {
        Ok(id) => {
            assert!(
                writable_role(&id.role),
                "parsed a role that cannot be written back: {:?}",
                id.role
            );
            let again = Identity::parse(&id.to_text())
                .unwrap_or_else(|e| panic!("written identity {id:?} does not parse: {e}"));
            assert_eq!(again, id, "identity round trip");
        }
        Err(m) => assert!(
            m.starts_with("IDENTITY "),
            "error does not name the file: {m}"
        ),
    }
}

/// Whether [`Identity::to_text`] can write `role` so that it reads back: one
/// line without surrounding white space (the parser trims values).
pub fn writable_role(role: &str) -> bool {
    !role.contains('\n') && role.trim() == role
}

/// An identity with a [`writable_role`] survives writing and parsing; the
/// written text with any of its three lines missing, with a line that is not
/// `key=value`, with an unknown key or with a non-numeric id is rejected.
pub fn identity_round_trip(id: &Identity) {
    assert!(writable_role(&id.role), "unwritable role {:?}", id.role);
    let text = id.to_text();
    assert_eq!(
        Identity::parse(&text).as_ref(),
        Ok(id),
        "identity round trip"
    );
    for key in ["role=", "cluster_id=", "node_id="] {
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = Identity::parse(&without).expect_err("accepted an identity without a line");
        assert!(err.contains("incomplete"), "{err}");
    }
    for bad_line in ["garbage", "colour=blue", "cluster_id=x", "node_id=-1"] {
        let err = Identity::parse(&format!("{text}{bad_line}\n"))
            .expect_err("accepted an unreadable line");
        assert!(
            err.contains(bad_line),
            "error does not quote the line: {err}"
        );
    }
}

/// Arbitrary bytes as a protobuf record of type `M`, given its decoder and
/// encoder: decoding never panics; a decoded message encodes to bytes that
/// decode to an equal message and encode to the same bytes again. Returns
/// whether the input decoded.
pub fn message_bytes<M, E>(
    raw: &[u8],
    decode: impl Fn(&[u8]) -> Result<M, E>,
    encode: impl Fn(&M) -> Vec<u8>,
) -> bool
where
    M: PartialEq + Debug,
    E: Display,
{
    let Ok(msg) = decode(raw) else {
        return false;
    };
    let bytes = encode(&msg);
    let again =
        decode(&bytes).unwrap_or_else(|e| panic!("re-encoded {msg:?} does not decode: {e}"));
    assert_eq!(again, msg, "message round trip");
    assert_eq!(encode(&again), bytes, "encoding of {msg:?} is not stable");
    true
}

/// A message survives encoding and decoding, and its encoding without its
/// last byte is rejected (it then ends inside the last field).
pub fn message_round_trip<M, E>(
    msg: &M,
    decode: impl Fn(&[u8]) -> Result<M, E>,
    encode: impl Fn(&M) -> Vec<u8>,
) where
    M: PartialEq + Debug,
    E: Display,
{
    let bytes = encode(msg);
    let again = decode(&bytes).unwrap_or_else(|e| panic!("encoded {msg:?} does not decode: {e}"));
    assert_eq!(&again, msg, "message round trip");
    if let Some((_, cut)) = bytes.split_last() {
        assert!(
            decode(cut).is_err(),
            "accepted the encoding of {msg:?} without its last byte"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_edge_cases() {
        for raw in [
            &b""[..],
            b"\x01",
            &[1; 8],
            &[1; 9],
            &[0; 9],
            &[0xff; 20],
            &[1; 13],
        ] {
            record_bytes(raw);
            dedup_bytes(raw);
            meta_u64_bytes(raw);
            identity_bytes(raw);
        }
        record_round_trip(0, b"");
        record_round_trip(u64::MAX, &[0, 0xff]);
        meta_u64_round_trip(u64::MAX);
        dedup_round_trip(0, &[]);
        dedup_round_trip(u64::MAX, &[OpResult::Done, OpResult::Delete(false)]);
        identity_text("role=pd\ncluster_id=1\nnode_id=0\n");
        identity_round_trip(&Identity {
            role: "server".into(),
            cluster_id: u64::MAX,
            node_id: 3,
        });
    }

    // The generic message checks must catch a broken codec; here a toy one:
    // a message is a byte string, encoded as its length byte and its bytes.
    #[derive(Debug, PartialEq)]
    struct Toy(Vec<u8>);

    fn decode(raw: &[u8]) -> Result<Toy, String> {
        match raw.split_first() {
            Some((&n, rest)) if usize::from(n) == rest.len() => Ok(Toy(rest.to_vec())),
            _ => Err("bad length".into()),
        }
    }

    fn encode(m: &Toy) -> Vec<u8> {
        let mut out = vec![m.0.len() as u8];
        out.extend_from_slice(&m.0);
        out
    }

    #[test]
    fn message_checks_accept_a_correct_codec() {
        assert!(message_bytes(b"\x02ab", decode, encode));
        assert!(!message_bytes(b"\x05ab", decode, encode));
        message_round_trip(&Toy(b"abc".to_vec()), decode, encode);
    }

    #[test]
    #[should_panic(expected = "message round trip")]
    fn message_bytes_catches_a_lossy_encoder() {
        message_bytes(b"\x02ab", decode, |m: &Toy| encode(&Toy(m.0[1..].to_vec())));
    }

    #[test]
    #[should_panic(expected = "without its last byte")]
    fn message_round_trip_catches_a_lenient_decoder() {
        let lenient = |raw: &[u8]| -> Result<Toy, String> { Ok(Toy(raw.to_vec())) };
        message_round_trip(&Toy(b"abc".to_vec()), lenient, |m: &Toy| m.0.clone());
    }
}
