//! Alerts: raised by detectors, spooled to disk (so none is lost across
//! restarts), recorded as audit events, counted, and delivered to a webhook
//! as JSON with retries (exponential backoff with jitter) until it answers
//! 2xx. Without a webhook they are logged and kept in the audit trail only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, Draft, Outcome};
use crate::monitor::metrics::{KindLabel, Metrics};

/// The first retry waits this long; each failure doubles it up to `RETRY_MAX`.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// One delivery attempt must finish within this.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Info,
}

/// One alert, as spooled and as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub kind: String,
    pub severity: Severity,
    /// Unix seconds.
    pub time: u64,
    pub proxy: String,
    pub repo: Option<String>,
    /// What it is about: an identity, an address, an object.
    pub subject: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL receiving a JSON POST per alert.
    pub url: String,
    /// PEM CA(s) for an https webhook (default: the public web roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// Raises alerts; cheap to share.
pub struct Alerts {
    spool: PathBuf,
    proxy: String,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    wake: tokio::sync::Notify,
    /// Alerts already raised, by dedup key, and until when they stay quiet.
    quiet: Mutex<HashMap<String, u64>>,
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("the system RNG failed");
    hex::encode(b)
}

impl Alerts {
    pub fn new(spool: PathBuf, proxy: &str, audit: AuditLog, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        std::fs::create_dir_all(&spool)?;
        Ok(Self {
            spool,
            proxy: proxy.to_string(),
            audit,
            metrics,
            wake: Default::default(),
            quiet: Default::default(),
        })
    }

    /// Raises an alert unless one with the same `dedup` key was raised in
    /// the last `quiet_secs`. Spooled (fsync'd) before this returns.
    pub async fn raise(
        &self,
        kind: &str,
        severity: Severity,
        repo: Option<String>,
        subject: Option<String>,
        message: String,
        dedup: Option<(String, u64)>,
    ) {
        let now = crate::unix_now();
        if let Some((key, quiet_secs)) = &dedup {
            let mut quiet = self.quiet.lock().expect("not poisoned");
            if quiet.get(key).is_some_and(|&until| until > now) {
                return;
            }
            quiet.insert(key.clone(), now.saturating_add(*quiet_secs));
        }
        let alert = Alert {
            id: random_id(),
            kind: kind.into(),
            severity,
            time: now,
            proxy: self.proxy.clone(),
            repo,
            subject,
            message,
        };
        tracing::warn!(kind, "alert: {}", alert.message);
        if let Err(e) = spool_write(&self.spool, &alert) {
            tracing::error!("could not spool alert {}: {e}", alert.id);
        }
        self.metrics.alerts.get_or_create(&KindLabel { kind: kind.into() }).inc();
        let draft = Draft {
            peer: "proxy".into(),
            action: "alert",
            repo: alert.repo.clone(),
            object: Some(format!("{}:{}", alert.kind, alert.id)),
            outcome: Some(Outcome::Ok),
            reason: Some(alert.message.clone()),
            ..Default::default()
        };
        // An audit-seal alert announces a segment that is already in the
        // chain; recording it as an event too would make every seal cause
        // the next one, for ever, on an idle proxy.
        if kind != "audit-seal" {
            let _ = self.audit.record(draft, true).await;
        }
        self.wake.notify_one();
    }

    /// Lets a detector raise the same alert again (e.g. once a repo that was
    /// overdue has committed).
    pub fn clear(&self, dedup: &str) {
        self.quiet.lock().expect("not poisoned").remove(dedup);
    }
}

/// Where alerts wait for delivery, and the proxy they name: what
/// [`spool_seal`] needs once the proxy's audit log is closed.
#[derive(Clone, Debug)]
pub struct SpoolTarget {
    spool: PathBuf,
    proxy: String,
}

impl Alerts {
    pub fn spool_target(&self) -> SpoolTarget {
        SpoolTarget { spool: self.spool.clone(), proxy: self.proxy.clone() }
    }
}

/// Spools an `audit-seal` alert without an [`Alerts`] (whose audit handle
/// would keep the log open): for the segments shipped at shutdown, after
/// the log's last seal. It is delivered when the proxy next starts.
pub fn spool_seal(to: &SpoolTarget, subject: String, message: String) -> std::io::Result<()> {
    let alert = Alert {
        id: random_id(),
        kind: "audit-seal".into(),
        severity: Severity::Info,
        time: crate::unix_now(),
        proxy: to.proxy.clone(),
        repo: None,
        subject: Some(subject),
        message,
    };
    spool_write(&to.spool, &alert)
}

