//! The entries of a region's Raft log and their answers.
//!
//! An entry is decoded by every replica of the region, possibly by a later
//! version of the binary, so its bytes carry their format (see
//! `specs/008-replica-consistency/spec.md`, section 2):
//!
//! - format 0, the first one: the bare postcard of [`legacy::Command`]
//!   (its first byte is the variant index, 0-2);
//! - format 1: `[ENTRY_MAGIC][1][postcard(Command)]`.
//!
//! Both decode forever (golden fixtures in the tests below). A new format
//! is proposed only once every store can read it: the cluster version PD
//! reports gates it ([`EntryFormat::for_cluster_version`]). An entry of an
//! unknown format is never skipped ([`DecodeError::UnknownFormat`]: the
//! replica stops rather than diverge). [`Op`] and its condition
//! ([`Expected`], rdb-storage's) are encoded the same way in both formats:
//! changing them is a new format.
//!
//! Answers go from a replica's apply back to the proposer in the same
//! process only: plain postcard ([`encode_answer`], [`decode_answer`]).

/// First byte of an entry of format 1 and later: never the first byte of
/// a format-0 entry (a postcard variant index below 128).
pub const ENTRY_MAGIC: u8 = 0xFE;

/// The first version whose stores read format 1: a cluster whose lowest
/// store version is below it gets format 0.
pub const FORMAT_1_SINCE: rdb_proto::version::Version = (0, 2, 0);

/// The length of an exactly-once record's time bucket in format 1, ms: a
/// re-sent request is a duplicate for between one and two buckets after
/// its first copy's entry (the client re-sends for at most 60 s). Part of
/// the format: every replica must use the same.
pub const DEDUP_BUCKET_MS: u64 = 600_000;

/// The format a leader writes its entries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryFormat {
    /// The bare postcard of [`legacy::Command`] (FlareDB 0.1).
    V0,
    /// `[ENTRY_MAGIC][1][postcard(Command)]` (FlareDB 0.2).
    V1,
}

impl EntryFormat {
    /// The newest format this binary writes.
    pub const NEWEST: EntryFormat = EntryFormat::V1;

    /// The format every store of a cluster whose lowest store version is
    /// `version` (`major.minor.patch`) reads; format 0 when the version is
    /// unknown (empty or unparsable: an older PD, or no answer yet).
    pub fn for_cluster_version(version: &str) -> EntryFormat {
        match rdb_proto::version::parse(version) {
            Some(v) if v >= FORMAT_1_SINCE => EntryFormat::V1,
            Some(_) | None => EntryFormat::V0,
        }
    }

    /// Its number, as stored after [`ENTRY_MAGIC`] (0: no magic).
    pub fn number(self) -> u8 {
        match self {
            EntryFormat::V0 => 0,
            EntryFormat::V1 => 1,
        }
    }

    fn from_number(n: u8) -> Option<EntryFormat> {
        match n {
            0 => Some(EntryFormat::V0),
            1 => Some(EntryFormat::V1),
            _ => None,
        }
    }
}

/// The format this store proposes entries in: format 0 until PD reports a
/// cluster version whose stores all read a newer one.
#[derive(Debug, Default)]
pub struct FormatGate(std::sync::atomic::AtomicU8);

impl FormatGate {
    /// The format to propose in now.
    pub fn get(&self) -> EntryFormat {
        EntryFormat::from_number(self.0.load(std::sync::atomic::Ordering::Acquire))
            .unwrap_or(EntryFormat::V0)
    }

    /// Follows the cluster version PD reports (never past
    /// [`EntryFormat::NEWEST`]); the format if it changed.
    pub fn follow(&self, cluster_version: &str) -> Option<EntryFormat> {
        let f = EntryFormat::for_cluster_version(cluster_version).min(EntryFormat::NEWEST);
        let old = self.0.swap(f.number(), std::sync::atomic::Ordering::AcqRel);
        (old != f.number()).then_some(f)
    }
}

/// Why an entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A format this binary does not know (written by a newer one): the
    /// replica must not skip it.
    #[error("Raft entry of unknown format {0} (written by a newer FlareDB)")]
    UnknownFormat(u8),
    /// Not a valid entry of its format.
    #[error("undecodable Raft entry of format {format}: {message}")]
    Malformed {
        /// The entry's format.
        format: u8,
        /// What was wrong.
        message: String,
    },
}

use rdb_storage::{Expected, OpResult, RequestId, WriteOp};
use serde::{Deserialize, Serialize};

