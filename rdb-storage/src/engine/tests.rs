//! Engine behaviour that needs the test hooks ([`Hooks`]): a writer or a
//! count held up, failed commits, background errors, and requests that are
//! made to meet in one write group.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc as smpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::fatal::CommitError;

const WAIT: Duration = Duration::from_secs(10);

fn put(k: &[u8], v: &[u8]) -> WriteOp {
    WriteOp::Put {
        key: k.to_vec(),
        value: v.to_vec(),
    }
}

fn fast() -> EngineOptions {
    EngineOptions {
        sync: false,
        ..Default::default()
    }
}

/// Holds the next call of a hook until released (arm it first).
#[derive(Clone)]
struct Gate {
    armed: Arc<AtomicBool>,
    entered: Arc<Mutex<smpsc::Receiver<()>>>,
    entered_tx: Arc<Mutex<smpsc::Sender<()>>>,
    release: Arc<Mutex<smpsc::Sender<()>>>,
    release_rx: Arc<Mutex<smpsc::Receiver<()>>>,
}

impl Gate {
    fn new() -> Gate {
        let (entered_tx, entered) = smpsc::channel();
        let (release, release_rx) = smpsc::channel();
        Gate {
            armed: Arc::new(AtomicBool::new(false)),
            entered: Arc::new(Mutex::new(entered)),
            entered_tx: Arc::new(Mutex::new(entered_tx)),
            release: Arc::new(Mutex::new(release)),
            release_rx: Arc::new(Mutex::new(release_rx)),
        }
    }

    fn arm(&self) {
        self.armed.store(true, SeqCst);
    }

    /// In the hook: waits for the release if armed.
    fn pass(&self) {
        if self.armed.swap(false, SeqCst) {
            let _ = self.entered_tx.lock().unwrap().send(());
            let _ = self.release_rx.lock().unwrap().recv_timeout(WAIT);
        }
    }

    fn wait_entered(&self) {
        self.entered
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .expect("the hook was not reached");
    }

    fn release(&self) {
        let _ = self.release.lock().unwrap().send(());
    }
}

/// An engine whose commits and counts can be held.
fn gated(dir: &Path, opts: EngineOptions) -> (Engine, Gate, Gate) {
    let (commit, count) = (Gate::new(), Gate::new());
    let (c1, c2) = (commit.clone(), count.clone());
    let hooks = Hooks {
        before_commit: Some(Arc::new(move || {
            c1.pass();
            Ok(())
        })),
        before_count: Some(Arc::new(move || c2.pass())),
        ..Hooks::default()
    };
    (Engine::open_with(dir, opts, hooks).unwrap(), commit, count)
}

/// Requests waiting in the writer's queue.
fn queued(e: &Engine) -> usize {
    let tx = e.sender().unwrap();
    tx.max_capacity() - tx.capacity()
}

fn wait_queued(e: &Engine, n: usize) {
    let start = Instant::now();
    while queued(e) < n {
        assert!(
            start.elapsed() < WAIT,
            "{} of {n} requests queued",
            queued(e)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends a write from a thread of its own; join for the result.
fn spawn_write(e: &Engine, id: Option<RequestId>, ops: Vec<WriteOp>) -> Write {
    let e = e.clone();
    std::thread::spawn(move || {
        let (reply, rx) = oneshot::channel();
        e.sender()?
            .blocking_send(Msg::Write(Request {
                id,
                bucket: None,
                ops,
                always: Vec::new(),
                reply: crate::writer::Reply::Channel(reply),
                first_version: None,
                scope: 0,
                sync: true,
            }))
            .map_err(|_| StorageError::Closed)?;
        rx.blocking_recv().map_err(|_| StorageError::Closed)?
    })
}

type Write = std::thread::JoinHandle<Result<Vec<OpResult>>>;

/// Holds the writer in the commit of a put of `z`: requests sent meanwhile
/// queue up and form the next group.
fn hold_writer(e: &Engine, commit: &Gate) -> Write {
    commit.arm();
    let held = spawn_write(e, None, vec![put(b"z", b"held")]);
    commit.wait_entered();
    held
}

/// Writes `keys` (and `b`), then sends a `DeleteRange` of `[a, b)` whose
/// count is held.
fn range_with_held_count(e: &Engine, count: &Gate, keys: &[&[u8]]) -> Write {
    let mut ops: Vec<_> = keys.iter().map(|k| put(k, b"v")).collect();
    ops.push(put(b"b", b"outside"));
    e.write_blocking(ops).unwrap();
    count.arm();
    let range = spawn_write(
        e,
        None,
        vec![WriteOp::DeleteRange {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
        }],
    );
    count.wait_entered();
    range
}

fn keys(e: &Engine) -> Vec<Vec<u8>> {
    e.scan(b"", b"", ScanOptions::default())
        .unwrap()
        .into_iter()
        .map(|x| x.key)
        .collect()
}

#[test]
fn writers_wait_for_a_full_queue_without_blocking_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, commit, _) = gated(
        tmp.path(),
        EngineOptions {
            queue_capacity: 1,
            ..fast()
        },
    );
    commit.arm();
    let (ran_tx, ran) = smpsc::channel();
    let e2 = e.clone();
    let runtime = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut writes = Vec::new();
            for i in 0..4u8 {
                let e = e2.clone();
                writes.push(tokio::spawn(async move {
                    e.put(vec![b'k', i], b"v".to_vec()).await
                }));
                tokio::task::yield_now().await;
            }
            // One write is held in the writer, one fills the queue, two wait
            // for a place. Timers and reads on this, the runtime's only
            // thread, go on.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(e2.get(b"k\x00").unwrap(), None);
            ran_tx.send(()).unwrap();
            for w in writes {
                w.await.unwrap().unwrap();
            }
        });
    });
    commit.wait_entered();
    let ran = ran.recv_timeout(Duration::from_secs(5));
    commit.release();
    assert!(
        ran.is_ok(),
        "a full writer queue blocked the runtime thread"
    );
    runtime.join().unwrap();
    assert_eq!(keys(&e).len(), 4);
}

