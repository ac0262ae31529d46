//! The timestamp oracle.
//!
//! A timestamp is `physical_ms << 18 | logical`. The replicated TSO window
//! (`tso_window`, physical milliseconds) is always ahead of every timestamp
//! any PD leader has served: before serving a physical time at or past the
//! window's end, the leader commits a new end [`WINDOW`] ahead through Raft.
//!
//! Only the leader serves, only while its lease holds, and only after it is
//! fenced ([`Tso::activate`]): a new leader first applies everything
//! committed before its term, starts at `max(now, saved window + 1 ms)` and
//! commits its first window before it serves. Since a new leader is elected
//! only after the old one's lease ended, every timestamp of a later leader
//! is above every timestamp of an earlier one, also when the wall clock
//! moves backwards. This is the approach of TiKV's PD on etcd; see
//! `specs/005-ha-pd/spec.md`, "TSO fencing".

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdb_proto::limits::{compose_timestamp, MAX_TSO_COUNT, TSO_LOGICAL_BITS};
use tokio::sync::Mutex;

use crate::cluster::propose;
use crate::error::{PdError, Result};
use crate::meta::{Command, Meta};

/// How far ahead of the served physical time the replicated window is kept.
pub const WINDOW: Duration = Duration::from_secs(3);
const MAX_LOGICAL: u64 = 1 << TSO_LOGICAL_BITS;

struct State {
    /// The term this member leads and is fenced for (0: not serving).
    term: u64,
    physical: u64,
    logical: u64,
    window_end: u64,
}

/// The timestamp oracle of one PD member.
pub struct Tso {
    group: rdb_raft::Group,
    meta: Arc<Meta>,
    state: Mutex<State>,
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Tso {
    /// An oracle that serves nothing until [`activate`](Tso::activate)d.
    pub fn new(group: rdb_raft::Group, meta: Arc<Meta>) -> Tso {
        Tso {
            group,
            meta,
            state: Mutex::new(State {
                term: 0,
                physical: 0,
                logical: 0,
                window_end: 0,
            }),
        }
    }

    /// Fences the oracle for leader term `term`. The caller has made sure
    /// every command committed before the term is applied here.
    pub async fn activate(&self, term: u64) -> Result<()> {
        let mut st = self.state.lock().await;
        st.term = 0;
        let saved = self.meta.read().tso_window;
        let physical = now_ms().max(saved + 1);
        let end = propose(
            &self.group,
            &Command::SetTsoWindow {
                end: physical + WINDOW.as_millis() as u64,
            },
        )
        .await?;
        *st = State {
            term,
            physical,
            logical: 0,
            window_end: end,
        };
        tracing::info!(
            term,
            saved_window_ms = saved,
            start_physical_ms = physical,
            "TSO fenced: serving as leader"
        );
        Ok(())
    }

    /// Reserves `count` consecutive timestamps; returns the first.
    pub async fn allocate(&self, count: u32) -> Result<u64> {
        if count == 0 || count > MAX_TSO_COUNT {
            return Err(PdError::InvalidArgument(format!(
                "TSO count must be between 1 and {MAX_TSO_COUNT}, got {count}"
            )));
        }
        let count = u64::from(count);
        let mut st = self.state.lock().await;
        if st.term == 0 || !self.group.lease_valid(st.term) {
            return Err(PdError::Unavailable(
                "this PD member does not hold the leader lease; retry (the client finds the leader)"
                    .into(),
            ));
        }
        let now = now_ms();
        if now > st.physical {
            st.physical = now;
            st.logical = 0;
        }
        if st.logical + count > MAX_LOGICAL {
            // Logical space of this millisecond is used up: move to the next one.
            st.physical += 1;
            st.logical = 0;
        }
        if st.physical >= st.window_end {
            let want = st.physical + WINDOW.as_millis() as u64;
            let end = propose(&self.group, &Command::SetTsoWindow { end: want }).await?;
            st.window_end = end;
            if !self.group.lease_valid(st.term) {
                return Err(PdError::Unavailable(
                    "this PD member lost the leader lease; retry".into(),
                ));
            }
        }
        let first = compose_timestamp(st.physical, st.logical);
        st.logical += count;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Multi-threaded: the lease keeper must run while the loop allocates.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strictly_increasing_and_above_the_window_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (meta, group) = crate::node::single_member_for_tests(tmp.path()).await;
        let tso = Tso::new(group.clone(), meta.clone());
        assert!(tso.allocate(1).await.is_err(), "not fenced yet");
        let term = group.status().term;
        tso.activate(term).await.unwrap();
        let mut last = 0;
        for i in 0..2000u32 {
            let count = 1 + (i % 300);
            let first = tso.allocate(count).await.unwrap();
            assert!(first > last, "{first} > {last}");
            last = first + u64::from(count) - 1;
        }
        assert!(tso.allocate(0).await.is_err());
        assert!(tso.allocate(MAX_TSO_COUNT + 1).await.is_err());
        let window = meta.read().tso_window;
        assert!(window > last >> TSO_LOGICAL_BITS);
        drop(tso);
        group.shutdown().await;
        drop((meta, group));
        let (meta, group) = crate::node::single_member_for_tests(tmp.path()).await;
        assert_eq!(meta.read().tso_window, window, "the window is durable");
        let tso = Tso::new(group.clone(), meta);
        tso.activate(group.status().term).await.unwrap();
        let first = tso.allocate(1).await.unwrap();
        assert!(first > last);
        assert!(
            first >> TSO_LOGICAL_BITS > window,
            "a new leader starts above the saved window"
        );
    }
}
