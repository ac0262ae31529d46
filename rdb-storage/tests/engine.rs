//! Engine behaviour: versions, CAS, batches, scans, durability across reopen,
//! group commit under concurrency.

use rdb_storage::{Engine, EngineOptions, Expected, OpResult, ScanOptions, StorageError, WriteOp};

fn open(dir: &std::path::Path) -> Engine {
    Engine::open(
        dir,
        EngineOptions {
            sync: false,
            ..Default::default()
        },
    )
    .unwrap()
}

fn put(k: &[u8], v: &[u8]) -> WriteOp {
    WriteOp::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }
}

#[test]
fn versions_rise_across_delete_and_recreate_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let r = e.write_blocking(vec![put(b"k", b"1")]).unwrap();
    let OpResult::Put(v1) = r[0] else {
        panic!("{r:?}")
    };
    e.write_blocking(vec![WriteOp::Delete { key: b"k".to_vec() }])
        .unwrap();
    assert_eq!(e.get(b"k").unwrap(), None);
    let r = e.write_blocking(vec![put(b"k", b"2")]).unwrap();
    let OpResult::Put(v2) = r[0] else {
        panic!("{r:?}")
    };
    assert!(v2 > v1);
    drop(e);
    let e = open(tmp.path());
    let r = e.write_blocking(vec![put(b"k", b"3")]).unwrap();
    let OpResult::Put(v3) = r[0] else {
        panic!("{r:?}")
    };
    assert!(v3 > v2, "{v3} > {v2} after reopen");
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"3");
}

#[test]
fn cas_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let cas = |expected, new: Option<&[u8]>| {
        let r = e
            .write_blocking(vec![WriteOp::Cas {
                key: b"c".to_vec(),
                expected,
                new: new.map(|n| n.to_vec()),
            }])
            .unwrap();
        match &r[0] {
            OpResult::Cas(o) => o.clone(),
            other => panic!("{other:?}"),
        }
    };
    let o = cas(Expected::Absent, Some(b"a"));
    assert!(o.succeeded && o.current.is_none());
    let v = o.new_version.unwrap();
    let o = cas(Expected::Absent, Some(b"b"));
    assert!(!o.succeeded);
    assert_eq!(o.current.as_ref().unwrap().value, b"a");
    assert_eq!(o.current.as_ref().unwrap().version, v);
    let o = cas(Expected::Version(v + 100), Some(b"b"));
    assert!(!o.succeeded && o.new_version.is_none());
    let o = cas(Expected::Version(v), Some(b"b"));
    assert!(o.succeeded);
    let o = cas(Expected::Value(b"a".to_vec()), Some(b"c"));
    assert!(!o.succeeded);
    let o = cas(Expected::Value(b"b".to_vec()), None);
    assert!(o.succeeded && o.new_version.is_none());
    assert_eq!(e.get(b"c").unwrap(), None);
    // Version condition on an absent key fails.
    let o = cas(Expected::Version(1), Some(b"x"));
    assert!(!o.succeeded && o.current.is_none());
}

#[test]
fn batches_are_atomic_and_see_their_own_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let r = e
        .write_blocking(vec![
            put(b"a", b"1"),
            WriteOp::Cas {
                key: b"a".to_vec(),
                expected: Expected::Value(b"1".to_vec()),
                new: Some(b"2".to_vec()),
            },
            put(b"b", b"x"),
        ])
        .unwrap();
    assert!(matches!(&r[1], OpResult::Cas(o) if o.succeeded));
    assert_eq!(e.get(b"a").unwrap().unwrap().value, b"2");
    // An invalid op fails the whole request: nothing of it is applied.
    let err = e
        .write_blocking(vec![put(b"z", b"1"), put(b"", b"bad")])
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    assert_eq!(e.get(b"z").unwrap(), None);
}