#[test]
fn cleared_range_in_a_group_deletes_earlier_puts_and_later_requests_see_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, commit, _) = gated(tmp.path(), fast());
    e.write_blocking(vec![put(b"a1", b"1"), put(b"a2", b"2"), put(b"b", b"3")])
        .unwrap();
    let held = hold_writer(&e, &commit);
    let group = [
        vec![put(b"a3", b"earlier in the group")],
        vec![WriteOp::ClearRange {
            start: b"a".to_vec(),
            end: b"b".to_vec(),
        }],
        vec![WriteOp::Delete {
            key: b"a1".to_vec(),
        }],
        vec![WriteOp::Cas {
            key: b"a3".to_vec(),
            expected: Expected::Absent,
            new: Some(b"after".to_vec()),
        }],
    ];
    let mut writes = Vec::new();
    for (i, ops) in group.into_iter().enumerate() {
        writes.push(spawn_write(&e, None, ops));
        wait_queued(&e, i + 1);
    }
    let groups_before = e.write_stats().0;
    commit.release();
    held.join().unwrap().unwrap();
    let results: Vec<_> = writes
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect();
    assert_eq!(
        e.write_stats().0,
        groups_before + 2,
        "one group after the held one"
    );
    assert_eq!(results[2], vec![OpResult::Delete(false)]);
    assert!(matches!(&results[3][0], OpResult::Cas(o) if o.succeeded && o.current.is_none()));
    assert_eq!(keys(&e), vec![b"a3".to_vec(), b"b".to_vec(), b"z".to_vec()]);
    assert_eq!(e.get(b"a3").unwrap().unwrap().value, b"after");
}

#[test]
fn counted_range_deletion_counts_writes_made_while_counting_and_in_its_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, commit, count) = gated(tmp.path(), fast());
    let range = range_with_held_count(&e, &count, &[b"a1", b"a2"]);
    // Committed while the count runs: not in its snapshot.
    e.write_blocking(vec![
        put(b"a3", b"3"),
        WriteOp::Delete {
            key: b"a1".to_vec(),
        },
    ])
    .unwrap();
    e.write_blocking(vec![put(b"a1", b"again")]).unwrap();
    let held = hold_writer(&e, &commit);
    // In the same group as the range deletion, before it and after it.
    let before = spawn_write(&e, None, vec![put(b"a4", b"4")]);
    wait_queued(&e, 1);
    count.release();
    wait_queued(&e, 2);
    let after = spawn_write(
        &e,
        None,
        vec![WriteOp::Delete {
            key: b"a2".to_vec(),
        }],
    );
    wait_queued(&e, 3);
    let groups_before = e.write_stats().0;
    commit.release();
    held.join().unwrap().unwrap();
    before.join().unwrap().unwrap();
    // a1 (re-created), a2, a3 and a4.
    assert_eq!(
        range.join().unwrap().unwrap(),
        vec![OpResult::DeleteRange(4)]
    );
    assert_eq!(
        after.join().unwrap().unwrap(),
        vec![OpResult::Delete(false)]
    );
    assert_eq!(
        e.write_stats().0,
        groups_before + 2,
        "one group after the held one"
    );
    assert_eq!(keys(&e), vec![b"b".to_vec(), b"z".to_vec()]);
}

