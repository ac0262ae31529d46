//! The operations of a write request and their results. Plain data, without
//! RocksDB, so that [`codec`](crate::codec) can encode results for the
//! exactly-once records.

use serde::{Deserialize, Serialize};

/// A value with the version the store gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedValue {
    /// The version of the write that stored this value.
    pub version: u64,
    /// The value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What a compare-and-swap expects to find. Also the condition of a CAS
/// in a region's Raft entries (rdb-server encodes it with postcard: its
/// variants and their order are part of the entry format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key does not exist.
    Absent,
    /// The key exists with exactly this version.
    Version(u64),
    /// The key exists with exactly this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Expected {
    /// Whether `current` satisfies the expectation.
    pub fn matches(&self, current: Option<&VersionedValue>) -> bool {
        match (self, current) {
            (Expected::Absent, None) => true,
            (Expected::Version(v), Some(cur)) => cur.version == *v,
            (Expected::Value(v), Some(cur)) => &cur.value == v,
            _ => false,
        }
    }
}

/// One operation of an atomic write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Stores `value` under `key` with a new version.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` (a no-op if it does not exist).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Writes `new` (or deletes, if `new` is `None`) only if the key's current
    /// state matches `expected`.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The condition.
        expected: Expected,
        /// The new value, `None` to delete.
        new: Option<Vec<u8>>,
    },
    /// Removes every key in `[start, end)`; an empty `end` means no upper
    /// bound. One RocksDB range tombstone, whatever the size of the range;
    /// the result is the exact number of keys removed, counted off the
    /// writer thread (see the crate docs, "Range deletion").
    DeleteRange {
        /// First key of the range.
        start: Vec<u8>,
        /// End of the range (exclusive), empty for unbounded.
        end: Vec<u8>,
    },
    /// Removes every key in `[start, end)` like [`WriteOp::DeleteRange`], but
    /// counts nothing (result [`OpResult::Done`]): for internal clean-ups
    /// such as the start of a region import or the data of a region that
    /// moved away. See also [`Engine::reclaim_range`](crate::Engine::reclaim_range).
    ClearRange {
        /// First key of the range.
        start: Vec<u8>,
        /// End of the range (exclusive), empty for unbounded.
        end: Vec<u8>,
    },
    /// Stores a record moved in from another store, keeping its version.
    Import {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The version it had on the source store.
        version: u64,
    },
    /// Stores a metadata entry (keys starting with 0x00 are reserved).
    PutMeta {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes a metadata entry.
    DeleteMeta {
        /// The key.
        key: Vec<u8>,
    },
    /// Stores an entry of the `raft` column family (Raft logs and votes,
    /// written by `rdb-raft`; any key).
    PutRaft {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Stores an exactly-once record as it was read from another store's
    /// `dedup` column family (a region's snapshot), key and value as they are.
    PutDedup {
        /// The key ([`RequestId::scoped_key`]).
        key: Vec<u8>,
        /// The encoded record.
        value: Vec<u8>,
    },
    /// Removes the exactly-once records in `[start, end)` of the `dedup`
    /// column family (`start < end`; one range tombstone): a region's time
    /// buckets that can no longer decide anything
    /// ([`RequestId::bucketed_key`]).
    ClearDedup {
        /// First key of the range.
        start: Vec<u8>,
        /// End of the range (exclusive).
        end: Vec<u8>,
    },
    /// Removes the entries of the `raft` column family in `[start, end)`
    /// (`start < end`; one range tombstone).
    DeleteRaftRange {
        /// First key of the range.
        start: Vec<u8>,
        /// End of the range (exclusive).
        end: Vec<u8>,
    },
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasOutcome {
    /// Whether the condition held and the write was applied.
    pub succeeded: bool,
    /// The key's state the condition was checked against.
    pub current: Option<VersionedValue>,
    /// The version of the written value (`None` if nothing was written or the op deleted).
    pub new_version: Option<u64>,
}

/// The result of one [`WriteOp`], in the same position as the op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// `Put`: the new version.
    Put(u64),
    /// `Delete`: whether the key existed.
    Delete(bool),
    /// `Cas`: the outcome.
    Cas(CasOutcome),
    /// `DeleteRange`: how many keys were removed.
    DeleteRange(u64),
    /// `ClearRange`, `Import`, `PutMeta`, `DeleteMeta`, `PutRaft`, `PutDedup`, `ClearDedup`, `DeleteRaftRange`.
    Done,
}

/// How many versions an op numbered by its request takes
/// ([`Engine::write_versioned`](crate::Engine::write_versioned)): one for a
/// put, one for a compare-and-swap with a new value whatever its outcome
/// (so that the numbers depend on the ops alone, never on the data), none
/// for anything else. The one place this rule lives: the replicated state
/// machine counts a region's versions with it, the writer hands them out
/// with it.
pub fn versions_taken(put: bool, cas_with_value: bool) -> u64 {
    u64::from(put || cas_with_value)
}

impl WriteOp {
    /// The versions this op takes (see [`versions_taken`]).
    pub fn versions(&self) -> u64 {
        match self {
            WriteOp::Put { .. } => versions_taken(true, false),
            WriteOp::Cas { new, .. } => versions_taken(false, new.is_some()),
            WriteOp::Delete { .. }
            | WriteOp::DeleteRange { .. }
            | WriteOp::ClearRange { .. }
            | WriteOp::Import { .. }
            | WriteOp::PutMeta { .. }
            | WriteOp::DeleteMeta { .. }
            | WriteOp::PutRaft { .. }
            | WriteOp::PutDedup { .. }
            | WriteOp::ClearDedup { .. }
            | WriteOp::DeleteRaftRange { .. } => 0,
        }
    }

    /// The range `[start, end)` this op deletes, for the range deletions.
    #[cfg(feature = "engine")]
    pub(crate) fn deleted_range(&self) -> Option<(&[u8], &[u8])> {
        match self {
            WriteOp::DeleteRange { start, end } | WriteOp::ClearRange { start, end } => {
                Some((start, end))
            }
            WriteOp::Put { .. }
            | WriteOp::Delete { .. }
            | WriteOp::Cas { .. }
            | WriteOp::Import { .. }
            | WriteOp::PutMeta { .. }
            | WriteOp::DeleteMeta { .. }
            | WriteOp::PutRaft { .. }
            | WriteOp::PutDedup { .. }
            | WriteOp::ClearDedup { .. }
            | WriteOp::DeleteRaftRange { .. } => None,
        }
    }
}

/// Names one write request of one client, for exactly-once writes
/// ([`Engine::write_once`](crate::Engine::write_once)). A client picks a
/// random `client` once and numbers its requests with `seq`; a re-sent
/// request carries the id of the first send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    /// The client, random and unique per client process.
    pub client: u128,
    /// The request number within the client.
    pub seq: u64,
}

