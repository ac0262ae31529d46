//! The replica checker: while this member leads PD, it brings every region
//! to `max-replicas` voters, or to as many as there are stores up when
//! there are fewer (a new cluster starts with one store and one replica and
//! grows as stores join), and replaces the replicas of stores silent for
//! `max-store-down-time` (dead). Each fix is an operator of
//! [`crate::operator`] (one at a time, behind the same lock as the ones run
//! by hand): promote a learner left halfway (or remove it if it does not
//! catch up, or sits on a dead store), add a replica on the store holding
//! the fewest, remove an extra replica (a dead one once it has its
//! replacement), and, when every region is whole, balance replicas and
//! leaderships across the stores that are up.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{ReplicaFix, ReplicaRules};
use crate::error::PdError;
use crate::node::PdNode;
use crate::service::PdService;

/// The checker's settings (`[schedule]` in PD's config).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// What it aims for.
    pub rules: ReplicaRules,
    /// Pause between two rounds over all regions.
    pub patrol: Duration,
}

/// Runs the checker until the process stops; rounds run only while
/// `node` leads and serves.
pub async fn run(svc: PdService, node: Arc<PdNode>, cfg: Schedule) {
    loop {
        tokio::time::sleep(cfg.patrol).await;
        if node.check_serving().is_err() {
            continue;
        }
        for fix in svc.cluster.replica_fixes(&cfg.rules) {
            if node.check_serving().is_err() {
                break;
            }
            apply(&svc, fix).await;
        }
    }
}

async fn apply(svc: &PdService, fix: ReplicaFix) {
    match fix {
        ReplicaFix::Promote {
            region_id,
            store_id,
            voters,
        } => {
            let Err(e) = svc.promote_replica(region_id, store_id).await else {
                return;
            };
            // It did not catch up (its replica may be gone from its store):
            // a fresh one is added next round.
            tracing::warn!(region_id, store_id, error = %e, "replica checker: promoting a learner failed; removing it");
            if let Err(e) = svc
                .remove_replica_of(region_id, store_id, Some(voters))
                .await
            {
                tracing::warn!(region_id, store_id, error = %e, "replica checker: removing a learner failed");
            }
        }
        ReplicaFix::Remove {
            region_id,
            store_id,
            voters,
        } => match svc
            .remove_replica_of(region_id, store_id, Some(voters))
            .await
        {
            Ok((_, true)) => {
                tracing::info!(
                    region_id,
                    store_id,
                    "replica checker: extra replica removed"
                )
            }
            Ok((_, false)) => {}
            Err(e) => {
                tracing::warn!(region_id, store_id, error = %e, "replica checker: removing an extra replica failed")
            }
        },
        ReplicaFix::TransferLeader {
            region_id,
            from,
            to,
        } => match svc.transfer_leader_from(region_id, from, to).await {
            Ok(true) => tracing::info!(region_id, from, to, "balancer: leadership handed over"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(region_id, from, to, error = %e, "balancer: handing over a leadership failed")
            }
        },
        ReplicaFix::Add {
            region_id,
            stores,
            voters,
        } => {
            for store_id in stores {
                match svc.add_replica_below(region_id, store_id, voters).await {
                    Ok((_, added)) => {
                        if added {
                            tracing::info!(region_id, store_id, "replica checker: replica added");
                        }
                        return;
                    }
                    // This store cannot take it (it holds a stale replica
                    // over the range, or went down): try the next one.
                    Err(e @ PdError::FailedPrecondition(_)) => {
                        tracing::warn!(region_id, store_id, error = %e, "replica checker: store refused a replica; trying another");
                    }
                    Err(e) => {
                        tracing::warn!(region_id, store_id, error = %e, "replica checker: adding a replica failed");
                        return;
                    }
                }
            }
        }
    }
}
