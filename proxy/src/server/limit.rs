//! Per-identity limits, as a tower layer in front of the API: requests in
//! flight (beyond: 503) and a token-bucket request rate (beyond: 429). A
//! refused request is answered here, with an audit event, and never reaches
//! a handler. The layer also tracks a connection's activity so that idle
//! connections can be closed.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::api::body::{Budget, Buffered};
use crate::api::{error_response, Caller};
use crate::audit::{AuditLog, Draft, Outcome};
use crate::config::LimitsConfig;

struct Bucket {
    in_flight: Arc<Semaphore>,
    /// Bytes of this identity's bodies buffered in the proxy.
    buffered: Arc<Semaphore>,
    tokens: f64,
    refilled: Instant,
}

/// The limits of every identity seen, shared by all connections.
pub struct Limiter {
    cfg: LimitsConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Bytes of every identity's bodies buffered in the proxy.
    buffered: Arc<Semaphore>,
}

/// A response body that keeps its request's in-flight permit and its
/// buffered bytes until the client has taken the last of it (or the
/// connection is gone), and hands it to HTTP/2 in slices no larger than
/// [`SLICE`], so a client that never reads pins only what it is counted for.
pub struct HeldBody {
    rest: Bytes,
    held: Option<(Option<OwnedSemaphorePermit>, Option<Buffered>)>,
}

/// The largest piece of a response handed to HTTP/2 at a time: the stream
/// takes the next only once the client's window has room.
const SLICE: usize = 64 * 1024;

impl HeldBody {
    pub fn new(body: Bytes, permit: Option<OwnedSemaphorePermit>, buffered: Option<Buffered>) -> Self {
        Self { rest: body, held: Some((permit, buffered)) }
    }
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            this.held = None;
            return Poll::Ready(None);
        }
        let piece = this.rest.split_to(this.rest.len().min(SLICE));
        if this.rest.is_empty() {
            this.held = None;
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Rate,
    InFlight,
    /// Too many of the identity's bytes (or everyone's) are waiting in the
    /// proxy: bodies being read, answers not yet read by the client.
    Buffered,
}

/// An answer this small is not counted against the buffer budget (error
/// bodies, JSON acknowledgements): counting them would refuse even the
/// refusal.
const SMALL_ANSWER: usize = 4096;

impl LimitLayer {
    /// A refusal: 429 or 503 with `Retry-After: 1`, and an audit event.
    async fn refuse(&self, path: String, refusal: Refusal) -> Response<HeldBody> {
        let (status, reason) = match refusal {
            Refusal::Rate => (StatusCode::TOO_MANY_REQUESTS, "request rate limit exceeded"),
            Refusal::InFlight => (StatusCode::SERVICE_UNAVAILABLE, "too many requests in flight"),
            Refusal::Buffered => {
                (StatusCode::SERVICE_UNAVAILABLE, "too many bytes of this client's waiting in the proxy")
            }
        };
        let draft = Draft {
            identity: self.caller.identity.as_ref().map(|i| i.name().to_string()),
            trust_domain: self.caller.identity.as_ref().map(|i| i.domain().to_string()),
            peer: self.caller.peer.to_string(),
            action: "limit",
            object: Some(path),
            outcome: Some(Outcome::Denied),
            reason: Some(reason.to_string()),
            ..Default::default()
        };
        self.metrics.refused("limit");
        let _ = self.audit.record(draft, false).await;
        let resp = error_response(status, "limit", reason);
        let (mut parts, body) = resp.into_parts();
        parts.headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Response::from_parts(parts, HeldBody::new(body, None, None))
    }
}

impl Limiter {
    pub fn new(cfg: LimitsConfig) -> Self {
        Self { cfg, buckets: Mutex::default(), buffered: Arc::new(Semaphore::new(cfg.buffer_bytes)) }
    }

    fn admit(&self, key: &str) -> Result<(OwnedSemaphorePermit, Budget), Refusal> {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let now = Instant::now();
        let b = buckets.entry(key.to_string()).or_insert_with(|| Bucket {
            in_flight: Arc::new(Semaphore::new(self.cfg.identity_in_flight)),
            buffered: Arc::new(Semaphore::new(self.cfg.identity_buffer_bytes)),
            tokens: self.cfg.identity_burst,
            refilled: now,
        });
        let elapsed = now.duration_since(b.refilled).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.cfg.identity_rate).min(self.cfg.identity_burst);
        b.refilled = now;
        if b.tokens < 1.0 {
            return Err(Refusal::Rate);
        }
        let permit = b.in_flight.clone().try_acquire_owned().map_err(|_| Refusal::InFlight)?;
        b.tokens -= 1.0;
        Ok((permit, Budget::new(b.buffered.clone(), self.buffered.clone())))
    }
}

/// A connection's activity: requests in flight and when the last one ended.
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// How long the connection has had nothing in flight.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Ordering::Acquire)))
    }

    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct LimitLayer {
    limiter: Arc<Limiter>,
    caller: Arc<Caller>,
    audit: AuditLog,
    metrics: Arc<crate::monitor::metrics::Metrics>,
    activity: Arc<Activity>,
}

