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

/// A store's configurable caps (`[limits]` in `rdb-server`'s config file;
/// PD uses the message and stream caps). Each is at most the API limit of the
/// same name above; a request past a cap is refused with `INVALID_ARGUMENT`
/// (or `RESOURCE_EXHAUSTED` for an over-size message) naming the cap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Largest key, in bytes (1 to 4096).
    pub max_key_size: usize,
    /// Largest value, in bytes (0 to 1 MiB).
    pub max_value_size: usize,
    /// Most keys or pairs in one batch request (256 to 10,000; rdb-client
    /// coalesces up to 256 concurrent calls into one batch).
    pub max_batch_keys: usize,
    /// Most pairs one Scan answer carries (1 to 10,000). A Scan asking for
    /// more (or for 0, "as many as allowed") gets this many and `has_more`,
    /// and continues with another call, as rdb-client's scans do.
    pub max_scan_limit: u32,
    /// Most key and value bytes one Scan or BatchGet answer carries (64 KiB
    /// to 4 MiB). An answer stops before the first pair that would pass it
    /// (it always carries at least one pair, so one 1 MiB value still goes
    /// through), sets `has_more`, and the caller asks again for the rest,
    /// as rdb-client does.
    pub max_response_bytes: usize,
    /// Largest gRPC message decoded or encoded, in bytes (8 MiB to 64 MiB).
    pub max_message_size: usize,
    /// Most concurrent HTTP/2 streams (requests in flight) per client
    /// connection; further requests wait on the client side (HTTP/2 flow
    /// control), they are not failed.
    pub max_concurrent_streams: u32,
}

/// The API limits: the default caps, and the largest ones allowed.
pub const API_LIMITS: Limits = Limits {
    max_key_size: MAX_KEY_SIZE,
    max_value_size: MAX_VALUE_SIZE,
    max_batch_keys: MAX_BATCH_KEYS,
    max_scan_limit: MAX_SCAN_LIMIT,
    max_response_bytes: MAX_RESPONSE_BYTES,
    max_message_size: MAX_GRPC_MESSAGE_SIZE,
    max_concurrent_streams: 1024,
};

impl Default for Limits {
    fn default() -> Self {
        API_LIMITS
    }
}

impl Limits {
    /// Checks every cap against its allowed range; the error names the key
    /// (`limits.max-key-size` ...) and the range.
    pub fn validate(&self) -> Result<(), String> {
        fn range(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
            if v < lo || v > hi {
                return Err(format!(
                    "limits.{key} = {v} is out of range: allowed {lo} to {hi}"
                ));
            }
            Ok(())
        }
        range(
            "max-key-size",
            self.max_key_size as u64,
            1,
            MAX_KEY_SIZE as u64,
        )?;
        range(
            "max-value-size",
            self.max_value_size as u64,
            0,
            MAX_VALUE_SIZE as u64,
        )?;
        range(
            "max-batch-keys",
            self.max_batch_keys as u64,
            256,
            MAX_BATCH_KEYS as u64,
        )?;
        range(
            "max-scan-limit",
            u64::from(self.max_scan_limit),
            1,
            u64::from(MAX_SCAN_LIMIT),
        )?;
        range(
            "max-response-bytes",
            self.max_response_bytes as u64,
            64 * 1024,
            MAX_RESPONSE_BYTES as u64,
        )?;
        range(
            "max-message-size",
            self.max_message_size as u64,
            8 * 1024 * 1024,
            MAX_GRPC_MESSAGE_SIZE as u64,
        )?;
        range(
            "max-concurrent-streams",
            u64::from(self.max_concurrent_streams),
            1,
            u64::from(u32::MAX),
        )
    }

    /// Checks a key; the error says what was wrong and names the cap.
    pub fn check_key(&self, key: &[u8]) -> Result<(), String> {
        if key.is_empty() {
            return Err("key must not be empty".to_string());
        }
        if key.len() > self.max_key_size {
            return Err(format!(
                "key is {} bytes, over the limit of {} bytes (max-key-size)",
                key.len(),
                self.max_key_size
            ));
        }
        Ok(())
    }

    /// Checks a value; the error says what was wrong and names the cap.
    pub fn check_value(&self, value: &[u8]) -> Result<(), String> {
        if value.len() > self.max_value_size {
            return Err(format!(
                "value is {} bytes, over the limit of {} bytes (max-value-size)",
                value.len(),
                self.max_value_size
            ));
        }
        Ok(())
    }

    /// Checks a `[start, end)` range (empty `end` = end of key space).
    pub fn check_range(&self, start: &[u8], end: &[u8]) -> Result<(), String> {
        if start.len() > self.max_key_size || end.len() > self.max_key_size {
            return Err(format!(
                "range bound over the key limit of {} bytes (max-key-size)",
                self.max_key_size
            ));
        }
        if !end.is_empty() && end < start {
            return Err("range end is before range start".to_string());
        }
        Ok(())
    }

    /// Checks the number of keys of a batch request.
    pub fn check_batch_len(&self, len: usize) -> Result<(), String> {
        if len > self.max_batch_keys {
            return Err(format!(
                "batch has {len} keys, over the limit of {} (max-batch-keys)",
                self.max_batch_keys
            ));
        }
        Ok(())
    }
}

/// Checks a key against the API limits; the error says what was wrong.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    API_LIMITS.check_key(key)
}

/// Checks a value against the API limits; the error says what was wrong.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    API_LIMITS.check_value(value)
}

/// Checks a `[start, end)` range (empty `end` = end of key space).
pub fn check_range(start: &[u8], end: &[u8]) -> Result<(), String> {
    API_LIMITS.check_range(start, end)
}

/// Checks the number of keys of a batch request against the API limit.
pub fn check_batch_len(len: usize) -> Result<(), String> {
    API_LIMITS.check_batch_len(len)
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
    fn caps_are_validated_by_name_and_enforced() {
        assert!(Limits::default().validate().is_ok());
        let l = Limits {
            max_key_size: 0,
            ..Default::default()
        };
        assert!(l.validate().unwrap_err().contains("limits.max-key-size"));
        let l = Limits {
            max_batch_keys: 255,
            ..Default::default()
        };
        assert!(l.validate().unwrap_err().contains("limits.max-batch-keys"));
        let l = Limits {
            max_message_size: MAX_GRPC_MESSAGE_SIZE + 1,
            ..Default::default()
        };
        assert!(l
            .validate()
            .unwrap_err()
            .contains("limits.max-message-size"));
        let l = Limits {
            max_key_size: 8,
            max_value_size: 4,
            max_batch_keys: 300,
            ..Default::default()
        };
        assert!(l.validate().is_ok());
        assert!(l.check_key(b"12345678").is_ok());
        assert!(l
            .check_key(b"123456789")
            .unwrap_err()
            .contains("limit of 8 bytes"));
        assert!(l
            .check_value(b"12345")
            .unwrap_err()
            .contains("limit of 4 bytes"));
        assert!(l.check_batch_len(301).unwrap_err().contains("limit of 300"));
        assert!(l.check_range(b"a", b"123456789").is_err());
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
