//! Engine behaviour: versions, CAS, batches, scans, durability across reopen,
//! group commit under concurrency, range deletion, exactly-once writes.

use std::time::Duration;

use rdb_storage::{
    Engine, EngineOptions, Expected, OpResult, RequestId, ScanOptions, StorageError, WriteOp,
};

fn open(dir: &std::path::Path) -> Engine {
    open_with_window(dir, EngineOptions::default().dedup_window)
}

fn open_with_window(dir: &std::path::Path, dedup_window: Duration) -> Engine {
    Engine::open(
        dir,
        EngineOptions {
            sync: false,
            dedup_window,
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
fn cached_reads_answer_from_memory_and_defer_reads_that_need_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.write_blocking(vec![put(b"a", b"1"), put(b"b", b"2")])
        .unwrap();
    // In the memtable: answered, found or not.
    let got = e
        .get_cached(b"a")
        .unwrap()
        .expect("answered from the memtable");
    assert_eq!(got.map(|v| v.value), Some(b"1".to_vec()));
    e.write_blocking(vec![WriteOp::Delete { key: b"b".to_vec() }])
        .unwrap();
    assert_eq!(
        e.get_cached(b"b").unwrap(),
        Some(None),
        "deleted in the memtable"
    );
    // In an SST file whose block is not cached: not answered.
    e.flush().unwrap();
    drop(e);
    let e = open(tmp.path());
    assert_eq!(e.get_cached(b"a").unwrap(), None, "needs a file read");
    assert_eq!(e.get(b"a").unwrap().map(|v| v.value), Some(b"1".to_vec()));
    // The read brought the block into the cache.
    let got = e
        .get_cached(b"a")
        .unwrap()
        .expect("answered from the block cache");
    assert_eq!(got.map(|v| v.value), Some(b"1".to_vec()));
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

fn delete_range(start: &[u8], end: &[u8]) -> WriteOp {
    WriteOp::DeleteRange {
        start: start.to_vec(),
        end: end.to_vec(),
    }
}

/// Every key of the engine, in order.
fn keys(e: &Engine) -> Vec<Vec<u8>> {
    e.scan(b"", b"", ScanOptions::default())
        .unwrap()
        .into_iter()
        .map(|x| x.key)
        .collect()
}

fn put_version(r: &[OpResult]) -> u64 {
    match r {
        [OpResult::Put(v)] => *v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_range_writes_one_range_tombstone_not_one_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let keys: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| format!("k{i:04}").into_bytes())
        .collect();
    e.write_blocking(keys.iter().map(|k| put(k, b"v")).collect())
        .unwrap();
    let r = e.write_blocking(vec![delete_range(b"k", b"l")]).unwrap();
    assert_eq!(r, vec![OpResult::DeleteRange(1000)]);
    // No point tombstones (a tombstone per key would be 1000 of them).
    assert_eq!(
        e.int_property("rocksdb.num-deletes-active-mem-table"),
        Some(0)
    );
    assert!(e.scan(b"", b"", ScanOptions::default()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_wait_behind_a_large_delete_range() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    const N: u32 = 300_000;
    for chunk in 0..(N / 10_000) {
        let ops = (0..10_000)
            .map(|i| put(format!("r{:07}", chunk * 10_000 + i).as_bytes(), b"v"))
            .collect();
        e.write(ops).await.unwrap();
    }
    let e2 = e.clone();
    let range = tokio::spawn(async move { e2.write(vec![delete_range(b"r", b"s")]).await });
    // Let the range deletion reach the writer first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v = e.put(b"other".to_vec(), b"v".to_vec()).await.unwrap();
    assert!(
        !range.is_finished(),
        "the put waited until the range deletion was done"
    );
    assert_eq!(
        range.await.unwrap().unwrap(),
        vec![OpResult::DeleteRange(N as u64)]
    );
    assert!(v > 0);
}

#[test]
fn keys_recreated_after_a_delete_range_get_higher_versions_and_cas_sees_them_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let v1 = put_version(&e.write_blocking(vec![put(b"k1", b"a")]).unwrap());
    let v2 = put_version(&e.write_blocking(vec![put(b"k2", b"b")]).unwrap());
    assert_eq!(
        e.write_blocking(vec![delete_range(b"k", b"")]).unwrap(),
        vec![OpResult::DeleteRange(2)]
    );
    // The old version no longer matches: the key is absent.
    let r = e
        .write_blocking(vec![WriteOp::Cas {
            key: b"k1".to_vec(),
            expected: Expected::Version(v1),
            new: Some(b"x".to_vec()),
        }])
        .unwrap();
    assert!(matches!(&r[0], OpResult::Cas(o) if !o.succeeded && o.current.is_none()));
    drop(e);
    let e = open(tmp.path());
    assert_eq!(e.get(b"k1").unwrap(), None);
    let r = e
        .write_blocking(vec![WriteOp::Cas {
            key: b"k1".to_vec(),
            expected: Expected::Absent,
            new: Some(b"again".to_vec()),
        }])
        .unwrap();
    let OpResult::Cas(o) = &r[0] else {
        panic!("{r:?}")
    };
    assert!(o.succeeded);
    assert!(o.new_version.unwrap() > v2, "{o:?} after {v2}");
    assert_eq!(
        e.get(b"k1").unwrap().unwrap().version,
        o.new_version.unwrap()
    );
}

#[test]
fn delete_range_in_one_request_counts_and_deletes_its_earlier_puts() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.write_blocking(vec![
        put(b"a", b"1"),
        put(b"b", b"2"),
        put(b"\xff\xff", b"3"),
    ])
    .unwrap();
    let r = e
        .write_blocking(vec![
            put(b"c", b"in the range"),
            put(b"\xff\xff\xff", b"in the range"),
            delete_range(b"b", b""),
            WriteOp::Delete { key: b"c".to_vec() },
            put(b"d", b"after"),
            delete_range(b"a", b"b"),
        ])
        .unwrap();
    assert_eq!(r[2], OpResult::DeleteRange(4));
    assert_eq!(r[3], OpResult::Delete(false));
    assert_eq!(r[5], OpResult::DeleteRange(1));
    assert_eq!(keys(&e), vec![b"d".to_vec()]);
}

/// Concurrent puts of distinct keys and range deletions: every key is
/// counted by the one deletion that removed it, so the counts and the keys
/// left add up to the keys written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_range_counts_add_up_under_concurrent_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let e = e.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..500u32 {
                let key = format!("{}{w}{i:04}", (b'a' + (i % 4) as u8) as char);
                e.put(key.into_bytes(), b"v".to_vec()).await.unwrap();
            }
        }));
    }
    let mut deleters = Vec::new();
    for d in 0..3u8 {
        let e = e.clone();
        deleters.push(tokio::spawn(async move {
            let mut deleted = 0;
            for i in 0..40u8 {
                let (start, end) = match (d + i) % 3 {
                    0 => (b"a".to_vec(), b"c".to_vec()),
                    1 => (b"b".to_vec(), b"d".to_vec()),
                    _ => (b"c".to_vec(), Vec::new()),
                };
                match e
                    .write(vec![WriteOp::DeleteRange { start, end }])
                    .await
                    .unwrap()[..]
                {
                    [OpResult::DeleteRange(n)] => deleted += n,
                    ref other => panic!("{other:?}"),
                }
                tokio::task::yield_now().await;
            }
            deleted
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut deleted = 0;
    for d in deleters {
        deleted += d.await.unwrap();
    }
    let left = e.scan(b"", b"", ScanOptions::default()).unwrap().len() as u64;
    assert_eq!(deleted + left, 2000, "{deleted} deleted, {left} left");
}

// Exactly-once writes: a request id applied once, answered the same way
// every time, across a reopen, and forgotten only after the window.

const ID: RequestId = RequestId {
    client: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
    seq: 1,
};

#[tokio::test]
async fn same_request_id_twice_is_applied_once_with_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let first = e
        .write_once(
            ID,
            vec![put(b"k", b"1"), WriteOp::Delete { key: b"x".to_vec() }],
        )
        .await
        .unwrap();
    // Meanwhile another client writes the key.
    let later = e.put(b"k".to_vec(), b"2".to_vec()).await.unwrap();
    let again = e
        .write_once(
            ID,
            vec![put(b"k", b"1"), WriteOp::Delete { key: b"x".to_vec() }],
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    let got = e.get(b"k").unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.version), (&b"2"[..], later));
    // Another id (or no id) is applied.
    let next = RequestId { seq: 2, ..ID };
    let other = e.write_once(next, vec![put(b"k", b"3")]).await.unwrap();
    assert!(matches!(other[..], [OpResult::Put(v)] if v > later));
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"3");
}

