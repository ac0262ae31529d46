//! Connections whose writes are gathered into fewer system calls, for the
//! daemons' servers ([`BatchedIo`]) and for clients ([`batched_connector`]).
//!
//! hyper's HTTP/2 code flushes its connection every time the connection
//! task runs, and the task runs once for every response (server) or request
//! (client) that another task hands to it. With a few calls in flight per
//! connection (many clients, each with a few calls open, coalescing off)
//! every message then costs its own `sendmsg`; on loopback that call also
//! runs the receiver's TCP input, and in the profiles of
//! `bench/profile-server` the socket writes were a third of the store's CPU
//! per point read.
//!
//! [`BatchedIo`] keeps what the connection writes in a buffer and, the first
//! time the connection asks for a flush, yields once instead (it wakes its
//! own task and answers `Pending`): the request tasks that are already
//! queued on the runtime run first and hand over their responses, and the
//! next flush writes all of them in one call. A flush is never deferred
//! twice in a row, so no answer waits longer than one turn of the runtime's
//! queue, and nothing is ever held back without the task being woken.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes gathered before a write goes out without waiting for a flush.
const MAX_BUFFERED: usize = 256 * 1024;

pin_project_lite::pin_project! {
    /// An I/O stream whose writes are buffered and whose first flush request
    /// yields once; see the module docs. Fields: the stream; the bytes
    /// written by the connection and not yet passed to it; how much of
    /// those has been passed already; whether the current flush has
    /// already yielded once.
    pub struct BatchedIo<T> {
        #[pin]
        inner: T,
        buf: Vec<u8>,
        sent: usize,
        yielded: bool,
    }
}

impl<T> BatchedIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        BatchedIo {
            inner,
            buf: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite> BatchedIo<T> {
    /// Passes the whole buffer to `inner`.
    fn poll_drain(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        while *this.sent < this.buf.len() {
            let n = std::task::ready!(this.inner.as_mut().poll_write(cx, &this.buf[*this.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *this.sent += n;
        }
        this.buf.clear();
        *this.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead> AsyncRead for BatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for BatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() + data.len() > MAX_BUFFERED {
            std::task::ready!(self.as_mut().poll_drain(cx))?;
            if data.len() > MAX_BUFFERED {
                return self.project().inner.poll_write(cx, data);
            }
        }
        self.project().buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            *self.as_mut().project().yielded = false;
            return self.project().inner.poll_flush(cx);
        }
        if !self.yielded {
            // Let the responses that are about to be handed over join this write.
            *self.as_mut().project().yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.as_mut().poll_drain(cx))?;
        *self.as_mut().project().yielded = false;
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_drain(cx))?;
        self.project().inner.poll_shutdown(cx)
    }
}

/// The servers accept connections of this type (rdb-daemon).
#[cfg(feature = "server")]
impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for BatchedIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connector of [`batched_channel`]: a TCP connection to the URI's host
/// and port with `TCP_NODELAY`, wrapped in [`BatchedIo`]. tonic lays TLS over
/// it when the endpoint has TLS settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchedConnector;

impl tower_service::Service<http::Uri> for BatchedConnector {
    type Response = hyper_util::rt::TokioIo<BatchedIo<tokio::net::TcpStream>>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            // IPv6 literals come bracketed in URIs.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(BatchedIo::new(stream)))
        })
    }
}

/// A lazily connecting channel over [`BatchedConnector`] (its writes
/// batched, see the module docs) with `endpoint`'s settings (timeouts, TLS).
pub fn batched_channel(endpoint: &tonic::transport::Endpoint) -> tonic::transport::Channel {
    endpoint.connect_with_connector_lazy(BatchedConnector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_arrive_whole_and_in_order_after_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = BatchedIo::new(a);
        let mut expected = Vec::new();
        for i in 0..1000u32 {
            let chunk = vec![(i % 251) as u8; (i as usize % 700) + 1];
            w.write_all(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
        }
        // Past MAX_BUFFERED some of it went out before the flush; all of it after.
        w.flush().await.unwrap();
        let mut got = vec![0u8; expected.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        // A write larger than the buffer goes straight through.
        let big = vec![7u8; MAX_BUFFERED + 10];
        w.write_all(&big).await.unwrap();
        w.flush().await.unwrap();
        let mut got = vec![0u8; big.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_flush_yields_once_and_then_writes() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = Box::pin(BatchedIo::new(a));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            w.as_mut().poll_write(&mut cx, b"hello"),
            Poll::Ready(Ok(5))
        ));
        assert!(
            w.as_mut().poll_flush(&mut cx).is_pending(),
            "first flush yields"
        );
        assert!(matches!(
            w.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // An empty buffer flushes at once.
        assert!(matches!(
            w.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }
}
