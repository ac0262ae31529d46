//! Request coalescing: single-key `get`, `put` and `compare_and_swap`
//! calls made at the same time by many tasks are sent to their store as one
//! `BatchGet` / `BatchPut` / `BatchCompareAndSwap` per region instead of one
//! RPC each (as TiKV's clients do with batch commands). Each call still
//! gets its own answer: its value or version, or the region error or
//! transport status the batch got, which the caller's normal routing retry
//! handles exactly as for a single-key RPC.
//!
//! One task per store drains what has queued up while the previous batches
//! were in flight, so batches grow with the load. At most `max_in_flight`
//! batches per store are outstanding; the rest queue behind them and go out
//! together. A caller that finds nothing queued or in flight sends its call
//! itself, at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdb_proto::v1::kv_client::KvClient;
use rdb_proto::v1::{
    BatchCompareAndSwapRequest, BatchGetRequest, BatchGetResponse, BatchPutRequest, CasOp,
    CasOutcome, Context, KvPair, RegionError, RequestId,
};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{classify, describe, Error, Failure};
use crate::retry::Attempt;
use crate::write::{busy_hint, RequestIds};
use crate::Value;

/// What one coalesced call gets back.
pub(crate) type Reply<T> = Result<Attempt<T>, Status>;

enum Call {
    Get {
        key: Vec<u8>,
        reply: oneshot::Sender<Reply<Option<Value>>>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Reply<u64>>,
    },
    Cas {
        op: CasOp,
        reply: oneshot::Sender<Reply<CasOutcome>>,
    },
}

/// What a call is, for grouping: calls of one kind to one region share an RPC.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Get,
    Put,
    Cas,
}

impl Call {
    /// Bytes this call adds to a batch message.
    fn size(&self) -> usize {
        match self {
            Call::Get { key, .. } => key.len(),
            Call::Put { key, value, .. } => key.len() + value.len(),
            Call::Cas { op, .. } => {
                let expected = match op.expected.as_ref().and_then(|c| c.condition.as_ref()) {
                    Some(rdb_proto::v1::cas_condition::Condition::Value(v)) => v.len(),
                    _ => 0,
                };
                op.key.len() + op.new_value.len() + expected
            }
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Call::Get { .. } => Kind::Get,
            Call::Put { .. } => Kind::Put,
            Call::Cas { .. } => Kind::Cas,
        }
    }
}

/// Most key and value bytes drained into one round of batches (well under
/// the gRPC message limit; one call alone may be up to a key and a value).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

struct Item {
    context: Option<Context>,
    call: Call,
}

/// (kind, region id, epoch version, epoch conf_ver): calls that can share one RPC.
type GroupKey = (Kind, u64, u64, u64);

fn group_key(item: &Item) -> GroupKey {
    let (id, version, conf_ver) = item
        .context
        .as_ref()
        .map(|c| {
            let e = c.region_epoch.unwrap_or_default();
            (c.region_id, e.version, e.conf_ver)
        })
        .unwrap_or_default();
    (item.call.kind(), id, version, conf_ver)
}

/// Coalesces the calls to one store.
pub(crate) struct StoreBatcher {
    tx: mpsc::Sender<Item>,
    kv: KvClient<Channel>,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    resend: Arc<Resend>,
}

/// The error a caller sees when the batch task is gone (the client was dropped).
fn stopped() -> Status {
    Status::cancelled("request batcher stopped")
}

impl StoreBatcher {
    pub fn new(
        kv: KvClient<Channel>,
        max_batch: usize,
        max_in_flight: usize,
        resend: Resend,
    ) -> StoreBatcher {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let max_in_flight = max_in_flight.max(1);
        let slots = Arc::new(Semaphore::new(max_in_flight));
        let resend = Arc::new(resend);
        tokio::spawn(run(
            kv.clone(),
            rx,
            max_batch.max(1),
            slots.clone(),
            resend.clone(),
        ));
        StoreBatcher {
            tx,
            kv,
            slots,
            max_in_flight,
            resend,
        }
    }