#[tokio::test]
async fn request_ids_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let first = e.write_once(ID, vec![put(b"k", b"1")]).await.unwrap();
    drop(e);
    let e = open(tmp.path());
    e.expire_request_records().unwrap();
    assert_eq!(
        e.write_once(ID, vec![put(b"k", b"other")]).await.unwrap(),
        first
    );
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn re_sent_delete_range_keeps_its_count_and_deletes_nothing_new() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    e.write(vec![put(b"a1", b""), put(b"a2", b"")])
        .await
        .unwrap();
    let range = || {
        vec![WriteOp::DeleteRange {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
        }]
    };
    assert_eq!(
        e.write_once(ID, range()).await.unwrap(),
        vec![OpResult::DeleteRange(2)]
    );
    e.put(b"a3".to_vec(), b"written after".to_vec())
        .await
        .unwrap();
    assert_eq!(
        e.write_once(ID, range()).await.unwrap(),
        vec![OpResult::DeleteRange(2)]
    );
    assert!(e.get(b"a3").unwrap().is_some());
}

#[tokio::test]
async fn record_past_the_window_is_dropped_by_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open_with_window(tmp.path(), Duration::from_millis(50));
    let first = e.write_once(ID, vec![put(b"k", b"1")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Until compaction removes it, an old record still answers.
    assert_eq!(
        e.write_once(ID, vec![put(b"k", b"2")]).await.unwrap(),
        first
    );
    e.expire_request_records().unwrap();
    let again = e.write_once(ID, vec![put(b"k", b"2")]).await.unwrap();
    assert_ne!(again, first, "the expired id was not applied again");
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"2");
}

