//! The Raft lane: the groups' small, frequent messages (appends and
//! heartbeats, votes, pre-votes, leadership transfers) over one plain TCP
//! connection per pair of processes, on the process's gRPC port, instead of
//! one gRPC call each.
//!
//! Why: a unary gRPC call costs an HTTP/2 stream (headers both ways), a
//! hand-over to tonic's buffer task and to hyper's connection task on the
//! sending side, and a spawned stream task on the receiving side. On a
//! loopback round trip between two processes of the 2-core test machines
//! that was 375-430 µs at the median against 150-180 µs for the same
//! payload framed over TCP, and a replicated write waits for one such round
//! trip (leader to followers and back).
//!
//! Protocol (version 1):
//! - The caller connects to the peer's gRPC address and writes [`MAGIC`].
//!   The listener ([`Transport::split_incoming`]) peeks at the first bytes
//!   of every accepted connection: [`MAGIC`] makes it a lane, anything else
//!   (an HTTP/2 preface) goes to the gRPC server untouched. The lane's
//!   server answers [`MAGIC`]; a peer that answers anything else or closes
//!   (an older version, a server with TLS) has no lane, and the caller uses
//!   gRPC for it for [`NO_LANE_RETRY`].
//! - Then frames both ways: a little-endian `u32` length, then a [`Call`]
//!   (caller to server) or an [`Answer`] (server to caller), encoded with
//!   rdb-raft's encoding. Answers carry their call's sequence number and
//!   may come in any order: each call is handled in its own task, as a
//!   gRPC call is.
//! - The lane exists only without TLS. A process with TLS neither offers
//!   it (its calls go over gRPC, inside TLS) nor accepts it (its listener
//!   does not sniff, so a plain connection meets the TLS handshake and
//!   fails): the lane never bypasses mutual TLS.
//!
//! Snapshots (a client stream), hibernation requests and liveness pings stay
//! on gRPC.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tonic::{Code, Status};

use crate::{decode, encode};

/// The first bytes of a lane connection, both ways.
pub(crate) const MAGIC: &[u8; 8] = b"FDBRAFT\x01";

/// How long a peer that has no lane is reached over gRPC before the lane
/// is tried again (it may have been upgraded).
const NO_LANE_RETRY: Duration = Duration::from_secs(60);

/// Longest wait for a connection and the peer's [`MAGIC`].
const CONNECT: Duration = Duration::from_secs(1);

/// How long the listener waits for a new connection's first bytes before
/// handing it to the gRPC server anyway.
const SNIFF: Duration = Duration::from_secs(10);

/// Largest frame, either way (a call carries at most one Raft message).
const MAX_FRAME: usize = crate::net::MAX_MESSAGE + 4096;

/// Most bytes queued on one connection and not yet written; a call that
/// would queue more fails at once (the peer does not read).
const MAX_QUEUED: usize = 2 * MAX_FRAME;

/// Most calls one lane connection has in hand on the serving side; the
/// connection is read no further until one ends.
const MAX_SERVING: usize = 4096;

/// The Raft calls the lane carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rpc {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

/// One call, caller to server.
#[derive(Serialize, Deserialize)]
pub(crate) struct Call {
    /// Chosen by the lane that sends it, unique on its connection.
    seq: u64,
    rpc: Rpc,
    group: u64,
    from: u64,
    to: u64,
    /// The encoded Raft request.
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

impl Call {
    /// Call `rpc` of node `to` of `group`, from node `from`; `payload` is
    /// the encoded Raft request.
    pub(crate) fn new(rpc: Rpc, group: u64, from: u64, to: u64, payload: Vec<u8>) -> Call {
        Call {
            seq: 0,
            rpc,
            group,
            from,
            to,
            payload,
        }
    }
}

/// One answer, server to caller.
#[derive(Serialize, Deserialize)]
struct Answer {
    /// The call's `seq`.
    seq: u64,
    /// The encoded Raft answer, or a gRPC status code and message (as the
    /// gRPC service would have answered).
    result: Result<serde_bytes::ByteBuf, (i32, String)>,
}

/// Why a lane call did not get an answer.
#[derive(Debug)]
pub(crate) enum LaneError {
    /// The peer has no lane: use gRPC.
    NoLane,
    /// The peer could not be reached (connection refused, timed out, lost).
    Unreachable(String),
    /// The peer answered with an error status (as gRPC would).
    Status(Status),
    /// No answer within the call's time limit.
    TimedOut,
}

/// The writing side of a connection: frames are queued, and whoever holds
/// the socket writes everything queued in one go (calls and answers that
/// arrive while a write is under way leave together in the next one).
struct Writer {
    queue: Mutex<Vec<u8>>,
    sock: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Set when a write failed or was cut short: the byte stream is no
    /// longer whole and the connection must not be used.
    broken: AtomicBool,
}

impl Writer {
    fn new(w: OwnedWriteHalf) -> Writer {
        Writer {
            queue: Mutex::new(Vec::new()),
            sock: tokio::sync::Mutex::new(w),
            broken: AtomicBool::new(false),
        }
    }

