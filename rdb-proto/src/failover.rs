//! A channel over several addresses of one service (the members of a PD
//! group) that sends each call to the current address and moves on to the
//! next one when a call fails in transport, times out, or is answered
//! `UNAVAILABLE` (a member that cannot serve now: no leader, not ready).
//!
//! It does not re-send the failed call itself (its body is consumed): the
//! callers have their own retry loops, and the next call goes to the next
//! address. PD followers forward calls to their leader, so any live member
//! serves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

/// See the module docs.
#[derive(Clone)]
pub struct FailoverChannel {
    channels: Arc<Vec<(String, Channel)>>,
    current: Arc<AtomicUsize>,
}

impl FailoverChannel {
    /// A channel over `channels` (address, lazily connecting channel); at
    /// least one.
    pub fn new(channels: Vec<(String, Channel)>) -> Result<FailoverChannel, String> {
        if channels.is_empty() {
            return Err("no addresses given".into());
        }
        Ok(FailoverChannel {
            channels: Arc::new(channels),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The address calls go to now.
    pub fn current(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        &self.channels[i].0
    }

    /// Every address, comma-separated.
    pub fn addresses(&self) -> String {
        self.channels
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether a response is a trailers-only `UNAVAILABLE` answer.
fn unavailable(resp: &http::Response<Body>) -> bool {
    resp.headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

impl Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies its own channel (below).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let index = self.current.load(Ordering::Relaxed);
        let mut ch = self.channels[index % self.channels.len()].1.clone();
        let current = self.current.clone();
        let next = move || {
            // Only the first failure of this address moves the index on.
            let _ = current.compare_exchange(
                index,
                index.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        };
        Box::pin(async move {
            let res = async {
                futures_ready(&mut ch).await?;
                ch.call(req).await
            }
            .await;
            match &res {
                Err(_) => next(),
                Ok(r) if unavailable(r) => next(),
                Ok(_) => {}
            }
            res
        })
    }
}

async fn futures_ready(ch: &mut Channel) -> Result<(), tonic::transport::Error> {
    std::future::poll_fn(|cx| ch.poll_ready(cx)).await
}
