//! Golden bytes of what rdb-raft stores and sends: log entries (a normal
//! one and a membership), votes, applied marks and memberships, encoded
//! with postcard from openraft's own types. An upgrade of openraft that
//! changed any of them would make stores unable to read their own logs:
//! these tests fail first. The bytes were captured from FlareDB 0.1's
//! encoder (its formats did not change in 0.2).

mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::entry::RaftEntry;
    use openraft::type_config::alias::{EntryOf, LeaderIdOf, LogIdOf, StoredMembershipOf, VoteOf};
    use openraft::vote::{RaftLeaderId, RaftVote};
    use openraft::{EntryPayload, Membership};

    use crate::{decode, encode, Bytes, Member, TypeConfig};

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(
            LeaderIdOf::<TypeConfig>::new(term, node).to_committed(),
            index,
        )
    }

    fn membership() -> Membership<u64, Member> {
        let members: BTreeMap<u64, Member> = [
            (
                1,
                Member {
                    name: "1".into(),
                    address: "a:1".into(),
                },
            ),
            (
                2,
                Member {
                    name: "2".into(),
                    address: "b:2".into(),
                },
            ),
        ]
        .into();
        Membership::new(vec![BTreeSet::from([1, 2])], members).unwrap()
    }

    /// Checks that `v` encodes to `golden` and `golden` decodes to `v`.
    fn golden<T>(v: &T, golden: &str)
    where
        T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let raw = encode(v).unwrap();
        assert_eq!(hex(&raw), golden, "{v:?} no longer encodes as it did");
        let back: T = decode(&raw).unwrap();
        assert_eq!(&back, v);
    }

    #[test]
    fn shipped_raft_formats_decode_forever() {
        golden(
            &EntryOf::<TypeConfig>::new(
                log_id(3, 1, 5),
                EntryPayload::Normal(Bytes(vec![0xfe, 0x01, 0x03])),
            ),
            "03 01 05 01 03 fe 01 03",
        );
        golden(
            &EntryOf::<TypeConfig>::new(log_id(1, 2, 0), EntryPayload::Membership(membership())),
            "01 02 00 02 01 02 01 02 02 01 01 31 03 61 3a 31 02 01 32 03 62 3a 32",
        );
        golden(
            &EntryOf::<TypeConfig>::new(log_id(4, 1, 9), EntryPayload::Blank),
            "04 01 09 00",
        );
        golden(
            &VoteOf::<TypeConfig>::from_leader_id(LeaderIdOf::<TypeConfig>::new(4, 2), true),
            "04 02 01",
        );
        golden(&Some(log_id(3, 1, 5)), "01 03 01 05");
        golden(
            &StoredMembershipOf::<TypeConfig>::new(Some(log_id(1, 2, 0)), membership()),
            "01 01 02 00 01 02 01 02 02 01 01 31 03 61 3a 31 02 01 32 03 62 3a 32",
        );
    }
}