    /// Queues `frame` and writes the queue. Cancel-safe: a write cut short
    /// marks the connection broken.
    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::other(format!(
                "a Raft message of {} bytes is over the limit",
                frame.len()
            )));
        }
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() + frame.len() > MAX_QUEUED {
                return Err(io::Error::other("the peer is not reading its Raft lane"));
            }
            q.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            q.extend_from_slice(frame);
        }
        let mut sock = self.sock.lock().await;
        let buf = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if buf.is_empty() {
            // An earlier holder wrote this frame with its own.
            return self.check();
        }
        let mut guard = BreakOnDrop(Some(&self.broken));
        let r = sock.write_all(&buf).await;
        guard.0 = None;
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    fn check(&self) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            Err(io::Error::other("the Raft lane connection broke"))
        } else {
            Ok(())
        }
    }
}

/// Marks a connection broken if dropped armed (a write cut short).
struct BreakOnDrop<'a>(Option<&'a AtomicBool>);

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            b.store(true, Ordering::Release);
        }
    }
}

/// How much of a connection is read at a time: a frame's length and body,
/// and frames that arrived together, come in one read.
const READ_BUFFER: usize = 64 << 10;

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "a Raft lane frame of {len} bytes is over the limit"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Result<Vec<u8>, Status>>>>;

/// A caller's connection to one peer process.
pub(crate) struct Lane {
    writer: Writer,
    pending: Arc<Pending>,
    seq: AtomicU64,
    /// Milliseconds since `born` when an answer last came.
    heard: Arc<AtomicU64>,
    born: Instant,
    reader: tokio::task::AbortHandle,
}

impl Lane {
    /// Connects to `addr` and checks that the peer has a lane.
    async fn connect(addr: &str) -> Result<Lane, LaneError> {
        let stream = tokio::time::timeout(CONNECT, async {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut s = s;
            s.write_all(MAGIC).await?;
            let mut back = [0u8; 8];
            let n = read_some(&mut s, &mut back).await?;
            Ok::<_, io::Error>((s, back, n))
        })
        .await;
        let (stream, back, n) = match stream {
            Err(_) => {
                return Err(LaneError::Unreachable(format!(
                    "{addr}: no answer in {CONNECT:?}"
                )))
            }
            Ok(Err(e)) => return Err(LaneError::Unreachable(format!("{addr}: {e}"))),
            Ok(Ok(x)) => x,
        };
        if n < MAGIC.len() || &back != MAGIC {
            return Err(LaneError::NoLane);
        }
        let (r, w) = stream.into_split();
        let mut r = BufReader::with_capacity(READ_BUFFER, r);
        let pending: Arc<Pending> = Arc::default();
        let heard = Arc::new(AtomicU64::new(0));
        let born = Instant::now();
        let (p2, h2) = (pending.clone(), heard.clone());
        let reader = tokio::spawn(async move {
            let why = loop {
                match read_frame(&mut r).await {
                    Ok(Some(f)) => {
                        let Ok(a) = decode::<Answer>(&f) else {
                            break "an answer that does not decode".to_string();
                        };
                        h2.store(born.elapsed().as_millis() as u64, Ordering::Relaxed);
                        let tx = p2.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.seq);
                        if let Some(tx) = tx {
                            let _ = tx.send(
                                a.result
                                    .map(|b| b.into_vec())
                                    .map_err(|(c, m)| Status::new(Code::from(c), m)),
                            );
                        }
                    }
                    Ok(None) => break "closed by the peer".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            tracing::debug!(why, "Raft lane closed");
            fail_all(&p2);
        })
        .abort_handle();
        Ok(Lane {
            writer: Writer::new(w),
            pending,
            seq: AtomicU64::new(1),
            heard,
            born,
            reader,
        })
    }

    fn usable(&self) -> bool {
        !self.writer.broken.load(Ordering::Acquire) && !self.reader.is_finished()
    }

    /// Closes the connection: calls in flight fail, the reader stops.
    fn close(&self, why: &str) {
        self.writer.broken.store(true, Ordering::Release);
        tracing::debug!(why, "closing a Raft lane");
        self.reader.abort();
        fail_all(&self.pending);
    }

    /// Sends one call and waits, up to `ttl`, for its answer.
    async fn call(&self, mut call: Call, ttl: Duration) -> Result<Vec<u8>, LaneError> {
        let started = self.born.elapsed().as_millis() as u64;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        call.seq = seq;
        let frame = encode(&call).map_err(|e| LaneError::Status(Status::internal(e)))?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seq, tx);
        let r = tokio::time::timeout(ttl, async {
            self.writer
                .send(&frame)
                .await
                .map_err(|e| LaneError::Unreachable(e.to_string()))?;
            match rx.await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(s)) => Err(LaneError::Status(s)),
                // The connection was lost (the reader dropped the sender).
                Err(_) => Err(LaneError::Unreachable(
                    "the Raft lane connection was lost".into(),
                )),
            }
        })
        .await
        .unwrap_or(Err(LaneError::TimedOut));
        if r.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&seq);
        }
        match &r {
            Err(LaneError::TimedOut) if self.heard.load(Ordering::Relaxed) <= started => {
                // Nothing came back while this call waited: the peer is
                // stopped or cut off, or the connection is stuck. A new
                // one is tried on the next call.
                self.close("no answer on the Raft lane");
            }
            Err(LaneError::Unreachable(e)) => self.close(e),
            _ => {}
        }
        r
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads whatever arrives first, up to `buf.len()` bytes, waiting for more
/// until the buffer is full or the stream ends; the count read.
async fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        if buf[..n + k] != MAGIC[..n + k] {
            return Ok(n + k);
        }
        n += k;
    }
    Ok(n)
}

