//! Prometheus metrics (prometheus-client), served as text on a listener of
//! their own, never on the mTLS port. Labels are bounded: actions,
//! outcomes, trust domains, store operations, alert kinds and repositories.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use coffer_proto::keys::KeyRecord;
use coffer_proto::RepoName;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::keycheck::{KeyCheckError, KeyChecker};
use crate::store::{ObjectMeta, ObjectStore, PutOutcome, Recorded, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub action: String,
    pub outcome: String,
    pub trust_domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
    pub ok: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabel {
    pub repo: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_in: Counter,
    pub chunks: Family<KindLabel, Counter>,
    pub store_seconds: Histograms<OpLabel>,
    pub key_check_seconds: Histograms<OpLabel>,
    pub refusals: Family<KindLabel, Counter>,
    pub audit_backlog: Gauge,
    pub audit_unshipped: Gauge,
    pub last_snapshot: Family<RepoLabel, Gauge<f64, AtomicU64>>,
    pub snapshots: Family<RepoLabel, Counter>,
    pub lock_extensions: Counter,
    pub alerts: Family<KindLabel, Counter>,
    /// Lifecycle passes by outcome (ok, failed, skipped: another proxy's
    /// interval or a clock that looks wrong).
    pub lifecycle_passes: Family<KindLabel, Counter>,
    pub lifecycle_last_pass: Gauge<f64, AtomicU64>,
    /// Objects the lifecycle pass deleted, and objects whose lock it
    /// extended for a keeper.
    pub lifecycle_objects: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("coffer");
        let m = Self {
            requests: Family::default(),
            bytes_in: Counter::default(),
            chunks: Family::default(),
            store_seconds: Family::new_with_constructor(latency),
            key_check_seconds: Family::new_with_constructor(latency),
            refusals: Family::default(),
            audit_backlog: Gauge::default(),
            audit_unshipped: Gauge::default(),
            last_snapshot: Family::default(),
            snapshots: Family::default(),
            lock_extensions: Counter::default(),
            alerts: Family::default(),
            lifecycle_passes: Family::default(),
            lifecycle_last_pass: Gauge::default(),
            lifecycle_objects: Family::default(),
            registry: Registry::default(),
        };
        r.register("requests", "API requests by action, outcome and trust domain", m.requests.clone());
        r.register("bytes_in", "Envelope bytes received in chunk uploads", m.bytes_in.clone());
        r.register("chunks", "Distinct chunks committed snapshots reference, by kind: new (uploaded for the snapshot) or dedup (already stored)", m.chunks.clone());
        r.register("store_seconds", "Object store call latency", m.store_seconds.clone());
        r.register("key_check_seconds", "Key record checks (KMS calls) latency", m.key_check_seconds.clone());
        r.register(
            "refusals",
            "Refused before the API: handshake, connect, limit, denied, timeout, unread, protocol",
            m.refusals.clone(),
        );
        r.register("audit_backlog", "Audit events queued, not yet written", m.audit_backlog.clone());
        r.register(
            "audit_unshipped",
            "Sealed audit segments and checkpoints not yet in the store",
            m.audit_unshipped.clone(),
        );
        r.register("last_snapshot_timestamp_seconds", "When each repository last committed", m.last_snapshot.clone());
        r.register("snapshots_committed", "Snapshots committed, by repository", m.snapshots.clone());
        r.register("lock_extensions", "Objects whose lock a commit extended", m.lock_extensions.clone());
        r.register("alerts", "Alerts raised, by kind", m.alerts.clone());
        r.register("lifecycle_passes", "Lifecycle passes by outcome: ok, failed, skipped", m.lifecycle_passes.clone());
        r.register(
            "lifecycle_last_pass_timestamp_seconds",
            "When this proxy last ran a lifecycle pass",
            m.lifecycle_last_pass.clone(),
        );
        r.register(
            "lifecycle_objects",
            "Objects the lifecycle pass deleted or extended the lock of, by kind",
            m.lifecycle_objects.clone(),
        );
        // Counters an alerting rule takes `increase()` of exist at 0 from
        // the start: a series that first appears at 1 would hide its first
        // event, the one that matters (packaging/monitoring).
        for kind in ALERT_KINDS {
            let _ = m.alerts.get_or_create(&KindLabel { kind: kind.to_string() });
        }
        for outcome in ["ok", "failed", "skipped"] {
            let _ = m.lifecycle_passes.get_or_create(&KindLabel { kind: outcome.to_string() });
        }
        Self { registry: r, ..m }
    }
}