    pub async fn get(&self, context: Option<Context>, key: Vec<u8>) -> Reply<Option<Value>> {
        let (reply, rx) = oneshot::channel();
        self.submit(Item {
            context,
            call: Call::Get { key, reply },
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn put(&self, context: Option<Context>, key: Vec<u8>, value: Vec<u8>) -> Reply<u64> {
        let (reply, rx) = oneshot::channel();
        self.submit(Item {
            context,
            call: Call::Put { key, value, reply },
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn cas(&self, context: Option<Context>, op: CasOp) -> Reply<CasOutcome> {
        let (reply, rx) = oneshot::channel();
        self.submit(Item {
            context,
            call: Call::Cas { op, reply },
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    /// Hands `item` to the batch task, or, when nothing is queued or in
    /// flight to this store, sends it from the caller's own task: a lone
    /// caller then pays no hand-over to the batch task and no spawn (two
    /// task wake-ups of its latency), and a busy store still gets batches.
    async fn submit(&self, item: Item) -> Result<(), Status> {
        // The batch task holds one slot while it waits for its next call.
        let idle = self.tx.capacity() == self.tx.max_capacity()
            && self.slots.available_permits() + 1 >= self.max_in_flight;
        if idle {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                send_group(self.kv.clone(), vec![item], self.resend.clone()).await;
                drop(permit);
                return Ok(());
            }
        }
        self.tx.send(item).await.map_err(|_| stopped())
    }
}

async fn run(
    kv: KvClient<Channel>,
    mut rx: mpsc::Receiver<Item>,
    max_batch: usize,
    slots: Arc<Semaphore>,
    resend: Arc<Resend>,
) {
    let mut carry: Option<Item> = None;
    loop {
        // Wait for a free slot first: calls arriving meanwhile queue up and
        // leave together.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut bytes = first.call.size();
        let mut items = vec![first];
        while items.len() < max_batch {
            match rx.try_recv() {
                Ok(item) if bytes + item.call.size() > MAX_BATCH_BYTES => {
                    carry = Some(item);
                    break;
                }
                Ok(item) => {
                    bytes += item.call.size();
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        let mut groups: HashMap<GroupKey, Vec<Item>> = HashMap::new();
        for item in items {
            groups.entry(group_key(&item)).or_default().push(item);
        }
        let kv = kv.clone();
        let resend = resend.clone();
        tokio::spawn(async move {
            let sends = groups
                .into_values()
                .map(|group| send_group(kv.clone(), group, resend.clone()));
            futures::future::join_all(sends).await;
            drop(permit);
        });
    }
}

/// How a coalescer re-sends a write batch whose outcome is unknown.
pub(crate) struct Resend {
    /// The client's request ids.
    pub ids: Arc<RequestIds>,
    /// The store's address, for errors.
    pub address: String,
    /// First wait before a re-send; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between re-sends.
    pub max_backoff: Duration,
    /// Re-sends stop this long after the first copy was sent.
    pub budget: Duration,
    /// Where a copy goes when this store cannot take it: the client of the
    /// region's current leader, if the region is unchanged (same epoch).
    /// Its replicas share one log, so the batch is applied once whichever
    /// leader got a copy.
    pub relocate: Relocate,
}

/// See [`Resend::relocate`].
pub(crate) type Relocate = Arc<
    dyn Fn(Context) -> futures::future::BoxFuture<'static, Option<KvClient<Channel>>> + Send + Sync,
>;

/// Whether the region error says another replica leads.
fn not_leader(e: &RegionError) -> bool {
    matches!(
        e.error,
        Some(rdb_proto::v1::region_error::Error::NotLeader(_))
    )
}

/// Sends one region's calls of one kind as one RPC and answers each caller.
async fn send_group(kv: KvClient<Channel>, group: Vec<Item>, resend: Arc<Resend>) {
    let context = group.first().and_then(|i| i.context);
    match group.first().map(|i| i.call.kind()) {
        Some(Kind::Put) => {
            let mut pairs = Vec::with_capacity(group.len());
            let mut replies = Vec::with_capacity(group.len());
            for item in group {
                if let Call::Put { key, value, reply } = item.call {
                    pairs.push(KvPair {
                        key,
                        value,
                        version: 0,
                    });
                    replies.push(reply);
                }
            }
            send_writes(kv, context, replies, resend, move |mut kv, request_id| {
                let req = BatchPutRequest {
                    context,
                    pairs: pairs.clone(),
                    request_id,
                };
                async move {
                    let r = kv.batch_put(req).await?.into_inner();
                    Ok((r.region_error, r.versions))
                }
            })
            .await
        }
        Some(Kind::Cas) => {
            let mut ops = Vec::with_capacity(group.len());
            let mut replies = Vec::with_capacity(group.len());
            for item in group {
                if let Call::Cas { op, reply } = item.call {
                    ops.push(op);
                    replies.push(reply);
                }
            }
            send_writes(kv, context, replies, resend, move |mut kv, request_id| {
                let req = BatchCompareAndSwapRequest {
                    context,
                    ops: ops.clone(),
                    request_id,
                };
                async move {
                    let r = kv.batch_compare_and_swap(req).await?.into_inner();
                    Ok((r.region_error, r.outcomes))
                }
            })
            .await
        }
        Some(Kind::Get) => send_gets(kv, context, group).await,
        None => {}
    }
}

/// Sends one region's coalesced writes as one request and answers each
/// caller with its result, in order. The request carries one request id for
/// every copy: while its outcome is unknown the same request is re-sent
/// (see the `write` module), so each caller's write is applied once.
async fn send_writes<T, F, Fut>(
    mut kv: KvClient<Channel>,
    context: Option<Context>,
    replies: Vec<oneshot::Sender<Reply<T>>>,
    resend: Arc<Resend>,
    call: F,
) where
    F: Fn(KvClient<Channel>, Option<RequestId>) -> Fut,
    Fut: std::future::Future<Output = Result<(Option<RegionError>, Vec<T>), Status>>,
{
    let request_id = Some(resend.ids.next());
    let started = Instant::now();
    let mut backoff = resend.initial_backoff;
    let mut unknown: Option<String> = None;
    let undetermined = |first: &Option<String>, last: String| {
        Attempt::Failed(Error::Undetermined {
            address: resend.address.clone(),
            message: format!(
                "{}; last re-send: {last}",
                first.clone().unwrap_or_default()
            ),
        })
    };
    loop {
        let result = call(kv.clone(), request_id.clone()).await;
        let last = match result {
            Ok((region_error, results)) => match region_error {
                None if results.len() == replies.len() => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(Attempt::Done(r)));
                    }
                    return;
                }
                None => {
                    let status = Status::internal(format!(
                        "store answered {} results for {} coalesced calls",
                        results.len(),
                        replies.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                    return;
                }
                Some(e) if unknown.is_none() => return answer_region_error(replies, e),
                Some(e) if busy_hint(&e).is_some() => e.message,
                Some(e) if not_leader(&e) => {
                    if let Some(c) = context {
                        if let Some(next) = (resend.relocate)(c).await {
                            kv = next;
                        }
                    }
                    e.message
                }
                Some(e) => {
                    let message = format!("{} (the first copy may have been applied)", e.message);
                    for reply in replies {
                        let _ = reply.send(Ok(undetermined(&unknown, message.clone())));
                    }
                    return;
                }
            },
            Err(status) => match classify(&status) {
                Failure::Answered => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                    return;
                }
                Failure::NeverSent if unknown.is_none() => {
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                    return;
                }
                Failure::NeverSent | Failure::Unreachable => {
                    let message = describe(&status, None);
                    unknown.get_or_insert_with(|| message.clone());
                    if let Some(c) = context {
                        if let Some(next) = (resend.relocate)(c).await {
                            kv = next;
                        }
                    }
                    message
                }
            },
        };
        if started.elapsed() + backoff >= resend.budget {
            for reply in replies {
                let _ = reply.send(Ok(undetermined(&unknown, last.clone())));
            }
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(resend.max_backoff);
    }
}

/// Sends one region's coalesced reads as BatchGets and answers each caller.
async fn send_gets(mut kv: KvClient<Channel>, context: Option<Context>, group: Vec<Item>) {
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for item in group {
        if let Call::Get { key, reply } = item.call {
            keys.push(key.clone());
            replies.push((key, reply));
        }
    }
    // The store answers at most its byte budget per call, in request
    // order (has_more): callers it did not reach go in the next call, so
    // one caller's large value never fails the others.
    let mut replies = std::collections::VecDeque::from(replies);
    while !replies.is_empty() {
        let result = kv
            .batch_get(BatchGetRequest {
                context,
                keys: keys.clone(),
            })
            .await
            .map(|r| r.into_inner())
            .and_then(|r| answered_keys(&r, keys.len()).map(|n| (r, n)));
        match result {
            Ok((r, covered)) => match r.region_error {
                Some(e) => return answer_region_error(replies.into_iter().map(|(_, r)| r), e),
                None => {
                    // Found keys come back in request order, missing ones
                    // left out (a key asked twice is answered twice): walk both.
                    let mut pairs = r.pairs.into_iter().peekable();
                    for (key, reply) in replies.drain(..covered) {
                        let value = pairs.next_if(|p| p.key == key).map(|p| Value {
                            value: p.value,
                            version: p.version,
                        });
                        let _ = reply.send(Ok(Attempt::Done(value)));
                    }
                    keys.drain(..covered);
                }
            },
            Err(status) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(status.clone()));
                }
                return;
            }
        }
    }
}

/// How many of the `asked` keys of a BatchGet its answer covers: all, or
/// with `has_more` the leading `answered_keys` (at least one, at most all;
/// anything else is a broken answer, refused rather than looped on).
pub(crate) fn answered_keys(r: &BatchGetResponse, asked: usize) -> Result<usize, Status> {
    if r.region_error.is_some() || !r.has_more {
        return Ok(asked);
    }
    match r.answered_keys as usize {
        n if n >= 1 && n <= asked => Ok(n),
        n => Err(Status::internal(format!(
            "store answered a BatchGet of {asked} keys with has_more and answered_keys = {n}"
        ))),
    }
}

fn answer_region_error<T>(
    replies: impl IntoIterator<Item = oneshot::Sender<Reply<T>>>,
    e: RegionError,
) {
    for reply in replies {
        let _ = reply.send(Ok(Attempt::Region(e.clone())));
    }
}
