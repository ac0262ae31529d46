//! Size limits that are part of the API: every endpoint refuses requests past
//! them with `INVALID_ARGUMENT` and a message naming the limit.

/// Largest key accepted, in bytes (keys must also be non-empty).
pub const MAX_KEY_SIZE: usize = 4 * 1024;

/// Largest value accepted, in bytes.
pub const MAX_VALUE_SIZE: usize = 1024 * 1024;

/// Most keys (or pairs) in one batch request.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Most pairs one Scan call returns; a `limit` of 0 means this many.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// Largest gRPC message a FlareDB endpoint decodes or encodes, in bytes.
pub const MAX_GRPC_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Number of bits of a timestamp that hold the logical counter.
pub const TSO_LOGICAL_BITS: u32 = 18;

/// Most timestamps one TSO request may ask for.
pub const MAX_TSO_COUNT: u32 = (1 << TSO_LOGICAL_BITS) - 1;

/// Checks a key against the API rules; the error says what was wrong.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must not be empty".to_string());
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(format!(
            "key is {} bytes, over the limit of {MAX_KEY_SIZE} bytes",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a value against the API rules; the error says what was wrong.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(format!(
            "value is {} bytes, over the limit of {MAX_VALUE_SIZE} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Checks a `[start, end)` range (empty `end` = end of key space).
pub fn check_range(start: &[u8], end: &[u8]) -> Result<(), String> {
    if start.len() > MAX_KEY_SIZE || end.len() > MAX_KEY_SIZE {
        return Err(format!(
            "range bound over the key limit of {MAX_KEY_SIZE} bytes"
        ));
    }
    if !end.is_empty() && end < start {
        return Err("range end is before range start".to_string());
    }
    Ok(())
}

/// Checks the number of keys of a batch request.
pub fn check_batch_len(len: usize) -> Result<(), String> {
    if len > MAX_BATCH_KEYS {
        return Err(format!(
            "batch has {len} keys, over the limit of {MAX_BATCH_KEYS}"
        ));
    }
    Ok(())
}

/// Splits a timestamp into (physical milliseconds, logical counter).
pub fn split_timestamp(ts: u64) -> (u64, u64) {
    (ts >> TSO_LOGICAL_BITS, ts & ((1 << TSO_LOGICAL_BITS) - 1))
}

/// Builds a timestamp from physical milliseconds and a logical counter.
pub fn compose_timestamp(physical_ms: u64, logical: u64) -> u64 {
    (physical_ms << TSO_LOGICAL_BITS) | logical
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_oversized_keys_are_refused() {
        assert!(check_key(b"").is_err());
        assert!(check_key(&vec![1; MAX_KEY_SIZE]).is_ok());
        assert!(check_key(&vec![1; MAX_KEY_SIZE + 1]).is_err());
        assert!(check_value(&vec![1; MAX_VALUE_SIZE + 1]).is_err());
    }

    #[test]
    fn range_end_before_start_is_refused() {
        assert!(check_range(b"b", b"a").is_err());
        assert!(check_range(b"b", b"").is_ok());
        assert!(check_range(b"a", b"a").is_ok());
    }

    #[test]
    fn timestamp_round_trips() {
        let ts = compose_timestamp(1_700_000_000_000, 42);
        assert_eq!(split_timestamp(ts), (1_700_000_000_000, 42));
    }
}
