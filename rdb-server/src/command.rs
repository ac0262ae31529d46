//! The entries of a region's Raft log and their answers, as bytes
//! (postcard). Entries are decoded by every replica of the region, possibly
//! by a later version of the binary: variants and fields are only ever
//! appended.

use rdb_storage::{CasOutcome, Expected, OpResult, RequestId, VersionedValue, WriteOp};
use serde::{Deserialize, Serialize};

/// A command proposed to a region's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client's write: applied if the region's epoch version is still
    /// `epoch_version` (the keys were checked against that range), at most
    /// once per request id.
    Write {
        /// The epoch version the keys were checked against.
        epoch_version: u64,
        /// The client's request id: client, then sequence number.
        request_id: Option<(u128, u64)>,
        /// The operations, applied atomically.
        ops: Vec<Op>,
    },
    /// Splits the region at `split_key` (if its epoch is still `epoch`).
    Split {
        /// The epoch (version, conf_ver) the split was checked against.
        epoch: (u64, u64),
        /// The first key of the new region.
        #[serde(with = "serde_bytes")]
        split_key: Vec<u8>,
        /// The new region's id.
        new_region_id: u64,
        /// The new region's peer ids, one per peer of the region, in order.
        new_peer_ids: Vec<u64>,
    },
    /// A [`Command::Split`] that also creates the new region's Raft group:
    /// every replica writes the group's first log entry with the split,
    /// the same entry on each (`rdb_raft::seed_ops`), so that its replica
    /// with the highest peer id (the one on the store that proposed the
    /// split) can campaign at once and win.
    SplitSeeded {
        /// The epoch (version, conf_ver) the split was checked against.
        epoch: (u64, u64),
        /// The first key of the new region.
        #[serde(with = "serde_bytes")]
        split_key: Vec<u8>,
        /// The new region's id.
        new_region_id: u64,
        /// The new region's peer ids, one per peer of the region, in order.
        new_peer_ids: Vec<u64>,
        /// The new group's members: peer id, store id, address (those of
        /// the region's members on the same stores).
        members: Vec<(u64, u64, String)>,
    },
}

/// The fields of a split command ([`Command::Split`] has no `members`).
pub struct SplitParts {
    pub epoch: (u64, u64),
    pub split_key: Vec<u8>,
    pub new_region_id: u64,
    pub new_peer_ids: Vec<u64>,
    pub members: Option<Vec<(u64, u64, String)>>,
}

impl Command {
    /// A split's fields; `None` for any other command.
    pub fn into_split(self) -> Option<SplitParts> {
        match self {
            Command::Split {
                epoch,
                split_key,
                new_region_id,
                new_peer_ids,
            } => Some(SplitParts {
                epoch,
                split_key,
                new_region_id,
                new_peer_ids,
                members: None,
            }),
            Command::SplitSeeded {
                epoch,
                split_key,
                new_region_id,
                new_peer_ids,
                members,
            } => Some(SplitParts {
                epoch,
                split_key,
                new_region_id,
                new_peer_ids,
                members: Some(members),
            }),
            Command::Write { .. } => None,
        }
    }
}

/// One operation of a [`Command::Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// See [`WriteOp::Put`].
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// See [`WriteOp::Delete`].
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// See [`WriteOp::Cas`].
    Cas {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The condition.
        expected: Expect,
        /// The new value, `None` to delete.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    /// See [`WriteOp::DeleteRange`].
    DeleteRange {
        /// First key.
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// End (exclusive; empty = the region's end, already clamped).
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
}

/// See [`Expected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists with this version.
    Version(u64),
    /// The key exists with this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Op {
    /// The storage operation.
    pub fn to_write_op(&self) -> WriteOp {
        match self.clone() {
            Op::Put { key, value } => WriteOp::Put { key, value },
            Op::Delete { key } => WriteOp::Delete { key },
            Op::Cas { key, expected, new } => WriteOp::Cas {
                key,
                expected: match expected {
                    Expect::Absent => Expected::Absent,
                    Expect::Version(v) => Expected::Version(v),
                    Expect::Value(v) => Expected::Value(v),
                },
                new,
            },
            Op::DeleteRange { start, end } => WriteOp::DeleteRange { start, end },
        }
    }

    /// How many versions the op takes (see `Engine::write_versioned`).
    pub fn versions(&self) -> u64 {
        match self {
            Op::Put { .. } | Op::Cas { new: Some(_), .. } => 1,
            _ => 0,
        }
    }

    /// The keys the op touches: its key, or its range's start and end.
    pub fn keys(&self) -> (&[u8], Option<&[u8]>) {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => (key, None),
            Op::DeleteRange { start, end } => (start, Some(end)),
        }
    }
}