#[tokio::test]
async fn record_within_the_window_survives_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let first = e.write_once(ID, vec![put(b"k", b"1")]).await.unwrap();
    e.flush().unwrap();
    e.expire_request_records().unwrap();
    assert_eq!(
        e.write_once(ID, vec![put(b"k", b"2")]).await.unwrap(),
        first
    );
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn reclaim_range_deletes_the_range_and_keeps_the_next_key() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let mut ops: Vec<_> = (0..100u32)
        .map(|i| put(format!("a{i:03}").as_bytes(), b"v"))
        .collect();
    ops.push(put(b"b", b"first key of the next region"));
    e.write(ops).await.unwrap();
    e.flush().unwrap();
    e.reclaim_range(b"a".to_vec(), b"b".to_vec()).await.unwrap();
    assert_eq!(keys(&e), vec![b"b".to_vec()]);
    e.reclaim_range(b"a".to_vec(), Vec::new()).await.unwrap();
    assert!(e.scan(b"", b"", ScanOptions::default()).unwrap().is_empty());
}

#[tokio::test]
async fn caller_numbered_versions_do_not_depend_on_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let cas = |expected: Expected, v: &[u8]| WriteOp::Cas {
        key: b"c".to_vec(),
        expected,
        new: Some(v.to_vec()),
    };
    // A failing CAS still takes its number: the put after it gets 12 either way.
    let r = e
        .write_versioned(
            None,
            vec![cas(Expected::Version(99), b"x"), put(b"p", b"1")],
            11,
        )
        .await
        .unwrap();
    assert!(matches!(&r[0], OpResult::Cas(o) if !o.succeeded && o.new_version.is_none()));
    assert_eq!(r[1], OpResult::Put(12));
    let r = e
        .write_versioned(None, vec![cas(Expected::Absent, b"y")], 13)
        .await
        .unwrap();
    assert!(matches!(&r[0], OpResult::Cas(o) if o.succeeded && o.new_version == Some(13)));
    assert_eq!(e.get(b"c").unwrap().unwrap().version, 13);
    // Exactly-once applies to numbered requests too.
    let id = RequestId { client: 7, seq: 1 };
    let first = e
        .write_versioned(Some(id), vec![put(b"q", b"1")], 20)
        .await
        .unwrap();
    let again = e
        .write_versioned(Some(id), vec![put(b"q", b"2")], 30)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(e.get(b"q").unwrap().unwrap().value, b"1");
    // The store-wide counter is untouched by numbered requests.
    assert_eq!(e.last_store_version().unwrap(), 0);
    assert!(matches!(
        e.write_versioned(None, vec![put(b"z", b"1")], 0).await,
        Err(StorageError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn scoped_request_records_are_listed_per_scope_and_copied_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let id = RequestId { client: 9, seq: 1 };
    for scope in [5, 6] {
        numbered_write(&e, id, put(b"k", b"v"), scope * 10, scope, true).await;
    }
    let five = e.scan_dedup(&rdb_storage::dedup_scope_prefix(5)).unwrap();
    assert_eq!(five.len(), 1, "one record in scope 5");
    // The same id in scope 6 was applied (a record of its own, not a hit).
    assert_eq!(e.get(b"k").unwrap().unwrap().version, 60);
    // A record copied into another engine answers the re-send there.
    let tmp2 = tempfile::tempdir().unwrap();
    let other = open(tmp2.path());
    let (key, value) = five[0].clone();
    other
        .write(vec![WriteOp::PutDedup { key, value }])
        .await
        .unwrap();
    let again = numbered_write(&other, id, put(b"k", b"w"), 99, 5, false).await;
    assert_eq!(again[0], OpResult::Put(50));
    assert_eq!(other.get(b"k").unwrap(), None, "answered, not applied");
    assert!(other
        .write(vec![WriteOp::PutDedup {
            key: b"x".to_vec(),
            value: b"garbage".to_vec()
        }])
        .await
        .is_err());
}

#[tokio::test]
async fn callbacks_run_in_queue_order_once_their_writes_are_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    for i in 0u64..50 {
        let (seen, engine) = (seen.clone(), e.clone());
        let last = if i == 49 { tx.take() } else { None };
        let key = format!("k{i}").into_bytes();
        let done = move |r: rdb_storage::Result<Vec<OpResult>>| {
            // On the writer thread: the write is visible to readers.
            let visible = engine.get(&key).unwrap().map(|v| v.version);
            seen.lock().unwrap().push((i, r.unwrap(), visible));
            if let Some(tx) = last {
                let _ = tx.send(());
            }
        };
        let write = rdb_storage::VersionedWrite {
            ops: vec![put(format!("k{i}").as_bytes(), b"v")],
            first_version: Some(100 + i),
            // A mix of synced and unsynced requests keeps its order.
            sync: i % 3 == 0,
            ..Default::default()
        };
        e.enqueue_then(write, done).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), rx)
        .await
        .expect("the last callback ran")
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 50);
    for (n, (i, results, visible)) in seen.iter().enumerate() {
        assert_eq!(*i, n as u64, "callbacks in queue order");
        assert_eq!(results, &vec![OpResult::Put(100 + i)]);
        assert_eq!(*visible, Some(100 + i));
    }
}