#[test]
fn scans_are_ordered_bounded_reversible_and_binary_safe() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let keys: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x01],
        b"m".to_vec(),
        vec![0xff],
        vec![0xff, 0xff],
    ];
    e.write_blocking(keys.iter().map(|k| put(k, k)).collect())
        .unwrap();
    let all = e.scan(b"\x00", b"", ScanOptions::default()).unwrap();
    assert_eq!(all.iter().map(|x| x.key.clone()).collect::<Vec<_>>(), keys);
    let rev = e
        .scan(
            b"\x00",
            b"",
            ScanOptions {
                reverse: true,
                limit: 2,
                keys_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        rev.iter().map(|x| x.key.clone()).collect::<Vec<_>>(),
        vec![vec![0xff, 0xff], vec![0xff]]
    );
    assert!(rev.iter().all(|x| x.value.is_empty()));
    let mid = e.scan(&[0x01], &[0xff], ScanOptions::default()).unwrap();
    assert_eq!(mid.len(), 2);
    let r = e
        .write_blocking(vec![WriteOp::DeleteRange {
            start: vec![0x00, 0x00],
            end: vec![0xff],
        }])
        .unwrap();
    assert_eq!(r[0], OpResult::DeleteRange(3));
    let left = e.scan(b"\x00", b"", ScanOptions::default()).unwrap();
    assert_eq!(left.len(), 3);
    let got = e.batch_get(&[vec![0x00], b"m".to_vec()]).unwrap();
    assert!(got[0].is_some() && got[1].is_none());
}

#[test]
fn import_raises_the_version_counter() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.write_blocking(vec![WriteOp::Import {
        key: b"i".to_vec(),
        value: b"v".to_vec(),
        version: 1_000,
    }])
    .unwrap();
    assert_eq!(e.get(b"i").unwrap().unwrap().version, 1_000);
    let r = e.write_blocking(vec![put(b"j", b"v")]).unwrap();
    assert_eq!(r[0], OpResult::Put(1_001));
}

#[test]
fn meta_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.write_blocking(vec![
        WriteOp::PutMeta {
            key: b"region/1".to_vec(),
            value: b"a".to_vec(),
        },
        WriteOp::PutMeta {
            key: b"region/2".to_vec(),
            value: b"b".to_vec(),
        },
        WriteOp::PutMeta {
            key: b"store".to_vec(),
            value: b"c".to_vec(),
        },
    ])
    .unwrap();
    assert_eq!(e.scan_meta(b"region/").unwrap().len(), 2);
    assert_eq!(e.get_meta(b"store").unwrap().unwrap(), b"c");
    assert!(e
        .write_blocking(vec![WriteOp::PutMeta {
            key: b"\x00x".to_vec(),
            value: vec![]
        }])
        .is_err());
    e.write_blocking(vec![WriteOp::DeleteMeta {
        key: b"region/1".to_vec(),
    }])
    .unwrap();
    assert_eq!(e.scan_meta(b"region/").unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_are_atomic_with_sync_group_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Engine::open(tmp.path(), EngineOptions::default()).unwrap();
    e.put(b"n".to_vec(), b"0".to_vec()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..50 {
                let cur = tokio::task::block_in_place(|| e.get(b"n"))
                    .unwrap()
                    .unwrap();
                let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                let o = e
                    .compare_and_swap(
                        b"n".to_vec(),
                        Expected::Version(cur.version),
                        Some((n + 1).to_string().into_bytes()),
                    )
                    .await
                    .unwrap();
                ok += o.succeeded as u64;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let v = e.get(b"n").unwrap().unwrap();
    assert!(total > 0);
    assert_eq!(std::str::from_utf8(&v.value).unwrap(), total.to_string());
}

#[test]
fn write_stats_count_groups_and_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    for i in 0..5u8 {
        e.write_blocking(vec![put(&[b'k', i], b"v")]).unwrap();
    }
    // Sequential writers never share a group.
    assert_eq!(e.write_stats(), (5, 5));
    // A failed request is not counted as acknowledged.
    assert!(e.write_blocking(vec![put(b"", b"v")]).is_err());
    assert_eq!(e.write_stats(), (5, 5));
}
