//! The regions this store serves, and the checks every request goes through.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use rdb_proto::region::display_key;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{
    Context, EpochNotMatch, KeyNotInRegion, Region, RegionEpoch, RegionError, RegionNotFound,
};
use rdb_storage::{Engine, WriteOp};

use crate::error::{Result, ServerError};
use crate::peer::RegionPeer;

/// Prefix of the meta keys of region records.
const REGION_PREFIX: &[u8] = b"region/";

/// Meta key of a region record.
pub fn region_meta_key(id: u64) -> Vec<u8> {
    record_key(REGION_PREFIX, id)
}

/// The meta key of the record of region `id` under `prefix`: the prefix,
/// then the id big-endian (so records load in id order).
pub fn record_key(prefix: &[u8], id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The write that persists a region record.
pub fn put_region_op(r: &Region) -> WriteOp {
    WriteOp::PutMeta {
        key: region_meta_key(r.id),
        value: r.encode_to_vec(),
    }
}

/// Loads the region records of a store's engine.
pub fn load_regions(engine: &Engine) -> Result<Vec<Region>> {
    load_records(engine, REGION_PREFIX, "region")
}

/// Decodes every meta record under `prefix` as an `M`.
pub fn load_records<M: Message + Default>(
    engine: &Engine,
    prefix: &[u8],
    what: &str,
) -> Result<Vec<M>> {
    engine
        .scan_meta(prefix)?
        .into_iter()
        .map(|(_, v)| {
            M::decode(v.as_slice())
                .map_err(|e| ServerError::Internal(format!("corrupted {what} record: {e}")))
        })
        .collect()
}

/// The replicas of regions on this store, by region id.
#[derive(Default)]
pub struct RegionMap {
    by_id: HashMap<u64, Arc<RegionPeer>>,
}

impl RegionMap {
    /// Adds or replaces the replica of region `id`.
    pub fn insert(&mut self, id: u64, peer: Arc<RegionPeer>) {
        self.by_id.insert(id, peer);
    }

    /// Removes the replica of region `id`.
    pub fn remove(&mut self, id: u64) -> Option<Arc<RegionPeer>> {
        self.by_id.remove(&id)
    }

    /// The replica of region `id`.
    pub fn get(&self, id: u64) -> Option<Arc<RegionPeer>> {
        self.by_id.get(&id).cloned()
    }

    /// Every replica.
    pub fn peers(&self) -> Vec<Arc<RegionPeer>> {
        self.by_id.values().cloned().collect()
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The regions as applied here, in key order.
    pub fn regions(&self) -> Vec<Region> {
        let mut all: Vec<Region> = self.by_id.values().map(|p| p.region()).collect();
        all.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        all
    }

    /// Checks a request's context: the region has a replica here and the
    /// request's epoch is the region's. Returns the replica and the region.
    pub fn check_context(
        &self,
        ctx: Option<&Context>,
    ) -> std::result::Result<(Arc<RegionPeer>, Region), RegionCheck> {
        let ctx = ctx.ok_or_else(|| {
            RegionCheck::Invalid(
                "request has no context: set the region id and epoch (from PD's GetRegion)".into(),
            )
        })?;
        let Some(peer) = self.get(ctx.region_id) else {
            return Err(RegionCheck::Region(not_found(ctx.region_id)));
        };
        let region = peer.region();
        if region.peers.is_empty() {
            // An empty replica waiting for its first snapshot.
            return Err(RegionCheck::Region(not_found(ctx.region_id)));
        }
        check_epoch(&region, ctx.region_epoch).map_err(RegionCheck::Region)?;
        Ok((peer, region))
    }
}

/// The `RegionNotFound` error for region `region_id`.
pub fn not_found(region_id: u64) -> RegionError {
    RegionError::new(
        format!("region {region_id} has no replica on this store"),
        RegionErrorKind::RegionNotFound(RegionNotFound { region_id }),
    )
}

/// Checks that a request's `epoch` is the region's.
pub fn check_epoch(
    region: &Region,
    epoch: Option<RegionEpoch>,
) -> std::result::Result<(), RegionError> {
    let epoch = epoch.unwrap_or_default();
    let cur = region.epoch_or_default();
    if epoch != cur {
        return Err(RegionError::new(
            format!(
                "region {} epoch is {{version {}, conf_ver {}}}, request has {{version {}, conf_ver {}}}",
                region.id, cur.version, cur.conf_ver, epoch.version, epoch.conf_ver
            ),
            RegionErrorKind::EpochNotMatch(EpochNotMatch {
                current_regions: vec![region.clone()],
            }),
        ));
    }
    Ok(())
}

/// Why a request cannot be served by the region it names.
#[derive(Debug)]
pub enum RegionCheck {
    /// A routing error for the client to act on.
    Region(RegionError),
    /// A malformed request.
    Invalid(String),
}

/// The `KeyNotInRegion` error for `key`.
pub fn key_not_in_region(key: &[u8], region: &Region) -> RegionError {
    RegionError::new(
        format!(
            "key {} is not in region {} [{}, {})",
            display_key(key),
            region.id,
            display_key(&region.start_key),
            if region.end_key.is_empty() {
                "+inf".to_string()
            } else {
                display_key(&region.end_key)
            }
        ),
        RegionErrorKind::KeyNotInRegion(KeyNotInRegion {
            key: key.to_vec(),
            region_id: region.id,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
        }),
    )
}

/// Checks that every key is in the region.
pub fn check_keys<'a>(
    region: &Region,
    keys: impl IntoIterator<Item = &'a [u8]>,
) -> std::result::Result<(), RegionError> {
    for k in keys {
        if !region.contains(k) {
            return Err(key_not_in_region(k, region));
        }
    }
    Ok(())
}

/// Clamps a `[start, end)` range (empty `end` = end of the key space) to
/// the region: the part of the range the region holds. A range that does
/// not meet the region at all is a routing error (`KeyNotInRegion`).
pub fn clamp_range(
    region: &Region,
    start: &[u8],
    end: &[u8],
) -> std::result::Result<(Vec<u8>, Vec<u8>), RegionError> {
    // Empty sorts first, so an empty region start (start of the key space) never wins.
    let clamped_start = start.max(region.start_key.as_slice());
    let clamped_end = match (end.is_empty(), region.end_key.is_empty()) {
        (_, true) => end,
        (true, false) => region.end_key.as_slice(),
        (false, false) => end.min(region.end_key.as_slice()),
    };
    // A range that is empty on its own (start == end) inside the region is
    // served, with nothing in it.
    if !region.contains(start) && !region.overlaps(start, end) {
        return Err(key_not_in_region(start, region));
    }
    Ok((clamped_start.to_vec(), clamped_end.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, s: &[u8], e: &[u8]) -> Region {
        Region {
            id,
            start_key: s.to_vec(),
            end_key: e.to_vec(),
            epoch: Some(RegionEpoch {
                version: 2,
                conf_ver: 1,
            }),
            store_id: 1,
            peers: Vec::new(),
        }
    }

    #[test]
    fn ranges_are_clamped_to_the_region_at_both_ends() {
        let r = region(1, b"c", b"m");
        let ok = |s: &[u8], e: &[u8]| clamp_range(&r, s, e).map_err(|e| e.message);
        assert_eq!(ok(b"", b""), Ok((b"c".to_vec(), b"m".to_vec())));
        assert_eq!(ok(b"a", b"d"), Ok((b"c".to_vec(), b"d".to_vec())));
        assert_eq!(ok(b"d", b"z"), Ok((b"d".to_vec(), b"m".to_vec())));
        assert_eq!(ok(b"d", b"d"), Ok((b"d".to_vec(), b"d".to_vec())));
        assert!(ok(b"a", b"c").is_err(), "ends at the region's start");
        assert!(ok(b"m", b"z").is_err(), "starts at the region's end");
        assert!(ok(b"a", b"b").is_err());
        let whole = region(2, b"", b"");
        assert_eq!(
            clamp_range(&whole, b"", b"").map_err(|e| e.message),
            Ok((Vec::new(), Vec::new()))
        );
    }

    #[test]
    fn epoch_and_key_checks() {
        let r = region(2, b"m", b"t");
        let epoch = |v| {
            Some(RegionEpoch {
                version: v,
                conf_ver: 1,
            })
        };
        assert!(check_epoch(&r, epoch(2)).is_ok());
        assert!(matches!(
            check_epoch(&r, epoch(1)).unwrap_err().error,
            Some(RegionErrorKind::EpochNotMatch(_))
        ));
        assert!(matches!(
            not_found(3).error,
            Some(RegionErrorKind::RegionNotFound(_))
        ));
        assert!(matches!(
            RegionMap::default().check_context(None),
            Err(RegionCheck::Invalid(_))
        ));
        assert!(check_keys(&r, [&b"m"[..], b"s"]).is_ok());
        assert!(check_keys(&r, [&b"t"[..]]).is_err());
        assert_eq!(
            clamp_range(&r, b"n", b"").unwrap(),
            (b"n".to_vec(), b"t".to_vec())
        );
        assert_eq!(
            clamp_range(&r, b"n", b"p").unwrap(),
            (b"n".to_vec(), b"p".to_vec())
        );
        // Clamped at the start too (the range meets the region).
        assert_eq!(
            clamp_range(&r, b"a", b"p").unwrap(),
            (b"m".to_vec(), b"p".to_vec())
        );
        assert!(clamp_range(&r, b"a", b"m").is_err());
    }
}