use crate::command::legacy::LegacyCommand;

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
        /// The proposing leader's clock (ms since the Unix epoch): the time
        /// of the request id's record on every replica. `None` in a
        /// format-0 entry (each replica then stamps its own clock).
        at_ms: Option<u64>,
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
    /// Every replica computes a digest of the region's state once it has
    /// applied every entry before this one (format 1 and later).
    ComputeDigest,
}

/// The fields of a split entry ([`Command::Split`] has no `members`).
pub struct SplitParts {
    pub epoch: (u64, u64),
    pub split_key: Vec<u8>,
    pub new_region_id: u64,
    pub new_peer_ids: Vec<u64>,
    pub members: Option<Vec<(u64, u64, String)>>,
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
        expected: Expected,
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

impl Op {
    /// The storage operation.
    pub fn to_write_op(&self) -> WriteOp {
        match self.clone() {
            Op::Put { key, value } => WriteOp::Put { key, value },
            Op::Delete { key } => WriteOp::Delete { key },
            Op::Cas { key, expected, new } => WriteOp::Cas { key, expected, new },
            Op::DeleteRange { start, end } => WriteOp::DeleteRange { start, end },
        }
    }

    /// How many versions the op takes (the rule is
    /// [`rdb_storage::versions_taken`]'s, the writer's).
    pub fn versions(&self) -> u64 {
        match self {
            Op::Put { .. } => rdb_storage::versions_taken(true, false),
            Op::Cas { new, .. } => rdb_storage::versions_taken(false, new.is_some()),
            Op::Delete { .. } | Op::DeleteRange { .. } => 0,
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
    Written(Vec<OpResult>),
    /// The storage refused the write as a whole (nothing applied).
    Refused(String),
    /// The region's epoch changed since the command was checked: nothing
    /// applied. The region as it is now (a protobuf `Region`).
    EpochChanged(Vec<u8>),
    /// The digest entry was applied here (its digest is being computed):
    /// its log index.
    DigestAt(u64),
    /// The split was applied: the two halves (protobuf `Region`s).
    Split {
        /// `[start, split_key)`, the region's id.
        left: Vec<u8>,
        /// `[split_key, end)`, the new id.
        right: Vec<u8>,
    },
}

/// The storage form of a command's request id.
pub fn request_id(id: Option<(u128, u64)>) -> Option<RequestId> {
    id.map(|(client, seq)| RequestId { client, seq })
}

/// Encodes `cmd` as an entry of `format`; a command that format cannot
/// carry is refused ([`NotInFormat`]).
pub fn encode_entry(cmd: &Command, format: EntryFormat) -> Result<Vec<u8>, NotInFormat> {
    // Plain data into a `Vec`: postcard cannot fail.
    match format {
        EntryFormat::V0 => {
            Ok(postcard::to_stdvec(&LegacyCommand::try_from(cmd.clone())?).unwrap_or_default())
        }
        EntryFormat::V1 => {
            let mut out = vec![ENTRY_MAGIC, format.number()];
            out.extend(postcard::to_stdvec(cmd).unwrap_or_default());
            Ok(out)
        }
    }
}

/// A command the cluster's entry format cannot carry yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} needs Raft entry format {needs}; the cluster writes format {format} (a store runs a version before {since}.{since_minor}.{since_patch})", since = FORMAT_1_SINCE.0, since_minor = FORMAT_1_SINCE.1, since_patch = FORMAT_1_SINCE.2)]
pub struct NotInFormat {
    /// The command.
    pub what: &'static str,
    /// The format it needs.
    pub needs: u8,
    /// The format asked for.
    pub format: u8,
}

/// Decodes an entry of any format this binary knows; the format with it.
pub fn decode_entry(raw: &[u8]) -> Result<(Command, EntryFormat), DecodeError> {
    let malformed = |format: u8| {
        move |e: postcard::Error| DecodeError::Malformed {
            format,
            message: e.to_string(),
        }
    };
    match raw {
        [ENTRY_MAGIC, n, body @ ..] => match EntryFormat::from_number(*n) {
            Some(EntryFormat::V1) => Ok((
                postcard::from_bytes(body).map_err(malformed(*n))?,
                EntryFormat::V1,
            )),
            Some(EntryFormat::V0) | None => Err(DecodeError::UnknownFormat(*n)),
        },
        _ => {
            let legacy: LegacyCommand = postcard::from_bytes(raw).map_err(malformed(0))?;
            Ok((legacy.into(), EntryFormat::V0))
        }
    }
}

/// Encodes an answer (plain data: cannot fail).
pub fn encode_answer(a: &Answer) -> Vec<u8> {
    postcard::to_stdvec(a).unwrap_or_default()
}

/// Decodes an answer.
pub fn decode_answer(raw: &[u8]) -> Result<Answer, String> {
    postcard::from_bytes(raw).map_err(|e| format!("undecodable answer: {e}"))
}

/// Format 0, frozen: the entries FlareDB 0.1 wrote. Never changed; read
/// forever.
pub mod legacy {
    use serde::{Deserialize, Serialize};

    use super::{Command, NotInFormat, Op};

    /// A command of format 0 (FlareDB 0.1's `Command`, field for field).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum LegacyCommand {
        /// See [`Command::Write`] (no `at_ms`).
        Write {
            /// See [`Command::Write`].
            epoch_version: u64,
            /// See [`Command::Write`].
            request_id: Option<(u128, u64)>,
            /// See [`Command::Write`].
            ops: Vec<Op>,
        },
        /// See [`Command::Split`].
        Split {
            /// See [`Command::Split`].
            epoch: (u64, u64),
            /// See [`Command::Split`].
            #[serde(with = "serde_bytes")]
            split_key: Vec<u8>,
            /// See [`Command::Split`].
            new_region_id: u64,
            /// See [`Command::Split`].
            new_peer_ids: Vec<u64>,
        },
        /// See [`Command::SplitSeeded`].
        SplitSeeded {
            /// See [`Command::SplitSeeded`].
            epoch: (u64, u64),
            /// See [`Command::SplitSeeded`].
            #[serde(with = "serde_bytes")]
            split_key: Vec<u8>,
            /// See [`Command::SplitSeeded`].
            new_region_id: u64,
            /// See [`Command::SplitSeeded`].
            new_peer_ids: Vec<u64>,
            /// See [`Command::SplitSeeded`].
            members: Vec<(u64, u64, String)>,
        },
    }

    impl From<LegacyCommand> for Command {
        fn from(c: LegacyCommand) -> Command {
            match c {
                LegacyCommand::Write {
                    epoch_version,
                    request_id,
                    ops,
                } => Command::Write {
                    epoch_version,
                    request_id,
                    ops,
                    at_ms: None,
                },
                LegacyCommand::Split {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                } => Command::Split {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                },
                LegacyCommand::SplitSeeded {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                    members,
                } => Command::SplitSeeded {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                    members,
                },
            }
        }
    }

    /// The format-0 form of a command, if it has one.
    impl TryFrom<Command> for LegacyCommand {
        type Error = NotInFormat;

        fn try_from(c: Command) -> Result<LegacyCommand, NotInFormat> {
            Ok(match c {
                // Format 0 has no time: each replica stamps its own.
                Command::Write {
                    epoch_version,
                    request_id,
                    ops,
                    at_ms: _,
                } => LegacyCommand::Write {
                    epoch_version,
                    request_id,
                    ops,
                },
                Command::Split {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                } => LegacyCommand::Split {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                },
                Command::SplitSeeded {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                    members,
                } => LegacyCommand::SplitSeeded {
                    epoch,
                    split_key,
                    new_region_id,
                    new_peer_ids,
                    members,
                },
                Command::ComputeDigest => {
                    return Err(NotInFormat {
                        what: "a replica digest",
                        needs: 1,
                        format: 0,
                    })
                }
            })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Bytes written as space-separated hex pairs (golden fixtures).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

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
                expected: Expected::Value(b"old".to_vec()),
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
        let plain = postcard::to_stdvec(&plain).unwrap();
        assert_eq!(postcard::to_stdvec(&ours).unwrap(), plain);
        assert_eq!(postcard::from_bytes::<Vec<Op>>(&plain).unwrap(), ours);
    }

    fn write(at_ms: Option<u64>, ops: Vec<Op>) -> Command {
        Command::Write {
            epoch_version: 3,
            request_id: Some((5, 7)),
            ops,
            at_ms,
        }
    }

    fn put_kv() -> Op {
        Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
    }

    /// Golden bytes of entries as FlareDB 0.1 wrote them (format 0), and
    /// as 0.2 writes them (format 1): they decode forever, to the same
    /// commands, and each format still encodes to them.
    #[test]
    fn shipped_entry_formats_decode_forever() {
        let every_op = vec![
            put_kv(),
            Op::Cas {
                key: b"c".to_vec(),
                expected: Expected::Version(4),
                new: None,
            },
            Op::Delete { key: b"d".to_vec() },
            Op::DeleteRange {
                start: b"a".to_vec(),
                end: Vec::new(),
            },
        ];
        let split = Command::SplitSeeded {
            epoch: (2, 1),
            split_key: b"m".to_vec(),
            new_region_id: 9,
            new_peer_ids: vec![10, 11],
            members: vec![(10, 1, "a:1".into())],
        };
        let plain_split = Command::Split {
            epoch: (2, 1),
            split_key: b"m".to_vec(),
            new_region_id: 9,
            new_peer_ids: vec![10, 11],
        };
        let golden: [(&str, Command, EntryFormat); 5] = [
            (
                "00 03 01 05 07 04 00 01 6b 01 76 02 01 63 01 04 00 01 01 64 03 01 61 00",
                write(None, every_op),
                EntryFormat::V0,
            ),
            (
                "02 02 01 01 6d 09 02 0a 0b 01 0a 01 03 61 3a 31",
                split.clone(),
                EntryFormat::V0,
            ),
            ("01 02 01 01 6d 09 02 0a 0b", plain_split, EntryFormat::V0),
            (
                "fe 01 00 03 01 05 07 01 00 01 6b 01 76 01 e8 07",
                write(Some(1000), vec![put_kv()]),
                EntryFormat::V1,
            ),
            (
                "fe 01 02 02 01 01 6d 09 02 0a 0b 01 0a 01 03 61 3a 31",
                split,
                EntryFormat::V1,
            ),
        ];
        for (bytes, cmd, format) in golden {
            let raw = hex(bytes);
            assert_eq!(
                decode_entry(&raw).unwrap(),
                (cmd.clone(), format),
                "{bytes}"
            );
            assert_eq!(encode_entry(&cmd, format).unwrap(), raw, "{cmd:?}");
        }
        // Format 0 carries no time: it is dropped, not invented.
        let raw = encode_entry(&write(Some(1000), vec![put_kv()]), EntryFormat::V0).unwrap();
        assert_eq!(decode_entry(&raw).unwrap().0, write(None, vec![put_kv()]));
    }

    #[test]
    fn a_digest_needs_format_1() {
        assert_eq!(
            encode_entry(&Command::ComputeDigest, EntryFormat::V1).unwrap(),
            hex("fe 01 03")
        );
        assert_eq!(
            decode_entry(&hex("fe 01 03")).unwrap(),
            (Command::ComputeDigest, EntryFormat::V1)
        );
        let e = encode_entry(&Command::ComputeDigest, EntryFormat::V0).unwrap_err();
        assert!(e.to_string().contains("before 0.2.0"), "{e}");
    }

    #[test]
    fn an_entry_of_an_unknown_format_is_an_error_not_a_command() {
        assert_eq!(
            decode_entry(&hex("fe 02 00")),
            Err(DecodeError::UnknownFormat(2))
        );
        assert_eq!(
            decode_entry(&hex("fe 00 00")),
            Err(DecodeError::UnknownFormat(0))
        );
        assert!(matches!(
            decode_entry(&hex("ff ff")),
            Err(DecodeError::Malformed { format: 0, .. })
        ));
        assert!(matches!(
            decode_entry(&hex("fe 01 ff")),
            Err(DecodeError::Malformed { format: 1, .. })
        ));
    }

    #[test]
    fn the_format_follows_the_lowest_store_version() {
        let gate = FormatGate::default();
        assert_eq!(gate.get(), EntryFormat::V0, "format 0 until PD says");
        assert_eq!(gate.follow("0.1.0"), None);
        assert_eq!(gate.follow("0.2.0"), Some(EntryFormat::V1));
        assert_eq!(gate.get(), EntryFormat::V1);
        assert_eq!(gate.follow("0.3.1"), None);
        // A store of 0.1 joined: back to format 0.
        assert_eq!(gate.follow("0.1.9"), Some(EntryFormat::V0));
        assert_eq!(gate.follow(""), None);
        assert_eq!(EntryFormat::for_cluster_version("garbage"), EntryFormat::V0);
    }

    #[test]
    fn answers_round_trip() {
        let a = Answer::Written(vec![
            OpResult::Put(9),
            OpResult::Cas(rdb_storage::CasOutcome {
                succeeded: false,
                current: Some(rdb_storage::VersionedValue {
                    version: 4,
                    value: b"x".to_vec(),
                }),
                new_version: None,
            }),
        ]);
        assert_eq!(decode_answer(&encode_answer(&a)).unwrap(), a);
        assert!(decode_answer(b"\xff\xff").is_err());
    }
}
