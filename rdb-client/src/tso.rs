//! TSO batching: calls from many tasks are gathered and sent as one request
//! on one long-lived stream to PD.

use std::sync::Arc;

use rdb_proto::limits::MAX_TSO_COUNT;
use rdb_proto::v1::{TsoRequest, TsoResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::error::{is_transport, Error, Result};
use crate::pd::PdConn;

type Waiter = (u32, oneshot::Sender<Result<u64>>);

pub(crate) struct TsoBatcher {
    tx: mpsc::Sender<Waiter>,
}

struct Stream {
    requests: mpsc::Sender<TsoRequest>,
    responses: Streaming<TsoResponse>,
}

impl TsoBatcher {
    pub fn new(pd: Arc<PdConn>) -> TsoBatcher {
        let (tx, rx) = mpsc::channel(4096);
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
        self.tx.send((count, reply)).await.map_err(|_| Error::Rpc {
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
    let mut client = pd
        .client()
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let responses = client.tso(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Stream {
        requests,
        responses,
    })
}

async fn exchange(stream: &mut Stream, count: u32) -> std::result::Result<u64, tonic::Status> {
    stream
        .requests
        .send(TsoRequest { count })
        .await
        .map_err(|_| tonic::Status::unavailable("TSO stream closed"))?;
    match stream.responses.message().await? {
        Some(r) if r.count == count => Ok(r.first_timestamp),
        Some(r) => Err(tonic::Status::internal(format!(
            "asked PD for {count} timestamps, got {}",
            r.count
        ))),
        None => Err(tonic::Status::unavailable("TSO stream closed by PD")),
    }
}

async fn run(pd: Arc<PdConn>, mut rx: mpsc::Receiver<Waiter>) {
    let mut stream: Option<Stream> = None;
    let mut carry: Option<Waiter> = None;
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut total = first.0;
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            if total + w.0 > MAX_TSO_COUNT {
                carry = Some(w);
                break;
            }
            total += w.0;
            batch.push(w);
        }
        // Two tries: a broken stream (PD restarted) is reopened once.
        let mut result = Err(tonic::Status::unavailable("no attempt"));
        for _ in 0..2 {
            if stream.is_none() {
                match open(&pd).await {
                    Ok(s) => stream = Some(s),
                    Err(s) => {
                        result = Err(s);
                        pd.fail_over();
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            result = exchange(s, total).await;
            match &result {
                Ok(_) => break,
                Err(status) => {
                    stream = None;
                    if !is_transport(status) {
                        break;
                    }
                }
            }
        }
        match result {
            Ok(first_ts) => {
                let mut next = first_ts;
                for (count, reply) in batch {
                    let _ = reply.send(Ok(next));
                    next += u64::from(count);
                }
            }
            Err(status) => {
                let err = if is_transport(&status) {
                    Error::PdUnavailable {
                        endpoints: pd.endpoints(),
                        message: status.message().to_string(),
                    }
                } else {
                    Error::from_status(&status)
                };
                for (_, reply) in batch {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
