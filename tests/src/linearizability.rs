//! A linearizability checker for histories of operations on independent
//! keys (Wing and Gong's search with Lowe's memoization, as in Porcupine
//! and Knossos).
//!
//! Each key is a register: get, put, delete and compare-and-swap on its
//! value. Linearizability is local (a history is linearizable iff its
//! restriction to each key is), so every key is checked on its own.
//!
//! Every operation has an invocation time, a return time and an outcome:
//! - **ok**: it took effect once, between its invocation and its return,
//!   with the result recorded;
//! - **failed for sure**: it took no effect (it is left out of the history);
//! - **unknown** (a write whose answer never came): it took effect once at
//!   some point after its invocation, or never. It is checked with a return
//!   time of infinity and an unconstrained result: placed after every other
//!   operation it has no visible effect, which covers "never".

use std::collections::HashSet;
use std::time::Instant;

/// A value of a register (small numbers keep the search cheap).
pub type Val = u64;

/// What an operation did, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A read that returned `Some(value)` or `None` (absent).
    Get(Option<Val>),
    /// A write of a value.
    Put(Val),
    /// A delete; `Some(existed)` if its answer came back.
    Delete(Option<bool>),
    /// Writes `new` (`None`: deletes) if the value is `expect` (`None`:
    /// absent); `Some(succeeded)` if its answer came back.
    Cas {
        /// The expected value (`None`: absent).
        expect: Option<Val>,
        /// The new value (`None`: delete).
        new: Option<Val>,
        /// Whether it succeeded, if known.
        succeeded: Option<bool>,
    },
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Event {
    /// The key.
    pub key: Vec<u8>,
    /// What it did.
    pub op: Op,
    /// When it was invoked.
    pub invoked: Instant,
    /// When it returned; `None` when its outcome is unknown.
    pub returned: Option<Instant>,
}

/// Applies `op` to `state`: the new state, or `None` if the recorded
/// result is impossible from `state`.
fn step(state: Option<Val>, op: &Op) -> Option<Option<Val>> {
    match op {
        Op::Get(seen) => (*seen == state).then_some(state),
        Op::Put(v) => Some(Some(*v)),
        Op::Delete(existed) => match existed {
            Some(e) if *e != state.is_some() => None,
            _ => Some(None),
        },
        Op::Cas {
            expect,
            new,
            succeeded,
        } => {
            let holds = state == *expect;
            match succeeded {
                Some(s) if *s != holds => None,
                _ => Some(if holds { *new } else { state }),
            }
        }
    }
}

/// Why a key's history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    /// The key.
    pub key: Vec<u8>,
    /// Its operations, in invocation order, for the report.
    pub history: Vec<Event>,
}

/// Checks every key's history; the first key that is not linearizable.
/// `limit` bounds the search steps per key (a search that runs out counts
/// as a violation, so a check can never pass by giving up).
pub fn check(events: &[Event], limit: u64) -> Result<(), Violation> {
    let mut keys: Vec<&Vec<u8>> = events.iter().map(|e| &e.key).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mut ops: Vec<Event> = events.iter().filter(|e| &e.key == key).cloned().collect();
        ops.sort_by_key(|e| e.invoked);
        if !linearizable(&ops, limit) {
            return Err(Violation {
                key: key.clone(),
                history: ops,
            });
        }
    }
    Ok(())
}

/// A pseudo-random 128-bit tag per operation (splitmix64), for hashing
/// the set of placed operations incrementally (Zobrist hashing).
fn tag(i: usize) -> u128 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(i as u64);
    (u128::from(a) << 64) | u128::from(mix(a))
}

