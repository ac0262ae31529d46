//! One call's retry state and the outcome of one attempt.

use std::time::{Duration, Instant};

use rdb_proto::v1::RegionError;

use crate::{ClientConfig, Error};

/// What one attempt against a region produced.
pub(crate) enum Attempt<T> {
    /// The store answered with the results.
    Done(T),
    /// The store refused the request with a routing error: not applied.
    Region(RegionError),
    /// The call failed for good (the coalescer could not learn a write's
    /// outcome): returned to the caller, not retried.
    Failed(Error),
}

impl<T> Attempt<T> {
    /// The attempt with its results mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(t) => Attempt::Done(f(t)),
            Attempt::Region(e) => Attempt::Region(e),
            Attempt::Failed(e) => Attempt::Failed(e),
        }
    }
}

/// Retry state of one call.
pub(crate) struct Retry {
    /// Attempts that failed and counted against `max_attempts`.
    pub attempts: u32,
    /// When the call started.
    pub started: Instant,
    /// The next backoff.
    pub backoff: Duration,
    /// The last failure, for the final error.
    pub last: String,
}

impl Retry {
    pub fn new(cfg: &ClientConfig) -> Retry {
        Retry {
            attempts: 0,
            started: Instant::now(),
            backoff: cfg.initial_backoff,
            last: String::new(),
        }
    }

    /// Sleeps before the next attempt; false when the budget is spent.
    /// `busy` is the server's backoff hint (`ServerIsBusy`): such waits are
    /// bounded by the deadline only, since the server said it will recover
    /// (a region being moved), not that the route is wrong.
    pub async fn next(&mut self, cfg: &ClientConfig, busy: Option<Duration>) -> bool {
        let hint = busy;
        if busy.is_none() {
            self.attempts += 1;
        }
        if self.attempts >= cfg.max_attempts || self.started.elapsed() >= cfg.retry_deadline {
            return false;
        }
        let jitter = Duration::from_micros(
            rand::random::<u64>() % (self.backoff.as_micros() as u64 / 2 + 1),
        );
        let wait = hint
            .unwrap_or(self.backoff + jitter)
            .min(cfg.retry_deadline.saturating_sub(self.started.elapsed()));
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(cfg.max_backoff);
        true
    }
}

/// An attempt's outcome from a response's `region_error` field and its result.
pub(crate) fn attempt<T>(
    region_error: Option<RegionError>,
    done: impl FnOnce() -> T,
) -> Attempt<T> {
    match region_error {
        Some(e) => Attempt::Region(e),
        None => Attempt::Done(done()),
    }
}
