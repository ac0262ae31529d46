//! What PD's operators are doing and have done (`Pd.GetOperators`,
//! `rdb-cli operators`): the running operator with its current step, and
//! the last [`RECENT`] finished ones with their outcome. Kept in the PD
//! leader's memory only (a new leader starts with an empty log), as PD
//! keeps its operators.

use std::collections::VecDeque;
use std::sync::Mutex;

use rdb_proto::v1::OperatorStatus;

use crate::error::PdError;
use crate::tso::now_ms;

/// Finished operators kept.
pub const RECENT: usize = 64;

#[derive(Default)]
struct Inner {
    next: u64,
    running: Vec<(OperatorStatus, bool)>,
    recent: VecDeque<OperatorStatus>,
}

/// The operators of this PD leader.
#[derive(Default)]
pub struct OperatorLog {
    inner: Mutex<Inner>,
}

/// One running operator's handle: its steps and whether it did anything.
#[derive(Clone, Copy)]
pub struct Running<'a> {
    log: &'a OperatorLog,
    id: u64,
}

impl OperatorLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the start of an operator.
    pub fn start(&self, kind: &str, region_id: u64, store_id: u64, source: &str) -> Running<'_> {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner.running.push((
            OperatorStatus {
                id,
                kind: kind.into(),
                region_id,
                store_id,
                source: source.into(),
                step: "starting".into(),
                started_ms: now_ms(),
                finished_ms: 0,
                outcome: String::new(),
            },
            false,
        ));
        Running { log: self, id }
    }

    /// The running operators and the finished ones, newest first.
    pub fn snapshot(&self) -> (Vec<OperatorStatus>, Vec<OperatorStatus>) {
        let inner = self.lock();
        (
            inner.running.iter().map(|(s, _)| s.clone()).collect(),
            inner.recent.iter().cloned().collect(),
        )
    }
}

impl Running<'_> {
    /// Records the step the operator is at.
    pub fn step(&self, step: impl Into<String>) {
        let mut inner = self.log.lock();
        if let Some((s, _)) = inner.running.iter_mut().find(|(s, _)| s.id == self.id) {
            s.step = step.into();
        }
    }

    /// Records that there was nothing to do (the plan no longer held).
    pub fn skip(&self, why: impl Into<String>) {
        let mut inner = self.log.lock();
        if let Some((s, skipped)) = inner.running.iter_mut().find(|(s, _)| s.id == self.id) {
            s.step = why.into();
            *skipped = true;
        }
    }

    /// Records the outcome: `done`, `skipped`, or `failed: ...`.
    pub fn finish<T>(&self, result: &Result<T, PdError>) {
        let mut inner = self.log.lock();
        let Some(i) = inner.running.iter().position(|(s, _)| s.id == self.id) else {
            return;
        };
        let (mut s, skipped) = inner.running.remove(i);
        s.finished_ms = now_ms();
        s.outcome = match result {
            Ok(_) if skipped => "skipped".into(),
            Ok(_) => "done".into(),
            Err(e) => format!("failed: {e}"),
        };
        inner.recent.push_front(s);
        inner.recent.truncate(RECENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_move_from_running_to_recent_with_their_outcome() {
        let log = OperatorLog::default();
        let a = log.start("add-replica", 2, 4, "checker");
        a.step("adding a learner");
        let (running, recent) = log.snapshot();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].step, "adding a learner");
        assert!(recent.is_empty());
        a.finish::<()>(&Ok(()));
        let b = log.start("remove-replica", 2, 1, "by hand");
        b.skip("the region changed");
        b.finish::<()>(&Ok(()));
        let c = log.start("transfer-leader", 3, 2, "balancer");
        c.finish::<()>(&Err(PdError::FailedPrecondition("no".into())));
        let (running, recent) = log.snapshot();
        assert!(running.is_empty());
        let outcomes: Vec<&str> = recent.iter().map(|s| s.outcome.as_str()).collect();
        assert_eq!(outcomes[0], "failed: no");
        assert_eq!(outcomes[1..], ["skipped", "done"]);
        for _ in 0..RECENT + 5 {
            log.start("x", 1, 1, "y").finish::<()>(&Ok(()));
        }
        assert_eq!(log.snapshot().1.len(), RECENT);
    }
}
