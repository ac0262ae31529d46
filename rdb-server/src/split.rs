//! Applying a split ordered by PD: one region becomes two, both halves
//! persisted in one write batch.

use rdb_proto::v1::{ApplySplitResponse, Region, RegionEpoch};

use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::regions::{key_not_in_region, put_region_op};

impl Node {
    /// Splits region `region_id` (at `epoch`) at `split_key`: the left half
    /// keeps the id, the right half gets `new_region_id`, both a version one
    /// higher. A region not served here at that epoch, or a split key not
    /// strictly inside it, is answered with its routing error.
    pub async fn apply_split(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        split_key: Vec<u8>,
        new_region_id: u64,
    ) -> Result<ApplySplitResponse> {
        let mut map = self.regions.write().await;
        let region = match map.check(region_id, epoch) {
            Ok(r) => r.clone(),
            Err(e) => {
                return Ok(ApplySplitResponse {
                    region_error: Some(e),
                    ..Default::default()
                })
            }
        };
        if split_key == region.start_key || !region.contains(&split_key) {
            return Ok(ApplySplitResponse {
                region_error: Some(key_not_in_region(&split_key, &region)),
                ..Default::default()
            });
        }
        if new_region_id == 0 || map.get(new_region_id).is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "new region id {new_region_id} is 0 or already used"
            )));
        }
        let epoch = region.epoch_or_default();
        let new_epoch = RegionEpoch {
            version: epoch.version + 1,
            conf_ver: epoch.conf_ver,
        };
        let left = Region {
            end_key: split_key.clone(),
            epoch: Some(new_epoch),
            ..region.clone()
        };
        let right = Region {
            id: new_region_id,
            start_key: split_key,
            end_key: region.end_key.clone(),
            epoch: Some(new_epoch),
            store_id: self.store_id,
        };
        // Both halves in one write batch: after a crash either the old region or both halves exist.
        self.engine
            .write(vec![put_region_op(&left), put_region_op(&right)])
            .await?;
        map.insert(left.clone());
        map.insert(right.clone());
        tracing::info!(
            region_id = left.id,
            new_region_id = right.id,
            "applied split"
        );
        Ok(ApplySplitResponse {
            region_error: None,
            left: Some(left),
            right: Some(right),
        })
    }
}