impl LimitLayer {
    pub fn new(
        limiter: Arc<Limiter>,
        caller: Arc<Caller>,
        audit: AuditLog,
        metrics: Arc<crate::monitor::metrics::Metrics>,
        activity: Arc<Activity>,
    ) -> Self {
        activity.now_ms();
        Self { limiter, caller, audit, metrics, activity }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Limit<S> {
        Limit { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    layer: LimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Limit<S>
where
    S: Service<Request<B>, Response = Response<Full<Bytes>>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<HeldBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let l = &self.layer;
        let key = match &l.caller.identity {
            Some(id) => format!("{}\0{}", id.domain(), id.name()),
            None => format!("?{}", l.caller.peer.ip()),
        };
        let path: String = req.uri().path().chars().take(256).collect();
        match l.limiter.admit(&key) {
            Ok((permit, budget)) => {
                let activity = l.activity.clone();
                activity.start();
                req.extensions_mut().insert(budget.clone());
                let fut = self.inner.call(req);
                let layer = l.clone();
                Box::pin(async move {
                    let out = fut.await;
                    activity.end();
                    let resp = out?;
                    // The answer waits in the proxy until the client reads
                    // it: it counts against the identity's buffer, and keeps
                    // its in-flight permit, until then.
                    let (parts, body) = resp.into_parts();
                    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    if body.len() <= SMALL_ANSWER {
                        return Ok(Response::from_parts(parts, HeldBody::new(body, Some(permit), None)));
                    }
                    match budget.take(body.len()) {
                        Some(buffered) => {
                            Ok(Response::from_parts(parts, HeldBody::new(body, Some(permit), Some(buffered))))
                        }
                        None => {
                            drop(body);
                            Ok(layer.refuse(path, Refusal::Buffered).await)
                        }
                    }
                })
            }
            Err(refusal) => {
                let layer = l.clone();
                Box::pin(async move { Ok(layer.refuse(path, refusal).await) })
            }
        }
    }
}

/// How long a request may take: `base`, and for a commit a second more per
/// `COMMIT_BYTES_PER_SEC` of its body (as the agent allows it), since its
/// work grows with the chunks it names. A declared length counts up to
/// `body_max`, the most a commit may send.
pub fn request_deadline<B>(base: Duration, req: &Request<B>, body_max: u64) -> Duration {
    // The endpoint table's commit (`POST /v1/repos/{repo}/snapshots`),
    // without routing every request twice.
    let path = req.uri().path();
    let commit = req.method().as_str() == coffer_proto::endpoint::Action::Commit.method()
        && path.starts_with("/v1/repos/")
        && path.ends_with("/snapshots");
    let declared = || {
        let len = req.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
        Some(len.min(body_max) / coffer_proto::endpoint::COMMIT_BYTES_PER_SEC as u64)
    };
    match commit.then(declared).flatten() {
        Some(secs) => base + Duration::from_secs(secs),
        None => base,
    }
}

/// The answer to a request that ran past its deadline: a 503, with an
/// audit event.
pub fn timed_out(caller: &Caller, audit: &AuditLog) -> Response<Full<Bytes>> {
    let draft = Draft {
        identity: caller.identity.as_ref().map(|i| i.name().to_string()),
        trust_domain: caller.identity.as_ref().map(|i| i.domain().to_string()),
        peer: caller.peer.to_string(),
        action: "timeout",
        outcome: Some(Outcome::Error),
        reason: Some("request deadline exceeded".into()),
        ..Default::default()
    };
    let audit = audit.clone();
    tokio::spawn(async move { audit.record(draft, false).await });
    error_response(StatusCode::SERVICE_UNAVAILABLE, "timeout", "request deadline exceeded")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(in_flight: usize, rate: f64, burst: f64) -> LimitsConfig {
        LimitsConfig { identity_in_flight: in_flight, identity_rate: rate, identity_burst: burst, ..Default::default() }
    }

    /// A commit of a million chunks may take its proxy minutes (a HEAD or a
    /// lock extension of each): its deadline grows with its body, as the
    /// agent's does, up to the largest body a commit may send; nothing else
    /// gets more time.
    #[test]
    fn a_commit_gets_time_for_the_chunks_it_names() {
        let base = Duration::from_secs(300);
        let req = |method: http::Method, path: &str, len: Option<u64>| {
            let mut b = Request::builder().method(method).uri(path);
            if let Some(len) = len {
                b = b.header(http::header::CONTENT_LENGTH, len);
            }
            b.body(()).unwrap()
        };
        let max = 64 << 20;
        let million = 32_000_000;
        let commit = request_deadline(base, &req(http::Method::POST, "/v1/repos/dev/a/snapshots", Some(million)), max);
        assert_eq!(commit, base + Duration::from_secs(million / 8192));
        assert!(commit > Duration::from_secs(1_000_000 * 2 * 20 / 32 / 1000) + base, "21 minutes of work at 20 ms");
        let lying = request_deadline(base, &req(http::Method::POST, "/v1/repos/dev/a/snapshots", Some(u64::MAX)), max);
        assert_eq!(lying, base + Duration::from_secs(max / 8192), "a declared length counts up to the largest commit");
        for (method, path) in
            [(http::Method::GET, "/v1/repos/dev/a/snapshots"), (http::Method::PUT, "/v1/repos/dev/a/chunks/x")]
        {
            assert_eq!(request_deadline(base, &req(method, path, Some(million)), max), base);
        }
        assert_eq!(request_deadline(base, &req(http::Method::POST, "/v1/repos/dev/a/snapshots", None), max), base);
    }

    #[test]
    fn burst_then_rate() {
        let l = Limiter::new(limits(100, 1.0, 3.0));
        let permits: Vec<_> = (0..3).map(|_| l.admit("a").unwrap()).collect();
        assert_eq!(l.admit("a").unwrap_err(), Refusal::Rate);
        assert!(l.admit("b").is_ok(), "identities do not share a bucket");
        drop(permits);
    }

    #[test]
    fn in_flight_cap_frees_on_drop() {
        let l = Limiter::new(limits(2, 1000.0, 1000.0));
        let a = l.admit("a").unwrap();
        let _b = l.admit("a").unwrap();
        assert_eq!(l.admit("a").unwrap_err(), Refusal::InFlight);
        drop(a);
        assert!(l.admit("a").is_ok());
    }
}
