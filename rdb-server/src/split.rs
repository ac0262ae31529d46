//! Splitting a region through its Raft log: the leader proposes a split
//! entry; every replica applies it at the same log index (see
//! [`crate::peer::RegionMachine`]).

use prost::Message;
use rdb_proto::v1::{ApplySplitResponse, Region, RegionEpoch};

use crate::command::{Answer, Command};
use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::peer::{epoch_changed, ProposeError};
use crate::regions::{check_epoch, key_not_in_region, not_found};

impl Node {
    /// Splits region `region_id` (at `epoch`) at `split_key`: the left half
    /// keeps the id, the right half gets `new_region_id` and the peer ids
    /// `new_peer_ids` (one per peer, in order), both a version one higher.
    /// Answers once the split is applied on this replica (the leader). A
    /// region without a replica here or not led here, a stale epoch, or a
    /// split key not strictly inside the region is answered with its
    /// routing error.
    pub async fn apply_split(
        &self,
        region_id: u64,
        epoch: Option<RegionEpoch>,
        split_key: Vec<u8>,
        new_region_id: u64,
        new_peer_ids: Vec<u64>,
    ) -> Result<ApplySplitResponse> {
        let refuse = |e| ApplySplitResponse {
            region_error: Some(e),
            ..Default::default()
        };
        let Some(peer) = self.regions().get(region_id) else {
            return Ok(refuse(not_found(region_id)));
        };
        let region = peer.region();
        if let Err(e) = check_epoch(&region, epoch) {
            return Ok(refuse(e));
        }
        if split_key == region.start_key || !region.contains(&split_key) {
            return Ok(refuse(key_not_in_region(&split_key, &region)));
        }
        if new_region_id == 0 || self.regions().get(new_region_id).is_some() {
            return Err(ServerError::InvalidArgument(format!(
                "new region id {new_region_id} is 0 or already used"
            )));
        }
        if new_peer_ids.len() != region.peers.len() || new_peer_ids.contains(&0) {
            return Err(ServerError::InvalidArgument(format!(
                "region {} has {} peers: the split needs as many non-zero new peer ids, got {:?}",
                region.id,
                region.peers.len(),
                new_peer_ids
            )));
        }
        let cur = region.epoch_or_default();
        let cmd = Command::Split {
            epoch: (cur.version, cur.conf_ver),
            split_key,
            new_region_id,
            new_peer_ids,
        };
        let decode = |raw: &[u8]| {
            Region::decode(raw).map_err(|e| ServerError::Internal(format!("split answer: {e}")))
        };
        match peer.propose(&cmd).await {
            Ok(Answer::Split { left, right }) => Ok(ApplySplitResponse {
                region_error: None,
                left: Some(decode(&left)?),
                right: Some(decode(&right)?),
            }),
            Ok(Answer::EpochChanged(now)) => Ok(refuse(epoch_changed(decode(&now)?))),
            Ok(Answer::Refused(m)) => Err(ServerError::InvalidArgument(m)),
            Ok(other) => Err(ServerError::Internal(format!(
                "unexpected answer to a split: {other:?}"
            ))),
            Err(ProposeError::NotLeader(e)) => Ok(refuse(e)),
            Err(ProposeError::Unknown(m)) => Err(ServerError::Unavailable(format!(
                "the split of region {region_id} may or may not be applied: {m}"
            ))),
        }
    }
}
