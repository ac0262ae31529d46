//! The move record a source store persists while it moves a region (its
//! meta key, its write, its loading), and the batch that deletes a region
//! that moved away.

use prost::Message;
use rdb_proto::v1::{MoveRecord, Region, RegionEpoch, Store};
use rdb_storage::{Engine, WriteOp};

use crate::error::Result;
use crate::node::Node;
use crate::regions::{load_records, record_key, region_meta_key};

/// Prefix of the meta keys of move records.
const MOVE_PREFIX: &[u8] = b"move/";

/// Meta key of the move record of a region.
pub fn move_meta_key(region_id: u64) -> Vec<u8> {
    record_key(MOVE_PREFIX, region_id)
}

/// The write that persists a move record.
pub fn put_move_op(rec: &MoveRecord) -> WriteOp {
    WriteOp::PutMeta {
        key: move_meta_key(move_region_id(rec)),
        value: rec.encode_to_vec(),
    }
}

/// The write that deletes the move record of a region.
pub fn delete_move_op(region_id: u64) -> WriteOp {
    WriteOp::DeleteMeta {
        key: move_meta_key(region_id),
    }
}

/// Loads the move records of a store's engine.
pub fn load_moves(engine: &Engine) -> Result<Vec<MoveRecord>> {
    load_records(engine, MOVE_PREFIX, "move")
}

/// The id of the region a move record is about.
pub fn move_region_id(rec: &MoveRecord) -> u64 {
    rec.region.as_ref().map_or(0, |r| r.id)
}

/// The record of a new attempt to move `region` to `target`: the region as
/// the target will serve it (on the target, `conf_ver` one higher) and a
/// fresh move id.
pub fn new_move(region: &Region, target: Store) -> MoveRecord {
    let e = region.epoch_or_default();
    let moved = Region {
        epoch: Some(RegionEpoch {
            version: e.version,
            conf_ver: e.conf_ver + 1,
        }),
        store_id: target.id,
        ..region.clone()
    };
    MoveRecord {
        region: Some(moved),
        target: Some(target),
        move_id: new_move_id(region.id),
    }
}

/// A fresh, non-zero id for one attempt to move `region_id`.
fn new_move_id(region_id: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(region_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}

impl Node {
    /// Stops serving a region that now lives on another store and deletes
    /// it here: its record, its data and any move record, in one batch;
    /// then gives the data's disk space back.
    pub(crate) async fn drop_local_region(&self, r: &Region) -> Result<()> {
        self.regions.write().await.remove(r.id);
        self.engine
            .write(vec![
                WriteOp::DeleteMeta {
                    key: region_meta_key(r.id),
                },
                delete_move_op(r.id),
                WriteOp::ClearRange {
                    start: r.start_key.clone(),
                    end: r.end_key.clone(),
                },
            ])
            .await?;
        // The range is no longer served (and no longer recorded): nobody
        // reads it while its files go.
        if let Err(e) = self
            .engine
            .reclaim_range(r.start_key.clone(), r.end_key.clone())
            .await
        {
            tracing::warn!(region_id = r.id, error = %e, "disk space of a dropped region not reclaimed");
        }
        Ok(())
    }
}
