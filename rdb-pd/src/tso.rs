//! The timestamp oracle.
//!
//! A timestamp is `physical_ms << 18 | logical`. PD keeps a persisted
//! high-water mark (`tso_window`, physical milliseconds) that is always ahead
//! of every timestamp it has served: before serving a physical time at or past
//! the mark, it durably moves the mark [`WINDOW`] ahead. After a restart it
//! starts above the stored mark, so it never repeats or goes back, even if the
//! wall clock moved backwards. This is the approach of TiKV's PD.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdb_proto::limits::{compose_timestamp, MAX_TSO_COUNT, TSO_LOGICAL_BITS};
use rdb_storage::{Engine, WriteOp};
use tokio::sync::Mutex;

use crate::error::{PdError, Result};

/// How far ahead of the served physical time the persisted mark is kept.
pub const WINDOW: Duration = Duration::from_secs(3);
const WINDOW_KEY: &[u8] = b"tso_window";
const MAX_LOGICAL: u64 = 1 << TSO_LOGICAL_BITS;

struct State {
    physical: u64,
    logical: u64,
    window_end: u64,
}

/// The timestamp oracle.
pub struct Tso {
    engine: Engine,
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
    /// Loads the persisted mark and starts above it.
    pub async fn open(engine: Engine) -> Result<Tso> {
        let saved = match engine.get_meta(WINDOW_KEY)? {
            // A physical part must fit its 64 - 18 bits.
            Some(raw) => rdb_storage::codec::decode_counter(
                &raw,
                "tso_window",
                (1 << (64 - TSO_LOGICAL_BITS)) - 2,
            )?,
            None => 0,
        };
        let physical = now_ms().max(saved + 1);
        let tso = Tso {
            engine,
            state: Mutex::new(State {
                physical,
                logical: 0,
                window_end: 0,
            }),
        };
        {
            let mut st = tso.state.lock().await;
            tso.persist_window(&mut st).await?;
        }
        tracing::info!(
            saved_window_ms = saved,
            start_physical_ms = physical,
            "TSO ready"
        );
        Ok(tso)
    }

    async fn persist_window(&self, st: &mut State) -> Result<()> {
        let end = st.physical + WINDOW.as_millis() as u64;
        self.engine
            .write(vec![WriteOp::PutMeta {
                key: WINDOW_KEY.to_vec(),
                value: end.to_be_bytes().to_vec(),
            }])
            .await?;
        st.window_end = end;
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
            self.persist_window(&mut st).await?;
        }
        let first = compose_timestamp(st.physical, st.logical);
        st.logical += count;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn strictly_increasing_and_above_the_window_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = Engine::open(tmp.path(), Default::default()).unwrap();
        let tso = Tso::open(engine.clone()).await.unwrap();
        let mut last = 0;
        for i in 0..2000u32 {
            let count = 1 + (i % 300);
            let first = tso.allocate(count).await.unwrap();
            assert!(first > last, "{first} > {last}");
            last = first + u64::from(count) - 1;
        }
        assert!(tso.allocate(0).await.is_err());
        assert!(tso.allocate(MAX_TSO_COUNT + 1).await.is_err());
        let window = tso.state.lock().await.window_end;
        drop(tso);
        let tso = Tso::open(engine).await.unwrap();
        let first = tso.allocate(1).await.unwrap();
        assert!(first > last);
        assert!(
            first >> TSO_LOGICAL_BITS > window,
            "restart starts above the persisted window"
        );
    }
}