/// Whether one register's history (from an absent value) is linearizable.
///
/// Depth-first search over the order in which operations take effect: an
/// operation can come next if no operation still unplaced returned before
/// it was invoked; configurations (set of placed operations, value) already
/// explored are not explored again. Iterative, so that histories of
/// thousands of operations do not overflow the stack.
fn linearizable(ops: &[Event], limit: u64) -> bool {
    use std::collections::BTreeSet;
    let n = ops.len();
    let mut done = vec![false; n];
    // Unplaced operations, and the return times of those that returned.
    let mut open: BTreeSet<usize> = (0..n).collect();
    let mut returns: BTreeSet<(Instant, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.returned.map(|r| (r, i)))
        .collect();
    let mut seen: HashSet<(u128, Option<Val>)> = HashSet::new();
    let mut placed_hash = 0u128;
    let mut state: Option<Val> = None;
    // The operations placed so far, with the value before each.
    let mut stack: Vec<(usize, Option<Val>)> = Vec::new();
    let mut steps = 0u64;
    let mut resume = 0usize;
    let mut fresh = true;
    loop {
        let mut exhausted = false;
        if fresh {
            if stack.len() == n {
                return true;
            }
            steps += 1;
            if steps > limit {
                return false;
            }
            if seen.insert((placed_hash, state)) {
                resume = open.first().copied().unwrap_or(n);
            } else {
                exhausted = true;
            }
        }
        let mut found = None;
        if !exhausted {
            let bound = returns.first().map(|(r, _)| *r);
            let mut i = resume;
            while i < n {
                if !done[i] {
                    if bound.is_some_and(|b| ops[i].invoked > b) {
                        // Sorted by invocation: no later one can come next.
                        break;
                    }
                    if let Some(next) = step(state, &ops[i].op) {
                        found = Some((i, next));
                        break;
                    }
                }
                i += 1;
            }
        }
        match found {
            Some((i, next)) => {
                stack.push((i, state));
                done[i] = true;
                open.remove(&i);
                if let Some(r) = ops[i].returned {
                    returns.remove(&(r, i));
                }
                placed_hash ^= tag(i);
                state = next;
                fresh = true;
            }
            None => {
                let Some((i, prev)) = stack.pop() else {
                    return false;
                };
                done[i] = false;
                open.insert(i);
                if let Some(r) = ops[i].returned {
                    returns.insert((r, i));
                }
                placed_hash ^= tag(i);
                state = prev;
                resume = i + 1;
                fresh = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(op: Op, from: u64, to: Option<u64>) -> Event {
        let base = Instant::now();
        Event {
            key: b"k".to_vec(),
            op,
            invoked: base + Duration::from_millis(from),
            returned: to.map(|t| base + Duration::from_millis(t)),
        }
    }

    #[test]
    fn accepts_linearizable_histories() {
        // Concurrent put and get: the get may see either value.
        let h = vec![
            ev(Op::Put(1), 0, Some(10)),
            ev(Op::Put(2), 5, Some(20)),
            ev(Op::Get(Some(1)), 15, Some(25)),
            ev(Op::Get(Some(2)), 30, Some(31)),
        ];
        assert!(check(&h, 100_000).is_ok());
        // A CAS that lost to a concurrent one.
        let h = vec![
            ev(Op::Put(1), 0, Some(1)),
            ev(
                Op::Cas {
                    expect: Some(1),
                    new: Some(2),
                    succeeded: Some(true),
                },
                2,
                Some(10),
            ),
            ev(
                Op::Cas {
                    expect: Some(1),
                    new: Some(3),
                    succeeded: Some(false),
                },
                3,
                Some(9),
            ),
            ev(Op::Get(Some(2)), 11, Some(12)),
        ];
        assert!(check(&h, 100_000).is_ok());
    }

    #[test]
    fn rejects_a_stale_read_and_a_lost_write() {
        let stale = vec![
            ev(Op::Put(1), 0, Some(1)),
            ev(Op::Put(2), 2, Some(3)),
            ev(Op::Get(Some(1)), 4, Some(5)),
        ];
        assert!(check(&stale, 100_000).is_err());
        let lost = vec![ev(Op::Put(1), 0, Some(1)), ev(Op::Get(None), 2, Some(3))];
        assert!(check(&lost, 100_000).is_err());
        // Two CAS from absent cannot both succeed.
        let twice = |from| {
            ev(
                Op::Cas {
                    expect: None,
                    new: Some(from),
                    succeeded: Some(true),
                },
                from,
                Some(from + 1),
            )
        };
        assert!(check(&[twice(0), twice(2)], 100_000).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never_but_not_before_it_was_invoked() {
        let late = vec![
            ev(Op::Put(7), 0, None),
            ev(Op::Get(None), 1, Some(2)),
            ev(Op::Get(Some(7)), 50, Some(51)),
        ];
        assert!(check(&late, 100_000).is_ok());
        let never = vec![ev(Op::Put(7), 0, None), ev(Op::Get(None), 50, Some(51))];
        assert!(check(&never, 100_000).is_ok());
        let early = vec![ev(Op::Get(Some(7)), 0, Some(1)), ev(Op::Put(7), 2, None)];
        assert!(check(&early, 100_000).is_err());
        // Once seen, it cannot be undone by "never".
        let flip = vec![
            ev(Op::Put(7), 0, None),
            ev(Op::Get(Some(7)), 1, Some(2)),
            ev(Op::Get(None), 3, Some(4)),
        ];
        assert!(check(&flip, 100_000).is_err());
    }

    #[test]
    fn long_histories_are_checked_without_deep_recursion() {
        // 20,000 sequential puts and reads, then one stale read.
        let mut h = Vec::new();
        for i in 0..10_000u64 {
            h.push(ev(Op::Put(i), 4 * i, Some(4 * i + 1)));
            h.push(ev(Op::Get(Some(i)), 4 * i + 2, Some(4 * i + 3)));
        }
        assert!(check(&h, 10_000_000).is_ok());
        h.push(ev(Op::Get(Some(3)), 50_000, Some(50_001)));
        assert!(check(&h, 10_000_000).is_err());
    }
}