#[test]
fn range_deletion_overlapping_a_count_makes_it_count_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, _, count) = gated(tmp.path(), fast());
    let range = range_with_held_count(&e, &count, &[b"a1", b"a2", b"a3"]);
    e.write_blocking(vec![WriteOp::ClearRange {
        start: b"a1".to_vec(),
        end: b"a2".to_vec(),
    }])
    .unwrap();
    count.release();
    assert_eq!(
        range.join().unwrap().unwrap(),
        vec![OpResult::DeleteRange(2)]
    );
    assert_eq!(keys(&e), vec![b"b".to_vec()]);
}

#[test]
fn same_request_id_twice_in_one_group_is_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, commit, _) = gated(tmp.path(), fast());
    let held = hold_writer(&e, &commit);
    let id = RequestId { client: 7, seq: 1 };
    let other = RequestId { client: 7, seq: 2 };
    let writes: Vec<_> = [(id, b"first"), (id, b"again"), (other, b"other")]
        .into_iter()
        .enumerate()
        .map(|(i, (id, v))| {
            let w = spawn_write(&e, Some(id), vec![put(b"k", v), put(b"n", v)]);
            wait_queued(&e, i + 1);
            w
        })
        .collect();
    commit.release();
    held.join().unwrap().unwrap();
    let r: Vec<_> = writes
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect();
    assert_eq!(r[0], r[1], "the second send is answered like the first");
    assert_ne!(r[0], r[2]);
    // Versions: 1 for the held write, 2 and 3 for the first send, 4 and 5
    // for the other id: the re-send took none.
    assert_eq!(r[0], vec![OpResult::Put(2), OpResult::Put(3)]);
    assert_eq!(r[2], vec![OpResult::Put(4), OpResult::Put(5)]);
    assert_eq!(e.get(b"k").unwrap().unwrap().value, b"other");
}

/// An engine whose next commit fails with `kind` when armed, recording
/// what is passed to the fatal hook.
fn failing(
    dir: &Path,
    kind: rocksdb::ErrorKind,
) -> (Engine, Arc<AtomicBool>, Arc<Mutex<Vec<String>>>) {
    let armed = Arc::new(AtomicBool::new(false));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (a, r) = (armed.clone(), reasons.clone());
    let hooks = Hooks {
        fatal: Arc::new(move |reason: &str| r.lock().unwrap().push(reason.to_string())),
        before_commit: Some(Arc::new(move || {
            if a.swap(false, SeqCst) {
                return Err(CommitError {
                    kind: kind.clone(),
                    message: "injected failure of the WAL write".into(),
                });
            }
            Ok(())
        })),
        ..Hooks::default()
    };
    (
        Engine::open_with(dir, fast(), hooks).unwrap(),
        armed,
        reasons,
    )
}

#[test]
fn failed_group_commit_stops_the_store_without_answering_the_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, armed, reasons) = failing(tmp.path(), rocksdb::ErrorKind::IOError);
    e.write_blocking(vec![put(b"a", b"1")]).unwrap();
    armed.store(true, SeqCst);
    let err = e.write_blocking(vec![put(b"b", b"2")]).unwrap_err();
    // Not a definite failure: the writer stopped without answering (in
    // production the process has exited by then).
    assert!(matches!(err, StorageError::Closed), "{err}");
    let reasons = reasons.lock().unwrap().clone();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("injected failure of the WAL write"),
        "{reasons:?}"
    );
    assert!(matches!(
        e.write_blocking(vec![put(b"c", b"3")]),
        Err(StorageError::Closed)
    ));
}

#[test]
fn refused_group_commit_is_a_definite_failure_and_the_store_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (e, armed, reasons) = failing(tmp.path(), rocksdb::ErrorKind::InvalidArgument);
    armed.store(true, SeqCst);
    let err = e.write_blocking(vec![put(b"b", b"2")]).unwrap_err();
    assert!(matches!(err, StorageError::InvalidArgument(_)), "{err}");
    e.write_blocking(vec![put(b"c", b"3")]).unwrap();
    assert!(reasons.lock().unwrap().is_empty());
}

#[test]
fn background_error_stops_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (tx, rx) = smpsc::channel();
    let tx = Mutex::new(tx);
    let hooks = Hooks {
        fatal: Arc::new(move |reason: &str| {
            let _ = tx.lock().unwrap().send(reason.to_string());
        }),
        background_errors: Arc::new(|_: &DB| Some(1)),
        ..Hooks::default()
    };
    let _e = Engine::open_with(tmp.path(), fast(), hooks).unwrap();
    let reason = rx
        .recv_timeout(WAIT)
        .expect("no stop after a background error");
    assert!(reason.contains("background error"), "{reason}");
}
