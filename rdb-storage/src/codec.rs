//! Encoding of stored records.
//!
//! A value in the `data` column family is `[0x01][version: u64 big-endian][value bytes]`.
//! The leading byte is the format tag, so the format can change later without
//! guessing. User keys are stored as they are (arbitrary bytes, 0x00 and 0xFF
//! included), so RocksDB's byte order is the key order of scans.

use crate::{Result, StorageError};

/// Format tag of a version-1 record.
pub const RECORD_V1: u8 = 0x01;

/// Length of the record header (tag + version).
pub const HEADER_LEN: usize = 9;

/// Encodes a record.
pub fn encode_record(version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    out.push(RECORD_V1);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a record into (version, value).
pub fn decode_record(raw: &[u8]) -> Result<(u64, &[u8])> {
    if raw.len() < HEADER_LEN {
        return Err(StorageError::Corruption(format!(
            "record of {} bytes is shorter than its {HEADER_LEN}-byte header",
            raw.len()
        )));
    }
    if raw[0] != RECORD_V1 {
        return Err(StorageError::Corruption(format!(
            "unknown record format tag {:#04x}",
            raw[0]
        )));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&raw[1..HEADER_LEN]);
    Ok((u64::from_be_bytes(v), &raw[HEADER_LEN..]))
}

/// Largest value a stored counter (the version counter, PD's id allocator)
/// may hold: 2^63, unreachable by counting (292 years at 10^9 a second), so
/// the `+ 1` of the next value can never overflow. A larger stored value is
/// corruption.
pub const MAX_COUNTER: u64 = 1 << 63;

/// Decodes a stored counter that the reader will count up from: a
/// big-endian u64 no larger than `max` (else corruption, naming `what`).
pub fn decode_counter(raw: &[u8], what: &str, max: u64) -> Result<u64> {
    let v = decode_u64(raw, what)?;
    if v > max {
        return Err(StorageError::Corruption(format!(
            "{what} is {v}, above its maximum of {max}"
        )));
    }
    Ok(v)
}

/// Decodes a big-endian u64 stored in the meta column family.
pub fn decode_u64(raw: &[u8], what: &str) -> Result<u64> {
    let arr: [u8; 8] = raw.try_into().map_err(|_| {
        StorageError::Corruption(format!("{what}: expected 8 bytes, found {}", raw.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for value in [&b""[..], b"\x00\xff", b"hello"] {
            let raw = encode_record(42, value);
            let (v, val) = decode_record(&raw).unwrap();
            assert_eq!(v, 42);
            assert_eq!(val, value);
        }
    }

    #[test]
    fn rejects_bad_records() {
        assert!(decode_record(b"").is_err());
        assert!(decode_record(&[1, 0, 0]).is_err());
        let mut raw = encode_record(1, b"x");
        raw[0] = 7;
        assert!(
            matches!(decode_record(&raw), Err(StorageError::Corruption(m)) if m.contains("0x07"))
        );
        assert!(decode_u64(b"abc", "x").is_err());
        assert!(decode_counter(&u64::MAX.to_be_bytes(), "x", MAX_COUNTER).is_err());
        assert_eq!(
            decode_counter(&MAX_COUNTER.to_be_bytes(), "x", MAX_COUNTER).unwrap(),
            MAX_COUNTER
        );
        assert_eq!(decode_u64(&5u64.to_be_bytes(), "x").unwrap(), 5);
    }
}
