//! Helpers on regions, epochs and routing errors, shared by rdb-server,
//! rdb-pd and rdb-client so that all three agree on what "in a region" and
//! "newer epoch" mean.

use crate::v1::{region_error, Region, RegionEpoch, RegionError};

/// Whether `key` lies in `[start, end)`, where an empty `end` is the end of
/// the key space.
pub fn key_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Shows a key for messages and logs: printable ASCII as text in quotes,
/// anything else as `0x`-prefixed hex; long keys are cut at 64 bytes.
pub fn display_key(key: &[u8]) -> String {
    let shown = &key[..key.len().min(64)];
    let more = if key.len() > 64 { "..." } else { "" };
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}{more}", String::from_utf8_lossy(shown))
    } else {
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}

impl Region {
    /// Whether the region holds `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key_in_range(key, &self.start_key, &self.end_key)
    }

    /// The region's epoch, or the zero epoch if unset.
    pub fn epoch_or_default(&self) -> RegionEpoch {
        self.epoch.unwrap_or_default()
    }

    /// Whether the region overlaps `[start, end)` (empty `end` = unbounded).
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        let starts_before_range_end = end.is_empty() || self.start_key.as_slice() < end;
        let ends_after_range_start = self.end_key.is_empty() || self.end_key.as_slice() > start;
        starts_before_range_end && ends_after_range_start
    }
}

impl RegionEpoch {
    /// Whether `self` is a later state of the region than `other`: it has
    /// seen every change `other` has ([`is_at_least`](Self::is_at_least))
    /// and more. Compared component by component, as PD does with TiKV's
    /// region heartbeats: a report with a higher version but a lower
    /// conf_ver (or the reverse) supersedes nothing, it is stale in part.
    pub fn supersedes(&self, other: &RegionEpoch) -> bool {
        self.is_at_least(other) && self != other
    }

    /// Whether `self` has seen every change `other` has: neither its version
    /// nor its conf_ver is lower. A region that went through `other` and
    /// then split or moved again is at least `other`.
    pub fn is_at_least(&self, other: &RegionEpoch) -> bool {
        self.version >= other.version && self.conf_ver >= other.conf_ver
    }
}

impl RegionError {
    /// Builds a RegionError from its kind, with a log message.
    pub fn new(message: impl Into<String>, error: region_error::Error) -> Self {
        RegionError {
            message: message.into(),
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region {
            id: 1,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: None,
            store_id: 1,
            peers: Vec::new(),
        }
    }

    #[test]
    fn display_key_is_readable() {
        assert_eq!(display_key(b"abc"), "\"abc\"");
        assert_eq!(display_key(&[0, 255]), "0x00ff");
        assert!(display_key(&[b'a'; 100]).ends_with("..."));
    }

    #[test]
    fn contains_respects_half_open_bounds() {
        let r = region(b"b", b"d");
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        assert!(region(b"", b"").contains(b"\x00"));
    }

    #[test]
    fn overlaps_handles_unbounded_ends() {
        let r = region(b"b", b"d");
        assert!(r.overlaps(b"a", b"c"));
        assert!(!r.overlaps(b"d", b""));
        assert!(!r.overlaps(b"", b"b"));
        assert!(region(b"x", b"").overlaps(b"a", b""));
    }

    #[test]
    fn an_epoch_supersedes_another_only_component_by_component() {
        let a = RegionEpoch {
            version: 2,
            conf_ver: 1,
        };
        let b = RegionEpoch {
            version: 1,
            conf_ver: 5,
        };
        // A later split, but it has not seen b's membership changes.
        assert!(!a.supersedes(&b) && !b.supersedes(&a));
        assert!(!a.supersedes(&a));
        assert!(!a.is_at_least(&b) && !b.is_at_least(&a));
        assert!(a.is_at_least(&a));
        let later = RegionEpoch {
            version: 3,
            conf_ver: 5,
        };
        assert!(later.is_at_least(&a) && later.is_at_least(&b));
        assert!(later.supersedes(&a) && later.supersedes(&b));
    }
}