fn spool_write(dir: &Path, alert: &Alert) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = format!("{:020}-{}.json", alert.time, alert.id);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(alert).expect("serialises"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn spooled(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Posts one alert; Ok only for a 2xx answer.
pub async fn post(hook: &WebhookConfig, alert: &Alert) -> Result<(), DeliveryError> {
    let uri: http::Uri = hook.url.parse().map_err(|e| DeliveryError::Url(format!("{e}")))?;
    let host = uri.host().ok_or_else(|| DeliveryError::Url("it has no host".into()))?.to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let body = Bytes::from(serde_json::to_vec(alert).expect("serialises"));
    let req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, uri.authority().map_or(host.clone(), |a| a.to_string()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "coffer-proxy")
        .body(Full::new(body))
        .map_err(|e| DeliveryError::Url(e.to_string()))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(DeliveryError::Connect)?;
        let status = if https {
            let mut roots = rustls::RootCertStore::empty();
            match &hook.ca {
                Some(ca) => {
                    for c in crate::access::trust::read_certs(ca)? {
                        roots.add(c).map_err(|e| DeliveryError::Tls(e.to_string()))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let cfg =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| DeliveryError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| DeliveryError::Url(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| DeliveryError::Tls(e.to_string()))?;
            send(hyper_util::rt::TokioIo::new(tls), req).await?
        } else {
            send(hyper_util::rt::TokioIo::new(tcp), req).await?
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Refused(status))
        }
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, attempt).await.map_err(|_| DeliveryError::TimedOut)?
}

/// Why the webhook did not take an alert.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("webhook URL: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Ca(#[from] crate::access::trust::TrustError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("webhook answered {0}")]
    Refused(http::StatusCode),
    #[error("timed out")]
    TimedOut,
}

async fn send<IO>(io: IO, req: http::Request<Full<Bytes>>) -> Result<http::StatusCode, DeliveryError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// A spooled alert file's contents.
pub fn decode_spooled(bytes: &[u8]) -> Result<Alert, serde_json::Error> {
    serde_json::from_slice::<Alert>(bytes)
}

/// Delivers spooled alerts forever (aborted at shutdown): oldest first,
/// each retried with backoff until the webhook takes it.
pub async fn deliver(alerts: Arc<Alerts>, hook: Option<WebhookConfig>) {
    let mut backoff = RETRY_FIRST;
    loop {
        let mut failed = false;
        for path in spooled(&alerts.spool) {
            let Ok(alert) = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode_spooled(&b).map_err(|e| e.to_string()))
            else {
                tracing::error!("dropping unreadable spooled alert {}", path.display());
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let delivered = match &hook {
                Some(h) => post(h, &alert).await,
                None => Ok(()), // logged and audited when raised
            };
            match delivered {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    backoff = RETRY_FIRST;
                }
                Err(e) => {
                    tracing::warn!("alert {} not delivered (will retry): {e}", alert.id);
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            let mut j = [0u8; 2];
            aws_lc_rs::rand::fill(&mut j).expect("the system RNG failed");
            let jitter = Duration::from_millis(u64::from(u16::from_le_bytes(j)) % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(30), alerts.wake.notified()).await;
        }
    }
}

/// Counts events per key in a sliding window; says when a key crosses the
/// threshold (once per window).
pub struct Burst {
    window_secs: u64,
    threshold: u32,
    seen: Mutex<HashMap<String, (u64, u32)>>,
}

impl Burst {
    pub fn new(window_secs: u64, threshold: u32) -> Self {
        Self { window_secs, threshold, seen: Default::default() }
    }

    /// Records one event for `key`; true exactly when this one crosses the threshold.
    pub fn hit(&self, key: &str, now: u64) -> bool {
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _)| now.saturating_sub(*start) < self.window_secs);
        }
        let e = seen.entry(key.to_string()).or_insert((now, 0));
        if now.saturating_sub(e.0) >= self.window_secs {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 == self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_fires_once_per_window() {
        let b = Burst::new(60, 3);
        assert!(!b.hit("ip", 100));
        assert!(!b.hit("ip", 101));
        assert!(b.hit("ip", 102));
        assert!(!b.hit("ip", 103), "once per window");
        assert!(!b.hit("other", 103));
        assert!(!b.hit("ip", 170));
        assert!(!b.hit("ip", 171));
        assert!(b.hit("ip", 172), "a new window fires again");
    }
}