/// Length of a [`RequestId`] as a key of the `dedup` column family.
pub const REQUEST_ID_LEN: usize = 24;

/// The first byte of a scoped exactly-once key (see [`RequestId::scoped_key`]).
pub const SCOPED_DEDUP_MARK: u8 = 0xff;

/// The prefix of the exactly-once keys of `scope` in the `dedup` column
/// family: every record of one region, for its snapshots.
pub fn dedup_scope_prefix(scope: u64) -> [u8; 9] {
    let mut p = [SCOPED_DEDUP_MARK; 9];
    p[1..].copy_from_slice(&scope.to_be_bytes());
    p
}

/// The first byte of an exactly-once key kept by time bucket (see
/// [`RequestId::bucketed_key`]).
pub const BUCKETED_DEDUP_MARK: u8 = 0xfe;

/// Length of a key of [`RequestId::bucketed_key`].
pub const BUCKETED_DEDUP_KEY_LEN: usize = 9 + 8 + REQUEST_ID_LEN;

/// The prefix of the exactly-once keys of `scope` kept by time bucket.
pub fn dedup_bucket_prefix(scope: u64) -> [u8; 9] {
    let mut p = [BUCKETED_DEDUP_MARK; 9];
    p[1..].copy_from_slice(&scope.to_be_bytes());
    p
}

/// The start of bucket `bucket` of `scope`'s exactly-once keys: every
/// bucket below it is in `[dedup_bucket_prefix(scope), dedup_bucket_start(scope, bucket))`.
pub fn dedup_bucket_start(scope: u64, bucket: u64) -> Vec<u8> {
    let mut key = dedup_bucket_prefix(scope).to_vec();
    key.extend_from_slice(&bucket.to_be_bytes());
    key
}

/// Whether `key` is an exactly-once key kept by time bucket.
pub fn is_bucketed_dedup_key(key: &[u8]) -> bool {
    key.len() == BUCKETED_DEDUP_KEY_LEN && key[0] == BUCKETED_DEDUP_MARK
}

impl RequestId {
    /// The key of this id's record in `scope`'s time bucket `bucket` (the
    /// record's time divided by the bucket length, which the replicated
    /// state machine fixes): [`dedup_bucket_start`] then `client` and
    /// `seq` (41 bytes). A region's replicas look an id up in the buckets
    /// of the entry's time and the one before, and delete older buckets
    /// whole, so whether a re-sent request is a duplicate is decided from
    /// the log alone (see `specs/008-replica-consistency/spec.md`, 2b).
    pub fn bucketed_key(&self, scope: u64, bucket: u64) -> Vec<u8> {
        let mut key = dedup_bucket_start(scope, bucket);
        key.extend_from_slice(&self.to_key());
        key
    }

    /// The key of this id in `scope` (a region id; 0: no scope) in the
    /// `dedup` column family: [`to_key`](RequestId::to_key) without a
    /// scope, else [`dedup_scope_prefix`] then `client` and `seq` (33
    /// bytes, so never equal to an unscoped key).
    pub fn scoped_key(&self, scope: u64) -> Vec<u8> {
        if scope == 0 {
            return self.to_key().to_vec();
        }
        let mut key = dedup_scope_prefix(scope).to_vec();
        key.extend_from_slice(&self.to_key());
        key
    }

    /// The key of this id in the `dedup` column family: `client` then
    /// `seq`, both big-endian.
    pub fn to_key(&self) -> [u8; REQUEST_ID_LEN] {
        let mut key = [0u8; REQUEST_ID_LEN];
        key[..16].copy_from_slice(&self.client.to_be_bytes());
        key[16..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }
}
