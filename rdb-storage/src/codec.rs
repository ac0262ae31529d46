//! Encoding of stored records.
//!
//! A value in the `data` column family is `[0x01][version: u64 big-endian][value bytes]`.
//! The leading byte is the format tag, so the format can change later without
//! guessing. User keys are stored as they are (arbitrary bytes, 0x00 and 0xFF
//! included), so RocksDB's byte order is the key order of scans.
//!
//! A value in the `dedup` column family (the answer to one exactly-once write
//! request, keyed by [`RequestId::to_key`](crate::RequestId::to_key)) is
//! `[0x01][applied at: u64 big-endian, ms since the Unix epoch][count: u32
//! big-endian][results]`, one result per op:
//!
//! | result            | bytes |
//! |-------------------|-------|
//! | `Put(version)`    | `0x01`, version u64 |
//! | `Delete(existed)` | `0x02`, 0 or 1 |
//! | `Cas(outcome)`    | `0x03`, succeeded 0 or 1, current (0, or 1 + version u64 + length u32 + value), new version (0, or 1 + u64) |
//! | `DeleteRange(n)`  | `0x04`, n u64 |
//! | `Done`            | `0x05` |
//!
//! All integers are big-endian. The encoding is canonical: decoding accepts
//! exactly what [`encode_dedup`] produces (no trailing bytes, flags only 0
//! or 1), so a decoded record encodes back to the same bytes.

use crate::{CasOutcome, OpResult, Result, StorageError, VersionedValue};

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

/// Format tag of a version-1 exactly-once record.
pub const DEDUP_V1: u8 = 0x01;

/// Length of the exactly-once record header (tag + time + count).
pub const DEDUP_HEADER_LEN: usize = 13;

const RESULT_PUT: u8 = 0x01;
const RESULT_DELETE: u8 = 0x02;
const RESULT_CAS: u8 = 0x03;
const RESULT_DELETE_RANGE: u8 = 0x04;
const RESULT_DONE: u8 = 0x05;

/// Encodes the record of an exactly-once request applied at `applied_ms`
/// (ms since the Unix epoch) with `results`.
pub fn encode_dedup(applied_ms: u64, results: &[OpResult]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DEDUP_HEADER_LEN + 9 * results.len());
    out.push(DEDUP_V1);
    out.extend_from_slice(&applied_ms.to_be_bytes());
    // A request has at most a few thousand ops (the batch cap), far below u32::MAX.
    out.extend_from_slice(&(results.len() as u32).to_be_bytes());
    for r in results {
        match r {
            OpResult::Put(v) => {
                out.push(RESULT_PUT);
                out.extend_from_slice(&v.to_be_bytes());
            }
            OpResult::Delete(existed) => {
                out.extend_from_slice(&[RESULT_DELETE, u8::from(*existed)])
            }
            OpResult::Cas(o) => {
                out.extend_from_slice(&[RESULT_CAS, u8::from(o.succeeded)]);
                match &o.current {
                    None => out.push(0),
                    Some(c) => {
                        out.push(1);
                        out.extend_from_slice(&c.version.to_be_bytes());
                        out.extend_from_slice(&(c.value.len() as u32).to_be_bytes());
                        out.extend_from_slice(&c.value);
                    }
                }
                match o.new_version {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            OpResult::DeleteRange(n) => {
                out.push(RESULT_DELETE_RANGE);
                out.extend_from_slice(&n.to_be_bytes());
            }
            OpResult::Done => out.push(RESULT_DONE),
        }
    }
    out
}

/// Reads an exactly-once record's header: (applied at, result count).
fn dedup_header(raw: &[u8]) -> Result<(u64, u32)> {
    if raw.len() < DEDUP_HEADER_LEN {
        return Err(StorageError::Corruption(format!(
            "exactly-once record of {} bytes is shorter than its {DEDUP_HEADER_LEN}-byte header",
            raw.len()
        )));
    }
    if raw[0] != DEDUP_V1 {
        return Err(StorageError::Corruption(format!(
            "unknown exactly-once record format tag {:#04x}",
            raw[0]
        )));
    }
    let mut r = Reader(&raw[1..DEDUP_HEADER_LEN]);
    Ok((r.u64()?, r.u32()?))
}

/// An exactly-once record with its time left out (its tag, count and
/// results): what two replicas' copies of one record share even when each
/// stamped its own clock (records of format-0 entries).
pub fn dedup_without_time(raw: &[u8]) -> Result<Vec<u8>> {
    dedup_header(raw)?;
    let mut out = Vec::with_capacity(raw.len() - 8);
    out.push(raw[0]);
    out.extend_from_slice(&raw[9..]);
    Ok(out)
}

/// Decodes the time an exactly-once record was applied (ms since the Unix
/// epoch), reading only its header.
pub fn decode_dedup_time(raw: &[u8]) -> Result<u64> {
    dedup_header(raw).map(|(t, _)| t)
}

/// Decodes an exactly-once record into (applied at, results).
pub fn decode_dedup(raw: &[u8]) -> Result<(u64, Vec<OpResult>)> {
    let (applied_ms, count) = dedup_header(raw)?;
    let mut r = Reader(&raw[DEDUP_HEADER_LEN..]);
    // Every result takes at least one byte: a count above the rest cannot be
    // right, and must not size an allocation.
    if count as usize > r.0.len() {
        return Err(StorageError::Corruption(format!(
            "exactly-once record claims {count} results in {} bytes",
            r.0.len()
        )));
    }
    let mut results = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let res = match r.u8()? {
            RESULT_PUT => OpResult::Put(r.u64()?),
            RESULT_DELETE => OpResult::Delete(r.flag()?),
            RESULT_CAS => {
                let succeeded = r.flag()?;
                let current = if r.flag()? {
                    let version = r.u64()?;
                    let len = r.u32()? as usize;
                    Some(VersionedValue {
                        version,
                        value: r.bytes(len)?.to_vec(),
                    })
                } else {
                    None
                };
                let new_version = if r.flag()? { Some(r.u64()?) } else { None };
                OpResult::Cas(CasOutcome {
                    succeeded,
                    current,
                    new_version,
                })
            }
            RESULT_DELETE_RANGE => OpResult::DeleteRange(r.u64()?),
            RESULT_DONE => OpResult::Done,
            tag => {
                return Err(StorageError::Corruption(format!(
                    "unknown result tag {tag:#04x} in an exactly-once record"
                )))
            }
        };
        results.push(res);
    }
    if !r.0.is_empty() {
        return Err(StorageError::Corruption(format!(
            "exactly-once record has {} bytes after its last result",
            r.0.len()
        )));
    }
    Ok((applied_ms, results))
}

