//! Moving a region to another store without ever serving it on two stores.
//!
//! Source store S moves region R to target store T:
//!
//! 1. S pauses R (requests get `ServerIsBusy`) and persists a [`MoveRecord`].
//! 2. S streams R's data to T's `ImportRegion`. T serves R (with the new
//!    epoch) only if the stream was complete (its last message arrived and
//!    the key count matches) and the move was not called off (step 4).
//! 3. If T answers success, S stops serving R and deletes R's data, its
//!    region record and the move record in one batch.
//! 4. Otherwise S does not know whether T serves R (the answer may have been
//!    lost after T committed). S asks T with `SettleImport`: T answers
//!    whether it serves R at the new epoch or later, and if not, calls that
//!    import off so it can never start serving afterwards. If T does not
//!    serve R, S also asks PD: T may have served R and split or moved it on,
//!    which PD learned from T's heartbeat before it could happen. Only when
//!    both say no does S serve R again. While T or PD cannot be reached, R
//!    stays paused and S keeps asking in the background.
//! 5. A store that restarts with a move record keeps R paused and goes on
//!    with step 4.
//!
//! A target that never comes back leaves R paused: without replication the
//! only copy of an acknowledged write may be on the target, so serving the
//! source's copy again could lose it.
//!
//! # Layout
//!
//! - [`record`]: the persisted [`MoveRecord`] and the batch that deletes a
//!   region that moved away.
//! - [`source`]: steps 1 to 3 on S (pause, stream the data in chunks,
//!   delete the moved region).
//! - [`settle`]: step 4 on S (ask T and PD, then delete or serve again).
//! - [`target`]: T's side (import, serve after the last message, answer
//!   `SettleImport`).
//! - [`recovery`]: step 5 (what a restarting store does with move records
//!   and regions left behind).
//!
//! [`MoveRecord`]: rdb_proto::v1::MoveRecord

pub mod record;
pub mod recovery;
pub mod settle;
pub mod source;
pub mod target;
