//! A daemon's configurable request caps (`[limits]`): each at most the API
//! limit of the same name in `rdb_proto::limits`, whose checks they use.

use rdb_proto::limits::{
    check_batch_len_capped, check_key_capped, check_range_capped, check_value_capped,
    MAX_BATCH_KEYS, MAX_GRPC_MESSAGE_SIZE, MAX_KEY_SIZE, MAX_RESPONSE_BYTES, MAX_SCAN_LIMIT,
    MAX_VALUE_SIZE,
};

/// A store's configurable caps (`[limits]` in `rdb-server`'s config file;
/// PD uses the message and stream caps). Each is at most the API limit of the
/// same name in `rdb_proto::limits`; a request past a cap is refused with `INVALID_ARGUMENT`
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
        check_key_capped(key, self.max_key_size)
    }

    /// Checks a value; the error says what was wrong and names the cap.
    pub fn check_value(&self, value: &[u8]) -> Result<(), String> {
        check_value_capped(value, self.max_value_size)
    }

    /// Checks a `[start, end)` range (empty `end` = end of key space).
    pub fn check_range(&self, start: &[u8], end: &[u8]) -> Result<(), String> {
        check_range_capped(start, end, self.max_key_size)
    }

    /// Checks the number of keys of a batch request.
    pub fn check_batch_len(&self, len: usize) -> Result<(), String> {
        check_batch_len_capped(len, self.max_batch_keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