/// The answer of an applied entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The write was applied (or had been, for a re-sent request id): one
    /// result per op.
    Written(Vec<Outcome>),
    /// The storage refused the write as a whole (nothing applied).
    Refused(String),
    /// The region's epoch changed since the command was checked: nothing
    /// applied. The region as it is now (a protobuf `Region`).
    EpochChanged(Vec<u8>),
    /// The split was applied: the two halves (protobuf `Region`s).
    Split {
        /// `[start, split_key)`, the region's id.
        left: Vec<u8>,
        /// `[split_key, end)`, the new id.
        right: Vec<u8>,
    },
}

/// See [`OpResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put's version.
    Put(u64),
    /// Whether the deleted key existed.
    Delete(bool),
    /// A CAS: whether it succeeded, the state it saw, the new version.
    Cas {
        /// Whether the condition held.
        succeeded: bool,
        /// The key's state it was checked against: version and value.
        current: Option<(u64, Vec<u8>)>,
        /// The written value's version.
        new_version: Option<u64>,
    },
    /// Keys a range deletion removed.
    DeleteRange(u64),
    /// Nothing to tell.
    Done,
}

impl From<OpResult> for Outcome {
    fn from(r: OpResult) -> Self {
        match r {
            OpResult::Put(v) => Outcome::Put(v),
            OpResult::Delete(e) => Outcome::Delete(e),
            OpResult::Cas(o) => Outcome::Cas {
                succeeded: o.succeeded,
                current: o.current.map(|c| (c.version, c.value)),
                new_version: o.new_version,
            },
            OpResult::DeleteRange(n) => Outcome::DeleteRange(n),
            OpResult::Done => Outcome::Done,
        }
    }
}

impl From<Outcome> for OpResult {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Put(v) => OpResult::Put(v),
            Outcome::Delete(e) => OpResult::Delete(e),
            Outcome::Cas {
                succeeded,
                current,
                new_version,
            } => OpResult::Cas(CasOutcome {
                succeeded,
                current: current.map(|(version, value)| VersionedValue { version, value }),
                new_version,
            }),
            Outcome::DeleteRange(n) => OpResult::DeleteRange(n),
            Outcome::Done => OpResult::Done,
        }
    }
}

/// The storage form of a command's request id.
pub fn request_id(id: Option<(u128, u64)>) -> Option<RequestId> {
    id.map(|(client, seq)| RequestId { client, seq })
}

/// Encodes a command or an answer (plain data: cannot fail).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Decodes a command or an answer.
pub fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, String> {
    postcard::from_bytes(raw).map_err(|e| format!("undecodable Raft entry: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields are encoded as bytes (fast), in the same format as a
    /// plain `Vec<u8>` (so logs written before that change read the same).
    #[test]
    fn byte_fields_keep_the_plain_encoding() {
        #[derive(Serialize)]
        enum PlainOp {
            Put {
                key: Vec<u8>,
                value: Vec<u8>,
            },
            Delete {
                key: Vec<u8>,
            },
            Cas {
                key: Vec<u8>,
                expected: PlainExpect,
                new: Option<Vec<u8>>,
            },
        }
        #[derive(Serialize)]
        enum PlainExpect {
            #[allow(dead_code)]
            Absent,
            #[allow(dead_code)]
            Version(u64),
            Value(Vec<u8>),
        }
        let value = vec![7u8; 300];
        let ours = vec![
            Op::Put {
                key: b"k".to_vec(),
                value: value.clone(),
            },
            Op::Delete { key: b"d".to_vec() },
            Op::Cas {
                key: b"c".to_vec(),
                expected: Expect::Value(b"old".to_vec()),
                new: Some(value.clone()),
            },
        ];
        let plain = vec![
            PlainOp::Put {
                key: b"k".to_vec(),
                value: value.clone(),
            },
            PlainOp::Delete { key: b"d".to_vec() },
            PlainOp::Cas {
                key: b"c".to_vec(),
                expected: PlainExpect::Value(b"old".to_vec()),
                new: Some(value),
            },
        ];
        assert_eq!(encode(&ours), encode(&plain));
        assert_eq!(decode::<Vec<Op>>(&encode(&plain)).unwrap(), ours);
    }

    #[test]
    fn commands_and_answers_round_trip() {
        let c = Command::Write {
            epoch_version: 3,
            request_id: Some((u128::MAX, 7)),
            ops: vec![
                Op::Put {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                },
                Op::Cas {
                    key: b"c".to_vec(),
                    expected: Expect::Version(4),
                    new: None,
                },
            ],
        };
        assert_eq!(decode::<Command>(&encode(&c)).unwrap(), c);
        let a = Answer::Written(vec![
            Outcome::Put(9),
            OpResult::Cas(CasOutcome {
                succeeded: false,
                current: Some(VersionedValue {
                    version: 4,
                    value: b"x".to_vec(),
                }),
                new_version: None,
            })
            .into(),
        ]);
        assert_eq!(decode::<Answer>(&encode(&a)).unwrap(), a);
        assert!(decode::<Command>(b"\xff\xff").is_err());
    }
}
