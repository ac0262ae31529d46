//! The target store's side of a move: import the streamed data, serve the
//! region only after the last message (complete and counted) unless the
//! move was called off, and answer the source's `SettleImport`.

use std::sync::Arc;

use rdb_proto::v1::{
    ImportRegionRequest, ImportRegionResponse, Region, RegionEpoch, SettleImportResponse,
};
use rdb_storage::WriteOp;
use tonic::Streaming;

use crate::error::{Result, ServerError};
use crate::node::Node;
use crate::regions::{put_region_op, RegionMap};

/// Whether the import of `region` by move `move_id` may (still) be served
/// here: not called off by its source, not overlapping a served region.
fn may_serve(map: &RegionMap, region: &Region, move_id: u64) -> Result<()> {
    if map.is_called_off(move_id) {
        return Err(ServerError::Aborted(format!(
            "move {move_id} of region {} was called off by its source",
            region.id
        )));
    }
    match map.overlaps(&region.start_key, &region.end_key) {
        Some(id) => Err(ServerError::FailedPrecondition(format!(
            "region {} overlaps region {id} already served here",
            region.id
        ))),
        None => Ok(()),
    }
}

impl Node {
    /// Imports `region` (addressed to this store) by move `move_id`: the
    /// pairs of `first` and of every further message of `rest`; then serves
    /// it if the last message arrived, the key count matches and the move
    /// was not called off. Returns how many keys were imported.
    pub async fn import_region(
        self: &Arc<Self>,
        region: Region,
        move_id: u64,
        first: ImportRegionRequest,
        mut rest: Streaming<ImportRegionRequest>,
    ) -> Result<ImportRegionResponse> {
        may_serve(&*self.regions.read().await, &region, move_id)?;
        let engine = &self.engine;
        // Clear leftovers of an earlier, interrupted import of this range
        // (not served here, so nobody reads it meanwhile).
        engine
            .reclaim_range(region.start_key.clone(), region.end_key.clone())
            .await?;
        let mut imported = 0u64;
        let mut total = None;
        let mut msg = Some(first);
        while let Some(m) = msg {
            if total.is_some() {
                return Err(ServerError::InvalidArgument(
                    "import message after the one marked last".into(),
                ));
            }
            for p in &m.pairs {
                if !region.contains(&p.key) {
                    return Err(ServerError::InvalidArgument(format!(
                        "imported key {} is outside region {}",
                        rdb_proto::region::display_key(&p.key),
                        region.id
                    )));
                }
            }
            imported += m.pairs.len() as u64;
            if m.last {
                total = Some(m.total_keys);
            }
            let ops: Vec<_> = m
                .pairs
                .into_iter()
                .map(|p| WriteOp::Import {
                    key: p.key,
                    value: p.value,
                    version: p.version,
                })
                .collect();
            if !ops.is_empty() {
                engine.write(ops).await?;
            }
            msg = rest.message().await.map_err(ServerError::Peer)?;
        }
        match total {
            None => {
                return Err(ServerError::Aborted(format!(
                    "the import stream of region {} ended before its last message; not served",
                    region.id
                )))
            }
            Some(t) if t != imported => {
                return Err(ServerError::DataLoss(format!(
                    "received {imported} keys of region {}, the source sent {t}; not served",
                    region.id
                )))
            }
            Some(_) => {}
        }
        // Start serving in a task of its own, so that a dropped connection
        // cannot cancel it half-way. It holds the region map's lock from the
        // check to the insert, as SettleImport does: an import is either
        // served or called off, never both.
        let node = self.clone();
        let served = region.clone();
        tokio::spawn(async move {
            let mut map = node.regions.write().await;
            may_serve(&map, &served, move_id)?;
            node.engine.write(vec![put_region_op(&served)]).await?;
            map.insert(served);
            Ok::<(), ServerError>(())
        })
        .await
        .map_err(|e| ServerError::Internal(format!("import task: {e}")))??;
        tracing::info!(region_id = region.id, imported, move_id, "imported region");
        // Test builds only (feature `failpoints`): a crash right after the
        // region is served here, and an answer that never reaches the source.
        fail::fail_point!("import-crash-after-serving", |_| {
            tracing::error!("failpoint import-crash-after-serving: aborting");
            std::process::abort()
        });
        fail::fail_point!("import-answer-lost", |_| Err(ServerError::Remote(
            "failpoint import-answer-lost".into()
        )));
        Ok(ImportRegionResponse {
            imported_keys: imported,
        })
    }

    /// Answers whether region `region_id` is served here at `epoch` or
    /// later; if not, calls the import of move `move_id` off, under the
    /// region map's lock, so it can never start serving afterwards.
    pub async fn settle_import(
        &self,
        region_id: u64,
        epoch: RegionEpoch,
        move_id: u64,
    ) -> SettleImportResponse {
        let mut map = self.regions.write().await;
        let serving = map
            .get(region_id)
            .is_some_and(|st| st.region.epoch_or_default().is_at_least(&epoch));
        if !serving {
            map.call_off(move_id);
        }
        tracing::info!(region_id, move_id, serving, "settled an import");
        SettleImportResponse { serving }
    }
}