/// Reads big-endian fields off the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(StorageError::Corruption(format!(
                "exactly-once record ends inside a field ({n} bytes wanted, {} left)",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(StorageError::Corruption(format!(
                "exactly-once record has flag byte {b:#04x} (0 or 1 expected)"
            ))),
        }
    }
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

    /// Golden bytes of the records that shipped (data record format 1,
    /// exactly-once record format 1): they decode forever.
    #[test]
    fn shipped_record_formats_decode_forever() {
        let hex = |s: &str| -> Vec<u8> {
            s.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect()
        };
        let data = hex("01 00 00 00 00 00 00 00 07 76");
        assert_eq!(encode_record(7, b"v"), data);
        assert_eq!(decode_record(&data).unwrap(), (7, &b"v"[..]));
        let results = vec![OpResult::Put(5), OpResult::Delete(true)];
        let dedup = hex("01 00 00 00 00 00 00 00 63 00 00 00 02 01 00 00 00 00 00 00 00 05 02 01");
        assert_eq!(encode_dedup(99, &results), dedup);
        assert_eq!(decode_dedup(&dedup).unwrap(), (99, results));
        assert_eq!(
            dedup_without_time(&dedup).unwrap(),
            hex("01 00 00 00 02 01 00 00 00 00 00 00 00 05 02 01")
        );
    }

    #[test]
    fn dedup_round_trip_and_rejects() {
        let results = vec![
            OpResult::Put(7),
            OpResult::Delete(true),
            OpResult::Cas(CasOutcome {
                succeeded: false,
                current: Some(VersionedValue {
                    version: 3,
                    value: b"v".to_vec(),
                }),
                new_version: None,
            }),
            OpResult::DeleteRange(u64::MAX),
            OpResult::Done,
        ];
        let raw = encode_dedup(99, &results);
        assert_eq!(decode_dedup(&raw).unwrap(), (99, results));
        assert_eq!(decode_dedup_time(&raw).unwrap(), 99);
        assert!(decode_dedup(&raw[..raw.len() - 1]).is_err());
        let mut long = raw.clone();
        long.push(0);
        assert!(decode_dedup(&long).is_err());
        // A huge count in a short record is refused before allocating.
        let mut huge = encode_dedup(1, &[]);
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_dedup(&huge).is_err());
    }
}
