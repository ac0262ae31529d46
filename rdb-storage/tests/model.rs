//! Property test: random operation sequences against the engine and a
//! `BTreeMap` model; every result must match.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use rdb_storage::{Engine, EngineOptions, Expected, OpResult, ScanOptions, WriteOp};

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<WriteOp>),
    Get(Vec<u8>),
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        reverse: bool,
    },
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet with 0x00 and 0xff so keys collide and edges are hit.
    prop::collection::vec(
        prop::sample::select(vec![0x00u8, 0x01, b'a', 0xfe, 0xff]),
        1..4,
    )
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(key, value)| WriteOp::Put { key, value }),
        2 => key().prop_map(|key| WriteOp::Delete { key }),
        3 => (key(), prop_oneof![
                Just(Expected::Absent),
                (0u64..40).prop_map(Expected::Version),
                prop::collection::vec(any::<u8>(), 0..2).prop_map(Expected::Value)
            ], prop::option::of(prop::collection::vec(any::<u8>(), 0..4)))
            .prop_map(|(key, expected, new)| WriteOp::Cas { key, expected, new }),
        1 => (key(), prop::option::of(key())).prop_map(|(a, b)| {
            let b = b.unwrap_or_default();
            if b.is_empty() || b >= a { WriteOp::DeleteRange { start: a, end: b } } else { WriteOp::DeleteRange { start: b, end: a } }
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(write_op(), 1..4).prop_map(Op::Write),
        3 => key().prop_map(Op::Get),
        2 => (key(), prop::option::of(key()), 0usize..4, any::<bool>()).prop_map(|(s, e, limit, reverse)| {
            let e = e.unwrap_or_default();
            let (start, end) = if e.is_empty() || e >= s { (s, e) } else { (e, s) };
            Op::Scan { start, end, limit, reverse }
        }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    map: BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    /// Highest version each key ever had (to check that versions never repeat).
    max_seen: BTreeMap<Vec<u8>, u64>,
}

impl Model {
    /// Applies a write; versions are not predicted but checked to rise.
    fn apply(&mut self, op: &WriteOp, got: &OpResult) -> Result<(), TestCaseError> {
        match (op, got) {
            (WriteOp::Put { key, value }, OpResult::Put(v)) => self.store(key, *v, value),
            (WriteOp::Delete { key }, OpResult::Delete(existed)) => {
                prop_assert_eq!(*existed, self.map.remove(key).is_some());
                Ok(())
            }
            (WriteOp::Cas { key, expected, new }, OpResult::Cas(o)) => {
                let cur = self.map.get(key).cloned();
                prop_assert_eq!(
                    o.current.as_ref().map(|c| (c.version, c.value.clone())),
                    cur.clone()
                );
                let want = match (expected, &cur) {
                    (Expected::Absent, None) => true,
                    (Expected::Version(v), Some((cv, _))) => v == cv,
                    (Expected::Value(v), Some((_, cv))) => v == cv,
                    _ => false,
                };
                prop_assert_eq!(o.succeeded, want);
                if want {
                    match new {
                        Some(value) => {
                            let v = o
                                .new_version
                                .ok_or_else(|| TestCaseError::fail("no new version"))?;
                            self.store(key, v, value)?;
                        }
                        None => {
                            self.map.remove(key);
                        }
                    }
                } else {
                    prop_assert_eq!(o.new_version, None);
                }
                Ok(())
            }
            (WriteOp::DeleteRange { start, end }, OpResult::DeleteRange(n)) => {
                let upper = if end.is_empty() {
                    Bound::Unbounded
                } else {
                    Bound::Excluded(end.clone())
                };
                let doomed: Vec<_> = self
                    .map
                    .range((Bound::Included(start.clone()), upper))
                    .map(|(k, _)| k.clone())
                    .collect();
                prop_assert_eq!(*n, doomed.len() as u64);
                for k in doomed {
                    self.map.remove(&k);
                }
                Ok(())
            }
            (op, got) => Err(TestCaseError::fail(format!("{op:?} gave {got:?}"))),
        }
    }

    fn store(&mut self, key: &[u8], v: u64, value: &[u8]) -> Result<(), TestCaseError> {
        let prev = self.max_seen.get(key).copied().unwrap_or(0);
        prop_assert!(v > prev, "version {} not above {} for {:?}", v, prev, key);
        self.max_seen.insert(key.to_vec(), v);
        self.map.insert(key.to_vec(), (v, value.to_vec()));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
    #[test]
    fn engine_matches_btreemap_model(ops in prop::collection::vec(op(), 1..60)) {
        let tmp = tempfile::tempdir().unwrap();
        let opts = EngineOptions { sync: false, ..Default::default() };
        let mut engine = Engine::open(tmp.path(), opts.clone()).unwrap();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Write(ws) => {
                    let got = engine.write_blocking(ws.clone()).unwrap();
                    prop_assert_eq!(got.len(), ws.len());
                    for (w, g) in ws.iter().zip(&got) {
                        model.apply(w, g)?;
                    }
                }
                Op::Get(k) => {
                    let got = engine.get(&k).unwrap().map(|v| (v.version, v.value));
                    prop_assert_eq!(got, model.map.get(&k).cloned());
                }
                Op::Scan { start, end, limit, reverse } => {
                    let got: Vec<_> = engine
                        .scan(&start, &end, ScanOptions { limit, reverse, ..Default::default() })
                        .unwrap()
                        .into_iter()
                        .map(|e| (e.key, e.version, e.value))
                        .collect();
                    let upper = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.clone()) };
                    let it = model.map.range((Bound::Included(start.clone()), upper)).map(|(k, (v, val))| (k.clone(), *v, val.clone()));
                    let lim = if limit == 0 { usize::MAX } else { limit };
                    let want: Vec<_> = if reverse { it.rev().take(lim).collect() } else { it.take(lim).collect() };
                    prop_assert_eq!(got, want);
                }
                Op::Reopen => {
                    drop(engine);
                    engine = Engine::open(tmp.path(), opts.clone()).unwrap();
                }
            }
        }
    }
}
