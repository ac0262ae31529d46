//! Prometheus metrics of a daemon, and the gRPC request layer.
//!
//! [`RpcLayer`] wraps a daemon's whole tonic server: every request is
//! counted and timed per method and gRPC status code
//! (`flaredb_grpc_requests_total`, `flaredb_grpc_request_duration_seconds`),
//! and, when debug logging of this crate is on, runs in a tracing span `rpc`
//! (with the method, and a `region_id` field the handler fills in). The span
//! is debug-level because it is not free: creating, entering and closing a
//! span with its formatted fields cost about 1-2.5 us of CPU per request in
//! `bench/compare-etcd`'s spread layout (about a tenth of a point read's
//! server CPU); below debug level it costs a check of a cached flag.
//! The code is read from the response head: handlers' errors arrive there
//! (trailers-only responses); a status sent in the trailers of a stream that
//! already answered counts as OK.
//!
//! With `RUST_LOG=info,rdb_daemon=debug` every request runs in its span and
//! also logs one `rpc` line (code, microseconds) inside it.
//!
//! The layer also answers an over-size request message with
//! `RESOURCE_EXHAUSTED`, as other gRPC implementations do (tonic says
//! `OUT_OF_RANGE`); the message keeps the size and the limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// A daemon's metrics registry (served on `/metrics`).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    rpc: Arc<RpcMetrics>,
}

struct RpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

/// Registration failed: a name used twice (a bug, reported at start).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// A registry with the gRPC request metrics in it.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "flaredb_grpc_requests_total",
                "gRPC requests answered, by method and status code (OK, InvalidArgument, ...).",
            ),
            &["method", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "flaredb_grpc_request_duration_seconds",
                "Time from a gRPC request's arrival to its response head, by method.",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 18)?),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Metrics {
            registry,
            rpc: Arc::new(RpcMetrics { requests, duration }),
        })
    }

    /// Registers a daemon-specific metric.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: &C,
    ) -> Result<(), MetricsError> {
        self.registry.register(Box::new(c.clone()))
    }

    /// The text exposition of every metric (Prometheus format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The layer that counts, times and traces every request.
    pub fn layer(&self) -> RpcLayer {
        RpcLayer {
            rpc: self.rpc.clone(),
        }
    }
}

/// Name of a gRPC status code as in the gRPC docs (`OK`, `InvalidArgument`).
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Other",
    }
}

/// Tower layer for tonic's `Server::builder().layer(..)`.
#[derive(Clone)]
pub struct RpcLayer {
    rpc: Arc<RpcMetrics>,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            rpc: self.rpc.clone(),
        }
    }
}

/// The service [`RpcLayer`] builds.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    rpc: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<Request<B>> for RpcService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Cloning the URI shares its bytes (no copy of the path per request).
        let uri = req.uri().clone();
        let span = tracing::debug_span!(
            "rpc",
            method = uri.path(),
            region_id = tracing::field::Empty
        );
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        RpcFuture {
            inner: inner.instrument(span),
            uri,
            start: Instant::now(),
            rpc: self.rpc.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcService`].
    pub struct RpcFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        uri: http::Uri,
        start: Instant,
        rpc: Arc<RpcMetrics>,
    }
}

impl<F, RB, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = std::task::ready!(this.inner.as_mut().poll(cx));
        let code = match &mut result {
            Ok(resp) => head_code(resp),
            Err(_) => 2,
        };
        // Unknown paths are answered UNIMPLEMENTED: one label for all of
        // them, so random paths cannot grow the label set.
        let method = if code == 12 {
            "unknown"
        } else {
            this.uri.path()
        };
        this.rpc
            .requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        let elapsed = this.start.elapsed();
        this.rpc
            .duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
        // One line per request at debug level (RUST_LOG=rdb_daemon=debug),
        // inside the request's span: method and region id come with it.
        let _entered = this.inner.as_ref().get_ref().span().enter();
        tracing::debug!(
            code = code_name(code),
            elapsed_us = elapsed.as_micros() as u64,
            "rpc"
        );
        Poll::Ready(result)
    }
}

/// The gRPC status code in a response head (0 when the status comes later,
/// in the trailers), rewriting tonic's OUT_OF_RANGE for an over-size
/// message to RESOURCE_EXHAUSTED.
fn head_code<B>(resp: &mut Response<B>) -> i32 {
    let headers = resp.headers_mut();
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return 0;
    };
    if code == 11 {
        let too_large = headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.windows(9).any(|w| w == b"too large") || m.windows(11).any(|w| w == b"too%20large")
        });
        if too_large {
            headers.insert("grpc-status", HeaderValue::from_static("8"));
            return 8;
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    fn answer(code: Option<&'static str>, message: &'static str) -> Response<()> {
        let mut r = Response::new(());
        if let Some(c) = code {
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(c));
            r.headers_mut()
                .insert("grpc-message", HeaderValue::from_static(message));
        }
        r
    }

    #[tokio::test]
    async fn counts_by_method_and_code_and_rewrites_oversize() {
        let m = Metrics::new().unwrap();
        let mut svc = m
            .layer()
            .layer(tower::service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(match req.uri().path() {
                "/flaredb.v1.Kv/Get" => answer(None, ""),
                "/flaredb.v1.Kv/Put" => answer(Some("3"), "key must not be empty"),
                "/flaredb.v1.Kv/BatchPut" => answer(
                    Some("11"),
                    "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
                ),
                _ => answer(Some("12"), ""),
            })
            }));
        for path in [
            "/flaredb.v1.Kv/Get",
            "/flaredb.v1.Kv/Get",
            "/flaredb.v1.Kv/Put",
            "/x/random1",
            "/x/random2",
        ] {
            let req = Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let req = Request::builder()
            .uri("/flaredb.v1.Kv/BatchPut")
            .body(())
            .unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.headers()["grpc-status"], "8");
        let text = m.render();
        for line in [
            r#"flaredb_grpc_requests_total{code="OK",method="/flaredb.v1.Kv/Get"} 2"#,
            r#"flaredb_grpc_requests_total{code="InvalidArgument",method="/flaredb.v1.Kv/Put"} 1"#,
            r#"flaredb_grpc_requests_total{code="ResourceExhausted",method="/flaredb.v1.Kv/BatchPut"} 1"#,
            r#"flaredb_grpc_requests_total{code="Unimplemented",method="unknown"} 2"#,
            r#"flaredb_grpc_request_duration_seconds_count{method="/flaredb.v1.Kv/Get"} 2"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("random1"));
    }
}