/// Every kind of alert the proxy raises (docs/configuration.md, "Alert
/// kinds"; tests/packaging.rs checks the list against the code).
pub const ALERT_KINDS: [&str; 19] = [
    "ransomware",
    "anomalous-snapshot",
    "overdue",
    "handshake-burst",
    "denial-burst",
    "mfa-lockout",
    "store-error",
    "kek",
    "reload",
    "audit-chain",
    "audit-seal",
    "scrub",
    "damaged-snapshot",
    "detector-blind",
    "lifecycle",
    "lockdown",
    "quarantine",
    "assess",
    "upload-quota",
];

/// The exposition with one series in every family (an empty family prints
/// nothing): the names the shipped alerting rules and dashboard may query
/// (tests/packaging.rs checks them).
pub fn every_family() -> String {
    let m = Metrics::default();
    let (any, kind) = (String::new, || KindLabel { kind: String::new() });
    let _ = m.requests.get_or_create(&RequestLabels { action: any(), outcome: any(), trust_domain: any() });
    let op = OpLabel { op: any(), ok: any() };
    let _ = m.store_seconds.get_or_create(&op);
    let _ = m.key_check_seconds.get_or_create(&op);
    for family in [&m.chunks, &m.refusals, &m.alerts, &m.lifecycle_passes, &m.lifecycle_objects] {
        let _ = family.get_or_create(&kind());
    }
    let _ = m.last_snapshot.get_or_create(&RepoLabel { repo: any() });
    let _ = m.snapshots.get_or_create(&RepoLabel { repo: any() });
    m.encode()
}

impl Metrics {
    pub fn refused(&self, kind: &str) {
        self.refusals.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Times every call of an object store.
pub struct TimedStore {
    pub inner: Arc<dyn ObjectStore>,
    pub metrics: Arc<Metrics>,
}

impl TimedStore {
    fn observe<T>(&self, op: &str, start: Instant, r: &Result<T, StoreError>) {
        let labels = OpLabel { op: op.to_string(), ok: r.is_ok().to_string() };
        self.metrics.store_seconds.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl ObjectStore for TimedStore {
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        retain_until: u64,
        recorded: Recorded,
    ) -> Result<PutOutcome, StoreError> {
        let t = Instant::now();
        let r = self.inner.put_object(key, body, retain_until, recorded).await;
        self.observe("put", t, &r);
        r
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.observe("get", t, &r);
        r
    }
    async fn get_head(&self, key: &str, len: usize) -> Result<Option<Bytes>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get_head(key, len).await;
        self.observe("get", t, &r);
        r
    }
    async fn folders(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let t = Instant::now();
        let r = self.inner.folders(prefix).await;
        self.observe("list", t, &r);
        r
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let t = Instant::now();
        let r = self.inner.head(key).await;
        self.observe("head", t, &r);
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.observe("list", t, &r);
        r
    }
    async fn extend_retention(&self, key: &str, until: u64) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.extend_retention(key, until).await;
        self.observe("extend_retention", t, &r);
        r
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.set_legal_hold(key, on).await;
        self.observe("legal_hold", t, &r);
        r
    }
    async fn delete(&self, key: &str, now: u64) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.inner.delete(key, now).await;
        self.observe("delete", t, &r);
        r
    }
    async fn rewritten(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let t = Instant::now();
        let r = self.inner.rewritten(prefix).await;
        self.observe("list_versions", t, &r);
        r
    }
}

/// Times every key record check (for KMS: DescribeKey, rotation, ReEncrypt).
pub struct TimedChecker {
    pub inner: Arc<dyn KeyChecker>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl KeyChecker for TimedChecker {
    async fn check(&self, record: &KeyRecord, repo: &RepoName) -> Result<(), KeyCheckError> {
        let t = Instant::now();
        let r = self.inner.check(record, repo).await;
        let labels = OpLabel { op: "check".into(), ok: r.is_ok().to_string() };
        self.metrics.key_check_seconds.get_or_create(&labels).observe(t.elapsed().as_secs_f64());
        r
    }

    async fn describe(&self, kek: &str) -> Result<crate::keycheck::KekState, KeyCheckError> {
        self.inner.describe(kek).await
    }
}

/// Serves `GET /metrics` (plain HTTP/1) until the task is aborted; `before`
/// refreshes gauges that are read, not counted.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, before: Arc<dyn Fn() + Send + Sync>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (metrics, before) = (metrics.clone(), before.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (metrics, before) = (metrics.clone(), before.clone());
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        before();
                        http::Response::builder()
                            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                            .body(http_body_util::Full::new(Bytes::from(metrics.encode())))
                    } else {
                        http::Response::builder()
                            .status(404)
                            .body(http_body_util::Full::new(Bytes::from_static(b"try /metrics\n")))
                    };
                    Ok::<_, std::convert::Infallible>(resp.expect("valid response"))
                }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// Binds the metrics listener (from `[metrics] listen`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