#[tokio::test]
async fn an_export_reads_one_view_in_bounded_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    for i in 0..200u32 {
        e.write(vec![put(format!("k{i:03}").as_bytes(), &[b'v'; 1000])])
            .await
            .unwrap();
    }
    // Outside the range: not exported.
    e.write(vec![put(b"z", b"outside")]).await.unwrap();
    let id = RequestId { client: 3, seq: 1 };
    numbered_write(&e, id, put(b"k000", b"dedup"), 1000, 8, true).await;
    let mut rx = e
        .export(
            b"k".to_vec(),
            b"l".to_vec(),
            vec![rdb_storage::dedup_scope_prefix(8).to_vec()],
            10_000,
        )
        .unwrap();
    // Written after the export began: not in it.
    e.write(vec![put(b"k999", b"late")]).await.unwrap();
    let mut keys = Vec::new();
    let mut dedup = 0;
    let mut chunks = 0;
    while let Some(c) = rx.recv().await {
        let c = c.unwrap();
        chunks += 1;
        let bytes: usize = c.pairs.iter().map(|p| p.key.len() + p.value.len()).sum();
        assert!(bytes <= 10_000 + 1100, "a chunk of {bytes} bytes");
        keys.extend(c.pairs.into_iter().map(|p| p.key));
        dedup += c.dedup.len();
    }
    let want: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("k{i:03}").into_bytes())
        .collect();
    assert_eq!(
        keys, want,
        "every key of the range, in order, from the view"
    );
    assert_eq!(dedup, 1, "the scope's exactly-once record");
    assert!(chunks >= 20, "{chunks} chunks");
    // An empty range still gives one (empty) chunk.
    let mut rx = e
        .export(b"x".to_vec(), b"y".to_vec(), vec![vec![0xfe]], 10_000)
        .unwrap();
    assert_eq!(
        rx.recv().await.unwrap().unwrap(),
        rdb_storage::ExportChunk::default()
    );
    assert!(rx.recv().await.is_none());
}