/// Fails every call in flight: their senders are dropped, which their
/// waiters take as a lost connection.
fn fail_all(pending: &Pending) {
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The caller's side: one lane per peer address, made on first use.
#[derive(Default)]
pub(crate) struct Lanes {
    ready: Mutex<HashMap<String, Arc<Lane>>>,
    /// Peers without a lane, until when.
    none: Mutex<HashMap<String, Instant>>,
    /// One connection attempt at a time per peer.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Lanes {
    /// The open lane to `addr`, or a new one.
    async fn get(&self, addr: &str) -> Result<Arc<Lane>, LaneError> {
        if let Some(l) = self.open(addr)? {
            return Ok(l);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(l) = self.open(addr)? {
            return Ok(l);
        }
        match Lane::connect(addr).await {
            Ok(l) => {
                let l = Arc::new(l);
                tracing::debug!(addr, "Raft lane open");
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr.to_string(), l.clone());
                Ok(l)
            }
            Err(LaneError::NoLane) => {
                tracing::info!(
                    addr,
                    "the peer has no Raft lane (an older version, or TLS): using gRPC for its Raft messages"
                );
                self.none
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr.to_string(), Instant::now() + NO_LANE_RETRY);
                Err(LaneError::NoLane)
            }
            Err(e) => Err(e),
        }
    }

    /// The usable lane to `addr`, if one is open; `Err(NoLane)` while the
    /// peer is known to have none.
    fn open(&self, addr: &str) -> Result<Option<Arc<Lane>>, LaneError> {
        {
            let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
            match ready.get(addr) {
                Some(l) if l.usable() => return Ok(Some(l.clone())),
                Some(_) => {
                    ready.remove(addr);
                }
                None => {}
            }
        }
        let mut none = self.none.lock().unwrap_or_else(|p| p.into_inner());
        match none.get(addr) {
            Some(until) if *until > Instant::now() => Err(LaneError::NoLane),
            Some(_) => {
                none.remove(addr);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Sends one call to the process at `addr` over its lane.
    pub(crate) async fn call(
        &self,
        addr: &str,
        call: Call,
        ttl: Duration,
    ) -> Result<Vec<u8>, LaneError> {
        let deadline = tokio::time::Instant::now() + ttl;
        let lane = match tokio::time::timeout_at(deadline, self.get(addr)).await {
            Err(_) => return Err(LaneError::TimedOut),
            Ok(r) => r?,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        lane.call(call, left).await
    }
}

/// A stream of accepted connections, as tonic's `serve_with_incoming`
/// takes it.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<TcpStream>> + Send>>;

impl crate::Transport {
    /// The connections of `incoming` that are not Raft lanes, for the gRPC
    /// server; the lanes among them are served here. Use it only on a
    /// listener without TLS (see the module docs). When the returned stream
    /// is dropped (the server stopped), `incoming` is dropped and the lane
    /// connections close.
    pub fn split_incoming<S>(&self, incoming: S) -> Incoming
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel::<io::Result<TcpStream>>(64);
        let transport = self.clone();
        // Dropped when accepting ends: the lanes served close.
        let (stop, stopped) = watch::channel(());
        tokio::spawn(async move {
            let _stop = stop;
            let mut incoming = std::pin::pin!(incoming);
            loop {
                let c = tokio::select! {
                    c = incoming.next() => c,
                    _ = tx.closed() => return,
                };
                match c {
                    None => return,
                    Some(Ok(s)) => {
                        let (tx, t, stopped) = (tx.clone(), transport.clone(), stopped.clone());
                        tokio::spawn(async move {
                            if let Some(s) = t.sniff(s, stopped).await {
                                let _ = tx.send(Ok(s)).await;
                            }
                        });
                    }
                    Some(Err(e)) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|c| (c, rx))
        }))
    }

    /// Serves `s` as a lane if it starts with [`MAGIC`] (and returns
    /// `None`); gives it back otherwise.
    async fn sniff(&self, s: TcpStream, stopped: watch::Receiver<()>) -> Option<TcpStream> {
        let mut head = [0u8; 8];
        let deadline = tokio::time::Instant::now() + SNIFF;
        loop {
            let n = match tokio::time::timeout_at(deadline, s.peek(&mut head)).await {
                Ok(Ok(n)) => n,
                // An error or silence: the gRPC server deals with it.
                _ => return Some(s),
            };
            if n == 0 || head[..n] != MAGIC[..n] {
                return Some(s);
            }
            if n == MAGIC.len() {
                break;
            }
            // Part of the magic: wait for the rest.
            if tokio::time::Instant::now() >= deadline {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t = self.clone();
        tokio::spawn(async move {
            if let Err(e) = t.serve_lane(s, stopped).await {
                tracing::debug!(error = %e, "Raft lane connection ended");
            }
        });
        None
    }

    /// Serves one lane connection (its [`MAGIC`] not read yet).
    async fn serve_lane(
        &self,
        mut s: TcpStream,
        mut stopped: watch::Receiver<()>,
    ) -> io::Result<()> {
        let mut head = [0u8; 8];
        s.read_exact(&mut head).await?;
        s.set_nodelay(true)?;
        s.write_all(MAGIC).await?;
        let (r, w) = s.into_split();
        let mut r = BufReader::with_capacity(READ_BUFFER, r);
        let writer = Arc::new(Writer::new(w));
        let slots = Arc::new(Semaphore::new(MAX_SERVING));
        loop {
            let f = tokio::select! {
                f = read_frame(&mut r) => f?,
                // The server stopped: so does the lane.
                _ = stopped.changed() => return Ok(()),
            };
            let Some(f) = f else { return Ok(()) };
            let call: Call = decode(&f).map_err(io::Error::other)?;
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (t, w) = (self.clone(), writer.clone());
            tokio::spawn(async move {
                let req = rdb_proto::v1::RaftRequest {
                    group_id: call.group,
                    from: call.from,
                    to: call.to,
                    payload: call.payload,
                };
                let result = match t.dispatch(call.rpc, &req).await {
                    Ok(p) => Ok(serde_bytes::ByteBuf::from(p)),
                    Err(s) => Err((s.code() as i32, s.message().to_string())),
                };
                let frame = encode(&Answer {
                    seq: call.seq,
                    result,
                });
                t.inner.lane_served.fetch_add(1, Ordering::Relaxed);
                if let Ok(frame) = frame {
                    // A failed write breaks the connection; the caller
                    // sees it close.
                    let _ = w.send(&frame).await;
                }
                drop(slot);
            });
            if writer.broken.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::tcp::OwnedReadHalf;
    use tokio::net::TcpListener;

    async fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    fn accepted(l: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> + Send {
        futures::stream::unfold(l, |l| async move {
            let c = l.accept().await.map(|(s, _)| s);
            Some((c, l))
        })
    }

    /// A fake peer: counts connections and runs `each` on every one.
    async fn fake_peer<F, Fut>(each: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (l, addr) = listener().await;
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                n2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(each(s));
            }
        });
        (addr, n)
    }

    /// An append call to `addr`.
    async fn append(lanes: &Lanes, addr: &str, ttl: Duration) -> Result<Vec<u8>, LaneError> {
        lanes
            .call(addr, Call::new(Rpc::Append, 1, 1, 2, vec![7; 100]), ttl)
            .await
    }

    /// A fake peer's side of the lane's opening: the connection's halves.
    async fn take_lane(mut s: TcpStream) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
        let mut b = [0u8; 8];
        if s.read_exact(&mut b).await.is_err() || s.write_all(MAGIC).await.is_err() {
            return None;
        }
        Some(s.into_split())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_are_served_and_other_connections_pass_untouched() {
        let (l, addr) = listener().await;
        let t = crate::Transport::new(None);
        let mut grpc = t.split_incoming(accepted(l));
        // An HTTP/2 client's connection reaches the gRPC side with its
        // first bytes unread.
        let mut c = TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let s = tokio::time::timeout(Duration::from_secs(5), grpc.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut head = [0u8; 24];
        s.peek(&mut head).await.unwrap();
        assert_eq!(&head, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        // A lane call is answered by the transport itself: here, that the
        // group is not running (as gRPC would have said).
        let lanes = Lanes::default();
        let r = lanes
            .call(
                &addr,
                Call::new(Rpc::Vote, 9, 1, 2, vec![1, 2, 3]),
                Duration::from_secs(5),
            )
            .await;
        match r {
            Err(LaneError::Status(s)) => {
                assert_eq!(s.code(), Code::Unavailable, "{s}");
                assert!(s.message().contains("not running here"), "{s}");
            }
            other => panic!("expected a status, got {other:?}"),
        }
        // Nothing else came to the gRPC side.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), grpc.next())
                .await
                .is_err()
        );
        // Dropping the gRPC side stops accepting and closes the lanes.
        let lane = lanes.open(&addr).unwrap().unwrap();
        drop(grpc);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lane.usable() {
            assert!(Instant::now() < deadline, "the lane stayed open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_without_a_lane_is_remembered() {
        // As a gRPC-only server would: it reads the "preface" and leaves.
        let (addr, conns) = fake_peer(|mut s| async move {
            let mut b = [0u8; 8];
            let _ = s.read_exact(&mut b).await;
            let _ = s.write_all(b"\x00\x00\x08\x07\x00\x00\x00\x00").await;
        })
        .await;
        let lanes = Lanes::default();
        for _ in 0..3 {
            let r = append(&lanes, &addr, Duration::from_secs(5)).await;
            assert!(matches!(r, Err(LaneError::NoLane)), "{r:?}");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "asked once, remembered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_peer_is_unreachable_not_laneless() {
        // Accepts (as the kernel does for a stopped process) and says
        // nothing.
        let (addr, _) = fake_peer(|s| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        })
        .await;
        let lanes = Lanes::default();
        let started = Instant::now();
        let r = append(&lanes, &addr, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(LaneError::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(lanes.open(&addr).unwrap().is_none(), "not marked laneless");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_fails_its_calls_and_the_next_call_reconnects() {
        // Takes the lane, reads one call and hangs up without answering.
        let (addr, conns) = fake_peer(|s| async move {
            if let Some((mut r, _w)) = take_lane(s).await {
                let _ = read_frame(&mut r).await;
            }
        })
        .await;
        let lanes = Lanes::default();
        for round in 1..=2 {
            let started = Instant::now();
            let r = append(&lanes, &addr, Duration::from_secs(20)).await;
            assert!(matches!(r, Err(LaneError::Unreachable(_))), "{r:?}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "failed when the connection closed, not at the time limit"
            );
            assert_eq!(conns.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_with_no_answer_closes_a_connection_that_went_quiet() {
        // Takes the lane and reads calls, never answering (a process that
        // stopped after the connection was made).
        let (addr, conns) = fake_peer(|s| async move {
            if let Some((mut r, _w)) = take_lane(s).await {
                while let Ok(Some(_)) = read_frame(&mut r).await {}
            }
        })
        .await;
        let lanes = Lanes::default();
        let r = append(&lanes, &addr, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(LaneError::TimedOut)), "{r:?}");
        assert!(lanes.open(&addr).unwrap().is_none(), "closed");
        let _ = append(&lanes, &addr, Duration::from_millis(300)).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2, "a new connection");
    }
}
