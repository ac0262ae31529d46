//! Size limits that are part of the API: every endpoint refuses requests past
//! them with `INVALID_ARGUMENT` and a message naming the limit. A store can
//! lower them (its `[limits]`, rdb-daemon's `limits::Limits`); the checks
//! here take the cap, so clients and daemons word refusals alike.

/// Largest key accepted, in bytes (keys must also be non-empty).
pub const MAX_KEY_SIZE: usize = 4 * 1024;

/// Largest value accepted, in bytes.
pub const MAX_VALUE_SIZE: usize = 1024 * 1024;

/// Most keys (or pairs) in one batch request.
pub const MAX_BATCH_KEYS: usize = 10_000;

/// Most pairs one Scan call returns; a `limit` of 0 means this many.
pub const MAX_SCAN_LIMIT: u32 = 10_000;

/// Most key and value bytes one Scan or BatchGet answer carries by default
/// (and the most a store may be configured to), so that answers stay well
/// under the message limit and a store never builds a huge answer in memory.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes one pair adds to an answer besides its key and value (field tags,
/// lengths and the version), counted against the response byte budget.
pub const PAIR_OVERHEAD_BYTES: usize = 24;

/// Largest gRPC message a FlareDB endpoint decodes or encodes, in bytes.
pub const MAX_GRPC_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Number of bits of a timestamp that hold the logical counter.
pub const TSO_LOGICAL_BITS: u32 = 18;

/// Most timestamps one TSO request may ask for.
pub const MAX_TSO_COUNT: u32 = (1 << TSO_LOGICAL_BITS) - 1;

/// Checks a key against the cap `max_key_size` (the API limit, or a store's
/// lower `max-key-size`); the error says what was wrong and names the cap.
pub fn check_key_capped(key: &[u8], max_key_size: usize) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must not be empty".to_string());
    }
    if key.len() > max_key_size {
        return Err(format!(
            "key is {} bytes, over the limit of {max_key_size} bytes (max-key-size)",
            key.len(),
        ));
    }
    Ok(())
}

/// Checks a value against the cap `max_value_size`; the error says what was
/// wrong and names the cap.
pub fn check_value_capped(value: &[u8], max_value_size: usize) -> Result<(), String> {
    if value.len() > max_value_size {
        return Err(format!(
            "value is {} bytes, over the limit of {max_value_size} bytes (max-value-size)",
            value.len(),
        ));
    }
    Ok(())
}

/// Checks a `[start, end)` range (empty `end` = end of key space) whose
/// bounds are keys of at most `max_key_size` bytes.
pub fn check_range_capped(start: &[u8], end: &[u8], max_key_size: usize) -> Result<(), String> {
    if start.len() > max_key_size || end.len() > max_key_size {
        return Err(format!(
            "range bound over the key limit of {max_key_size} bytes (max-key-size)"
        ));
    }
    if !end.is_empty() && end < start {
        return Err("range end is before range start".to_string());
    }
    Ok(())
}

/// Checks the number of keys of a batch request against the cap `max_batch_keys`.
pub fn check_batch_len_capped(len: usize, max_batch_keys: usize) -> Result<(), String> {
    if len > max_batch_keys {
        return Err(format!(
            "batch has {len} keys, over the limit of {max_batch_keys} (max-batch-keys)"
        ));
    }
    Ok(())
}

/// Checks a key against the API limits; the error says what was wrong.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    check_key_capped(key, MAX_KEY_SIZE)
}

/// Checks a value against the API limits; the error says what was wrong.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    check_value_capped(value, MAX_VALUE_SIZE)
}

/// Checks a `[start, end)` range (empty `end` = end of key space).
pub fn check_range(start: &[u8], end: &[u8]) -> Result<(), String> {
    check_range_capped(start, end, MAX_KEY_SIZE)
}

/// Checks the number of keys of a batch request against the API limit.
pub fn check_batch_len(len: usize) -> Result<(), String> {
    check_batch_len_capped(len, MAX_BATCH_KEYS)
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
