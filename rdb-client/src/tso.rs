//! TSO batching: calls from many tasks are gathered and sent as one request
//! on one long-lived stream to PD.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rdb_proto::limits::MAX_TSO_COUNT;
use rdb_proto::v1::{TsoRequest, TsoResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::error::{is_transport, Error, Result};
use crate::pd::PdConn;

type Waiter = (u32, oneshot::Sender<Result<u64>>);

pub(crate) struct TsoBatcher {
    /// Unbounded: each waiting caller has at most one entry, so the queue is
    /// bounded by the callers themselves (and sending costs no semaphore).
    tx: mpsc::UnboundedSender<Waiter>,
}

struct Stream {
    requests: mpsc::Sender<TsoRequest>,
    responses: Streaming<TsoResponse>,
}

impl TsoBatcher {
    pub fn new(pd: Arc<PdConn>) -> TsoBatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pd, rx));
        TsoBatcher { tx }
    }

    /// Reserves `count` timestamps; returns the first.
    pub async fn get(&self, count: u32) -> Result<u64> {
        if count == 0 || count > MAX_TSO_COUNT {
            return Err(Error::InvalidArgument(format!(
                "TSO count must be between 1 and {MAX_TSO_COUNT}, got {count}"
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send((count, reply)).map_err(|_| Error::Rpc {
            code: tonic::Code::Cancelled,
            message: "TSO task stopped".into(),
        })?;
        rx.await.map_err(|_| Error::Rpc {
            code: tonic::Code::Cancelled,
            message: "TSO task stopped".into(),
        })?
    }
}

async fn open(pd: &PdConn) -> std::result::Result<Stream, tonic::Status> {
    let (requests, rx) = mpsc::channel(16);
    let mut client = match pd.client().await {
        Ok(c) => c,
        Err(crate::pd::PdFailure::Transport(s)) => return Err(s),
        Err(crate::pd::PdFailure::Fatal(e)) => {
            return Err(tonic::Status::failed_precondition(e.to_string()))
        }
    };
    let responses = crate::pd::within(pd.timeout(), client.tso(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

/// One request sent on the stream and not answered yet.
struct Batch {
    count: u32,
    /// When it was (last) sent.
    sent: Instant,
    waiters: Vec<Waiter>,
    /// Already re-sent once after a broken stream.
    resent: bool,
}

/// Most TSO requests in flight on the stream. Callers that arrive while
/// a request is out go in the next one at once instead of waiting for the
/// answer, so a caller waits about one round trip, not up to two.
const MAX_IN_FLIGHT: usize = 256;

/// The error callers get for a failed request.
fn caller_error(pd: &PdConn, status: &tonic::Status) -> Error {
    if is_transport(status) {
        Error::PdUnavailable {
            endpoints: pd.endpoints(),
            message: status.message().to_string(),
        }
    } else {
        Error::from_status(status)
    }
}

fn fail(batch: Batch, err: &Error) {
    for (_, reply) in batch.waiters {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Opens a stream, trying the next PD endpoint once if the first fails.
async fn open_with_failover(pd: &PdConn) -> std::result::Result<Stream, tonic::Status> {
    match open(pd).await {
        Ok(s) => Ok(s),
        Err(s) => {
            pd.failed(&s);
            open(pd).await
        }
    }
}

/// Sends `batch` on the stream (opening one if needed) and queues it for its
/// answer; fails its callers if no stream can be had.
async fn send(
    pd: &PdConn,
    stream: &mut Option<Stream>,
    in_flight: &mut VecDeque<Batch>,
    batch: Batch,
) {
    if stream.is_none() {
        match open_with_failover(pd).await {
            Ok(s) => *stream = Some(s),
            Err(status) => return fail(batch, &caller_error(pd, &status)),
        }
    }
    let sent = match stream.as_ref() {
        Some(s) => s
            .requests
            .send(TsoRequest { count: batch.count })
            .await
            .is_ok(),
        None => false,
    };
    let mut batch = batch;
    batch.sent = Instant::now();
    if sent {
        in_flight.push_back(batch);
    } else {
        // The stream's sending side is gone: the stream is broken.
        in_flight.push_back(batch);
        let status = tonic::Status::unavailable("TSO stream closed");
        Box::pin(broken(pd, stream, in_flight, status)).await;
    }
}

/// The stream failed with `status`: re-sends each unanswered request once
/// on a new stream (when the failure was the transport's: PD restarted or
/// failed over; timestamps PD may have reserved for the lost answers are
/// skipped, never repeated) and fails the rest.
async fn broken(
    pd: &PdConn,
    stream: &mut Option<Stream>,
    in_flight: &mut VecDeque<Batch>,
    status: tonic::Status,
) {
    *stream = None;
    // The next stream goes to the leader the next member names.
    pd.failed(&status);
    let pending: Vec<Batch> = in_flight.drain(..).collect();
    let err = caller_error(pd, &status);
    for mut batch in pending {
        if batch.resent || !is_transport(&status) {
            fail(batch, &err);
        } else {
            batch.resent = true;
            send(pd, stream, in_flight, batch).await;
        }
    }
}

/// Answers the oldest request in flight.
fn answer(
    in_flight: &mut VecDeque<Batch>,
    response: TsoResponse,
) -> std::result::Result<(), tonic::Status> {
    let Some(batch) = in_flight.pop_front() else {
        return Err(tonic::Status::internal("TSO answer without a request"));
    };
    if let Some(e) = response.error {
        // PD refused this request alone: its callers get the error, the
        // stream and the requests after it go on; unless PD said it cannot
        // serve timestamps now (it lost its leader lease): then the stream
        // is done with.
        let status = tonic::Status::new(tonic::Code::from(e.code), e.message);
        if status.code() == tonic::Code::Unavailable {
            // Not served: it goes again on the next stream with the others.
            in_flight.push_front(batch);
            return Err(status);
        }
        fail(batch, &Error::from_status(&status));
        return Ok(());
    }
    if response.count != batch.count {
        let status = tonic::Status::internal(format!(
            "asked PD for {} timestamps, got {}",
            batch.count, response.count
        ));
        fail(batch, &Error::from_status(&status));
        return Err(status);
    }
    let mut next = response.first_timestamp;
    for (count, reply) in batch.waiters {
        let _ = reply.send(Ok(next));
        next += u64::from(count);
    }
    Ok(())
}

async fn run(pd: Arc<PdConn>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    let mut stream: Option<Stream> = None;
    let mut in_flight: VecDeque<Batch> = VecDeque::new();
    let mut carry: Option<Waiter> = None;
    let mut closed = false;
    loop {
        if closed && in_flight.is_empty() {
            return;
        }
        let can_send = !closed && in_flight.len() < MAX_IN_FLIGHT;
        let waiting_for_answer = !in_flight.is_empty();
        // A PD that does not answer the oldest request in time (paused,
        // partitioned away) counts as a broken stream.
        let answer_due = in_flight
            .front()
            .map(|b| b.sent + pd.timeout())
            .unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            // Answers first: they free callers and slots.
            answer_or_err = async {
                match stream.as_mut() {
                    Some(s) => s.responses.message().await,
                    None => std::future::pending().await,
                }
            }, if waiting_for_answer => {
                let result = match answer_or_err {
                    Ok(Some(r)) => answer(&mut in_flight, r),
                    Ok(None) => Err(tonic::Status::unavailable("TSO stream closed by PD")),
                    Err(status) => Err(status),
                };
                if let Err(status) = result {
                    broken(&pd, &mut stream, &mut in_flight, status).await;
                }
            }
            _ = tokio::time::sleep_until(answer_due.into()), if waiting_for_answer => {
                let status = tonic::Status::deadline_exceeded(format!(
                    "PD did not answer a timestamp request within {:?}",
                    pd.timeout()
                ));
                broken(&pd, &mut stream, &mut in_flight, status).await;
            }
            first = async {
                match carry.take() {
                    Some(w) => Some(w),
                    None => rx.recv().await,
                }
            }, if can_send => {
                let Some(first) = first else {
                    closed = true;
                    continue;
                };
                let mut count = first.0;
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    if count + w.0 > MAX_TSO_COUNT {
                        carry = Some(w);
                        break;
                    }
                    count += w.0;
                    waiters.push(w);
                }
                let batch = Batch { count, waiters, resent: false, sent: Instant::now() };
                send(&pd, &mut stream, &mut in_flight, batch).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdb_proto::v1::TsoError;

    fn batch(count: u32) -> (Batch, oneshot::Receiver<Result<u64>>) {
        let (reply, rx) = oneshot::channel();
        let b = Batch {
            count,
            waiters: vec![(count, reply)],
            resent: false,
            sent: Instant::now(),
        };
        (b, rx)
    }

    #[test]
    fn a_refused_request_fails_only_its_callers() {
        let (refused, mut refused_rx) = batch(3);
        let (next, mut next_rx) = batch(2);
        let mut in_flight = VecDeque::from([refused, next]);
        let error = TsoResponse {
            error: Some(TsoError {
                code: tonic::Code::InvalidArgument as i32,
                message: "bad count".into(),
            }),
            ..Default::default()
        };
        assert!(answer(&mut in_flight, error).is_ok(), "the stream goes on");
        assert!(matches!(
            refused_rx.try_recv(),
            Ok(Err(Error::InvalidArgument(m))) if m == "bad count"
        ));
        let ok = TsoResponse {
            first_timestamp: 100,
            count: 2,
            error: None,
        };
        assert!(answer(&mut in_flight, ok).is_ok());
        assert!(matches!(next_rx.try_recv(), Ok(Ok(100))));
        assert!(in_flight.is_empty());
    }

    #[test]
    fn a_request_the_pd_cannot_serve_now_stays_for_the_next_stream() {
        let (refused, mut refused_rx) = batch(3);
        let mut in_flight = VecDeque::from([refused]);
        let lost_lease = TsoResponse {
            error: Some(TsoError {
                code: tonic::Code::Unavailable as i32,
                message: "lost the leader lease".into(),
            }),
            ..Default::default()
        };
        let status = answer(&mut in_flight, lost_lease).unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "the stream is done with"
        );
        assert_eq!(in_flight.len(), 1, "the request waits to be sent again");
        assert!(
            refused_rx.try_recv().is_err(),
            "its callers have no answer yet"
        );
    }
}