/// One exactly-once write numbered from `first_version`, its record in
/// `scope`; its results.
async fn numbered_write(
    e: &Engine,
    id: RequestId,
    op: WriteOp,
    first_version: u64,
    scope: u64,
    sync: bool,
) -> Vec<OpResult> {
    e.enqueue_versioned(rdb_storage::VersionedWrite {
        id: Some(id),
        ops: vec![op],
        first_version: Some(first_version),
        scope,
        sync,
        ..Default::default()
    })
    .await
    .unwrap()
    .wait()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_split_check_finds_the_key_at_the_split_size_only_in_a_large_enough_range() {
    let tmp = tempfile::tempdir().unwrap();
    let e = open(tmp.path());
    for i in 0..100u32 {
        e.write(vec![put(format!("k{i:03}").as_bytes(), &[b'v'; 96])])
            .await
            .unwrap();
    }
    e.write(vec![put(b"z", b"outside")]).await.unwrap();
    // About 110 bytes per entry (key, record header, value): 2,000 bytes
    // are reached within the first 20 keys; the range holds well over
    // 3,000, so it splits right after them.
    let c = e.split_check(b"k", b"l", 2_000, 1_000_000).unwrap();
    let at = c.split_key.clone().expect("a large range splits");
    let n: u32 = std::str::from_utf8(&at[1..]).unwrap().parse().unwrap();
    assert!((15..=20).contains(&n), "split at {at:?}");
    assert!(c.bytes >= 3_000 && c.keys < 100, "{c:?}");
    // By keys: after the 30th key; the scan stops at 45.
    let c = e.split_check(b"k", b"l", u64::MAX / 4, 30).unwrap();
    assert_eq!(c.split_key, Some(b"k030".to_vec()));
    assert_eq!(c.keys, 45);
    // Not half as much again past the threshold: no split.
    let c = e.split_check(b"k", b"l", u64::MAX / 4, 80).unwrap();
    assert_eq!((c.split_key, c.keys), (None, 100));
    // An unbounded end reads to the last key.
    let c = e.split_check(b"k050", b"", u64::MAX / 4, 1_000).unwrap();
    assert_eq!((c.split_key, c.keys), (None, 51));
}

/// One replicated exactly-once write of `op` with id `id` in scope 8,
/// numbered from `first`, its record in `bucket` (`None`: from before
/// buckets); its results.
async fn replicated_write(
    e: &Engine,
    id: RequestId,
    bucket: Option<u64>,
    op: WriteOp,
    first: u64,
) -> Vec<OpResult> {
    e.enqueue_versioned(rdb_storage::VersionedWrite {
        id: Some(id),
        bucket: bucket.map(|bucket| rdb_storage::RecordBucket {
            at_ms: bucket * 1000 + 1,
            bucket,
        }),
        ops: vec![op],
        first_version: Some(first),
        scope: 8,
        ..Default::default()
    })
    .await
    .unwrap()
    .wait()
    .await
    .unwrap()
}

/// [`replicated_write`] of `k` = `v` with [`ID`] in `bucket`.
async fn bucketed_put(e: &Engine, bucket: u64, v: &[u8], first: u64) -> Vec<OpResult> {
    replicated_write(e, ID, Some(bucket), put(b"k", v), first).await
}

#[tokio::test]
async fn a_bucketed_record_answers_in_its_bucket_and_the_next_only_and_compaction_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    // A window of 1 ms: compaction would drop every record kept by time.
    let e = open_with_window(tmp.path(), Duration::from_millis(1));
    let first = bucketed_put(&e, 10, b"1", 100).await;
    assert_eq!(first, vec![OpResult::Put(100)]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    e.flush().unwrap();
    e.expire_request_records().unwrap();
    // The next bucket still finds it (the same bucket too): not applied.
    assert_eq!(bucketed_put(&e, 11, b"2", 200).await, first);
    assert_eq!(bucketed_put(&e, 10, b"2", 300).await, first);
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"1");
    // Two buckets on, the id is new again, whatever is stored.
    assert_eq!(
        bucketed_put(&e, 12, b"3", 400).await,
        vec![OpResult::Put(400)]
    );
    // The records of buckets below 11 go in one range deletion.
    let start = rdb_storage::dedup_bucket_start(8, 0);
    e.write(vec![WriteOp::ClearDedup {
        start,
        end: rdb_storage::dedup_bucket_start(8, 11),
    }])
    .await
    .unwrap();
    let left = e.scan_dedup(&rdb_storage::dedup_bucket_prefix(8)).unwrap();
    assert_eq!(left.len(), 1, "only bucket 12's record is left");
    assert_eq!(left[0].0, ID.bucketed_key(8, 12));
    // A bucketed lookup also finds a record from before buckets.
    let legacy = RequestId { client: 5, seq: 5 };
    let before = replicated_write(&e, legacy, None, put(b"old", b"1"), 500).await;
    let again = replicated_write(&e, legacy, Some(13), put(b"old", b"2"), 600).await;
    assert_eq!(again, before);
}
