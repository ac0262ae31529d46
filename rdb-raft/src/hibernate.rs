//! Hibernation of idle groups ([`crate::GroupConfig::hibernate`]), after
//! TiKV's hibernate regions.
//!
//! A leader whose log has not moved for two election timeouts, with every
//! member caught up and nobody asking for its read lease, asks each member
//! to sleep (`Raft.Hibernate`). Once all of them agreed it parks its own
//! ticker: no heartbeats. A sleeping follower's ticker is parked too: no
//! election timer. A sleeping group sends nothing and wakes nothing.
//!
//! Waking:
//! - the leader, before anything it is asked (a write, a leadership check,
//!   a membership change, a transfer): its ticker runs again and a
//!   heartbeat goes out at once;
//! - a follower, after any message of its group it receives (the leader's
//!   heartbeat, a vote request): it has heard from the group, and its
//!   election timer restarts from there;
//! - a follower whose leader's process stops answering the transport's
//!   pings (one per pair of processes, [`crate::net`]) for an election
//!   timeout: it elects, as it would have without hibernation;
//! - a leader with a member on a process that restarted (its ping answers
//!   with a new boot id): the restarted member hears from it before its
//!   own election timer runs out;
//! - any member whose term, role or leader changes.
//!
//! Hibernation touches only timers: a hibernating leader's lease has run
//! out (it was not asked for), so a read confirms the leadership with a
//! quorum first, which wakes the group.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{NodeId, Raft};

/// Not sleeping.
pub(crate) const AWAKE: u8 = 0;
/// A leader sleeping: its ticker (heartbeats) parked.
pub(crate) const LEADER: u8 = 1;
/// A follower sleeping: its ticker (election timer) parked.
pub(crate) const FOLLOWER: u8 = 2;

/// The `Raft.Hibernate` request: the leader of `term`, `leader`, has
/// everything up to `last_log_index` on every member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HibernateMsg {
    pub term: u64,
    pub leader: NodeId,
    pub last_log_index: u64,
}

/// One member's hibernation state.
#[derive(Default)]
pub(crate) struct Sleep {
    state: AtomicU8,
    /// The term it fell asleep in.
    term: AtomicU64,
    /// For a sleeping follower: its leader's address.
    leader_addr: Mutex<String>,
    /// Serializes the changes of state with the ticker switch, so that a
    /// wake never loses to a concurrent fall asleep.
    lock: Mutex<()>,
    /// Counts what the member was asked to do ([`Sleep::touch`]): a leader
    /// falls asleep only if nothing was asked since it decided to.
    activity: AtomicU64,
    /// How many times it fell asleep.
    naps: AtomicU64,
    /// When it last woke.
    woke_at: Mutex<Option<std::time::Instant>>,
    /// Notified when the member wakes.
    pub woken: tokio::sync::Notify,
}

impl Sleep {
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// What the member was asked to do so far (see [`Sleep::fall_asleep`]).
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Acquire)
    }

    /// Records that the member is asked to do something, and wakes it.
    /// Under the lock: a concurrent [`Sleep::fall_asleep`] either
    /// finished before (and is undone here) or sees the new activity.
    pub fn touch(&self, raft: &Raft) -> u8 {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.activity.fetch_add(1, Ordering::AcqRel);
        self.wake_locked(raft)
    }

    /// Parks this member's ticker, as a leader (`LEADER`) or a follower
    /// (`FOLLOWER`, whose leader is at `leader_addr`) of `term`, unless it
    /// was asked for something since its activity was `seen`. Whether it
    /// sleeps now.
    pub fn fall_asleep(
        &self,
        raft: &Raft,
        as_: u8,
        term: u64,
        leader_addr: String,
        seen: u64,
    ) -> bool {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.activity() != seen {
            return false;
        }
        *self.leader_addr.lock().unwrap_or_else(|p| p.into_inner()) = leader_addr;
        self.term.store(term, Ordering::Release);
        self.naps.fetch_add(1, Ordering::AcqRel);
        self.state.store(as_, Ordering::Release);
        raft.runtime_config().tick(false);
        true
    }

    /// While it sleeps as a leader: which nap this is (it stays the same
    /// until it wakes; the next one is another).
    pub fn leader_nap(&self) -> Option<u64> {
        let n = self.naps.load(Ordering::Acquire);
        (self.state() == LEADER && self.naps.load(Ordering::Acquire) == n).then_some(n)
    }

    /// Runs the ticker again; the state it was in (`AWAKE`: nothing done).
    pub fn wake(&self, raft: &Raft) -> u8 {
        if self.state() == AWAKE {
            return AWAKE;
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake_locked(raft)
    }

    fn wake_locked(&self, raft: &Raft) -> u8 {
        let was = self.state.swap(AWAKE, Ordering::AcqRel);
        if was != AWAKE {
            *self.woke_at.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now());
            raft.runtime_config().tick(true);
            self.woken.notify_waiters();
        }
        was
    }

    /// How long it has been awake since it last slept (`Duration::MAX` if
    /// it never slept).
    pub fn awake_for(&self) -> std::time::Duration {
        self.woke_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(std::time::Duration::MAX, |t| t.elapsed())
    }

    /// A sleeping follower's leader address.
    pub fn leader_addr(&self) -> Option<String> {
        (self.state() == FOLLOWER).then(|| {
            self.leader_addr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}
