//! The regions this store serves, and the checks every request goes through.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;
use rdb_proto::region::display_key;
use rdb_proto::v1::region_error::Error as RegionErrorKind;
use rdb_proto::v1::{
    Context, EpochNotMatch, KeyNotInRegion, Region, RegionEpoch, RegionError, RegionNotFound,
    ServerIsBusy,
};
use rdb_storage::{Engine, WriteOp};

use crate::error::{Result, ServerError};

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

/// A served region.
#[derive(Debug, Clone)]
pub struct RegionState {
    /// The region's current metadata.
    pub region: Region,
    /// Set while the region's data is being moved to another store; requests
    /// get `ServerIsBusy` meanwhile.
    pub moving: bool,
}

/// The regions of this store, by id and by start key.
#[derive(Debug, Default)]
pub struct RegionMap {
    /// The regions, by id: what a request's context names.
    by_id: HashMap<u64, RegionState>,
    /// Region ids by start key: the regions in key order (for heartbeats).
    by_start: BTreeMap<Vec<u8>, u64>,
    /// Move ids whose import was called off by SettleImport: never served.
    called_off: HashSet<u64>,
}

impl RegionMap {
    /// Builds the map from persisted records.
    pub fn new(regions: Vec<Region>) -> Self {
        let mut m = RegionMap::default();
        for r in regions {
            m.insert(r);
        }
        m
    }

    /// Adds or replaces a region.
    pub fn insert(&mut self, r: Region) {
        self.remove(r.id);
        self.by_start.insert(r.start_key.clone(), r.id);
        self.by_id.insert(
            r.id,
            RegionState {
                region: r,
                moving: false,
            },
        );
    }

    /// Removes a region.
    pub fn remove(&mut self, id: u64) -> Option<Region> {
        let old = self.by_id.remove(&id)?;
        if self.by_start.get(&old.region.start_key) == Some(&id) {
            self.by_start.remove(&old.region.start_key);
        }
        Some(old.region)
    }

    /// Records that the import of move `move_id` was called off: it must
    /// never start serving.
    pub fn call_off(&mut self, move_id: u64) {
        self.called_off.insert(move_id);
    }

    /// Whether the import of move `move_id` was called off.
    pub fn is_called_off(&self, move_id: u64) -> bool {
        self.called_off.contains(&move_id)
    }

    /// A region by id.
    pub fn get(&self, id: u64) -> Option<&RegionState> {
        self.by_id.get(&id)
    }

    /// A region by id, mutable.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut RegionState> {
        self.by_id.get_mut(&id)
    }

    /// All regions, in key order.
    pub fn regions(&self) -> Vec<Region> {
        self.by_start
            .values()
            .filter_map(|id| self.by_id.get(id))
            .map(|s| s.region.clone())
            .collect()
    }

    /// Whether any served region overlaps `[start, end)`.
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> Option<u64> {
        self.by_id
            .values()
            .find(|s| s.region.overlaps(start, end))
            .map(|s| s.region.id)
    }

    /// Checks a request's context: the region is served here, with this
    /// epoch, and is not being moved. Returns the region.
    pub fn check_context(
        &self,
        ctx: Option<&Context>,
    ) -> std::result::Result<&Region, RegionCheck> {
        let ctx = ctx.ok_or_else(|| {
            RegionCheck::Invalid(
                "request has no context: set the region id and epoch (from PD's GetRegion)".into(),
            )
        })?;
        self.check(ctx.region_id, ctx.region_epoch)
            .map_err(RegionCheck::Region)
    }

    /// Checks that region `region_id` is served here, at `epoch`, and is not
    /// being moved. Returns the region.
    pub fn check(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
    ) -> std::result::Result<&Region, RegionError> {
        let Some(state) = self.by_id.get(&region_id) else {
            return Err(RegionError::new(
                format!("region {region_id} is not served by this store"),
                RegionErrorKind::RegionNotFound(RegionNotFound { region_id }),
            ));
        };
        let region = &state.region;
        let epoch = epoch.unwrap_or_default();
        if epoch != region.epoch_or_default() {
            let cur = region.epoch_or_default();
            return Err(RegionError::new(
                format!(
                    "region {} epoch is {{version {}, conf_ver {}}}, request has {{version {}, conf_ver {}}}",
                    region.id, cur.version, cur.conf_ver, epoch.version, epoch.conf_ver
                ),
                RegionErrorKind::EpochNotMatch(EpochNotMatch { current_regions: vec![region.clone()] }),
            ));
        }
        if state.moving {
            return Err(RegionError::new(
                format!("region {} is being moved to another store", region.id),
                RegionErrorKind::ServerIsBusy(ServerIsBusy {
                    reason: format!("region {} is being moved", region.id),
                    backoff_ms: 50,
                }),
            ));
        }
        Ok(region)
    }
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
    fn context_checks() {
        let mut m = RegionMap::new(vec![region(1, b"", b"m"), region(2, b"m", b"")]);
        let ctx = |id, v| Context {
            region_id: id,
            region_epoch: Some(RegionEpoch {
                version: v,
                conf_ver: 1,
            }),
        };
        assert!(matches!(
            m.check_context(None),
            Err(RegionCheck::Invalid(_))
        ));
        assert_eq!(m.check_context(Some(&ctx(1, 2))).unwrap().id, 1);
        let e = |r: std::result::Result<&Region, RegionCheck>| match r {
            Err(RegionCheck::Region(e)) => e.error.unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            e(m.check_context(Some(&ctx(3, 2)))),
            RegionErrorKind::RegionNotFound(_)
        ));
        assert!(matches!(
            e(m.check_context(Some(&ctx(1, 1)))),
            RegionErrorKind::EpochNotMatch(_)
        ));
        m.get_mut(2).unwrap().moving = true;
        assert!(matches!(
            e(m.check_context(Some(&ctx(2, 2)))),
            RegionErrorKind::ServerIsBusy(_)
        ));
        let r = region(2, b"m", b"t");
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
        assert_eq!(m.overlaps(b"a", b"b"), Some(1));
        assert_eq!(m.regions().len(), 2);
    }
}
