//! `coffer-client`: the client side of the `/v1` protocol. One HTTP/2
//! connection over TLS 1.3 with a client certificate, shared by every
//! request in flight, re-established and retried when it fails. Used by the
//! agent, `coffer-proxy admin`, the tests and the benchmarks; it knows
//! nothing of backups.

mod calls;
mod config;
mod endpoint;
mod error;
pub mod exit;

use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::api::{ErrorBody, TOTP_HEADER};
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full, Limited};

pub use config::{ClientConfig, ConfigError, ParseError, DEFAULT_RETRY_DEADLINE_SECS};
pub use endpoint::{check_tls, tls_stream};
use endpoint::{Conn, Endpoint};
use error::printable;
pub use error::ClientError;

/// One request as the client sends it (cloned for each attempt: the body
/// is shared, not copied).
#[derive(Clone)]
struct Outgoing {
    method: Method,
    path: String,
    /// The body's media type, from the endpoint table.
    media: &'static str,
    body: Bytes,
    extra: Option<(&'static str, String)>,
    limit: usize,
}

/// Upload rate below which an attempt is abandoned: the request timeout
/// grows by a second for every this many bytes of body.
const MIN_UPLOAD_BYTES_PER_SEC: usize = 64 * 1024;

/// How long, and how, failed requests are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first failure.
    pub deadline: std::time::Duration,
    pub first_backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
}

impl RetryPolicy {
    pub fn with_deadline(deadline: std::time::Duration) -> Self {
        Self {
            deadline,
            first_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(5),
        }
    }
}

struct Shared {
    endpoint: Endpoint,
    conn: tokio::sync::Mutex<(u64, Option<Conn>)>,
    retry: RetryPolicy,
    /// One attempt's deadline, before the allowance for its body.
    attempt: std::time::Duration,
    /// Whether to tell a person, once, that the proxy is being waited for.
    announce: std::sync::atomic::AtomicBool,
}

/// A client of the proxy: one HTTP/2 connection at a time, shared by every
/// request in flight, re-established when it dies. Every call is idempotent
/// on the proxy's side, so failed ones (connection lost, 429, 5xx) are
/// retried with exponential backoff and jitter until the retry deadline.
/// Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct ProxyClient {
    shared: Arc<Shared>,
    /// A TOTP code sent with every request (the proxy checks it once per
    /// connection, or on each admin call).
    totp: Option<String>,
}

impl ProxyClient {
    /// Connects and completes the TLS 1.3 and HTTP/2 handshakes (retrying
    /// while the proxy is unreachable, up to the retry deadline).
    pub async fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let endpoint = Endpoint::new(cfg)?;
        let retry = RetryPolicy::with_deadline(std::time::Duration::from_secs(cfg.retry_deadline_secs));
        let attempt = std::time::Duration::from_secs(cfg.request_timeout_secs);
        let announce = std::sync::atomic::AtomicBool::new(cfg.announce_retries);
        let shared = Arc::new(Shared { endpoint, conn: tokio::sync::Mutex::new((0, None)), retry, attempt, announce });
        let client = Self { shared, totp: None };
        client
            .retrying(|| async {
                match tokio::time::timeout(attempt, client.conn()).await {
                    Ok(conn) => conn,
                    Err(_) => Err(ClientError::Timeout {
                        method: Method::CONNECT,
                        path: client.shared.endpoint.addr.clone(),
                        secs: attempt.as_secs(),
                    }),
                }
            })
            .await?;
        Ok(client)
    }
}

impl ProxyClient {
    /// How many connections this client has opened so far.
    pub async fn connections(&self) -> u64 {
        self.shared.conn.lock().await.0
    }

    /// Sends `code` as the TOTP code with every request.
    pub fn with_totp(mut self, code: Option<String>) -> Self {
        self.totp = code;
        self
    }

    /// The live connection, made anew if there is none or it has ended.
    async fn conn(&self) -> Result<Conn, ClientError> {
        let mut slot = self.shared.conn.lock().await;
        if let Some(c) = &slot.1 {
            if c.ended.borrow().is_none() {
                return Ok(c.clone());
            }
        }
        slot.0 += 1;
        let conn = self.shared.endpoint.connect(slot.0).await?;
        slot.1 = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets `conn` if it is still the current one, so the next request
    /// reconnects.
    async fn drop_conn(&self, conn: &Conn) {
        let mut slot = self.shared.conn.lock().await;
        if slot.1.as_ref().is_some_and(|c| c.generation == conn.generation) {
            slot.1 = None;
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry deadline
    /// passes; waits between tries with exponential backoff and jitter.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let policy = self.shared.retry;
        let start = std::time::Instant::now();
        let mut backoff = policy.first_backoff;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable() && start.elapsed() < policy.deadline => {
                    let mut j = [0u8; 2];
                    aws_lc_rs::rand::fill(&mut j).expect("the system RNG failed");
                    let jitter = backoff.mul_f64(f64::from(u16::from_le_bytes(j)) / f64::from(u16::MAX) / 2.0);
                    tracing::warn!("retrying in {:?}: {e}", backoff + jitter);
                    if self.shared.announce.swap(false, std::sync::atomic::Ordering::Relaxed) {
                        let hint = match e {
                            ClientError::Connect { .. } | ClientError::Handshake { .. } => {
                                "; is coffer-proxy running, and does `proxy` in the config name it?"
                            }
                            _ => "",
                        };
                        eprintln!(
                            "coffer: waiting for the proxy at {} ({e}): retrying for up to {} s, Ctrl-C stops{hint}",
                            self.shared.endpoint.addr,
                            policy.deadline.as_secs()
                        );
                    }
                    tokio::time::sleep((backoff + jitter).min(policy.deadline.saturating_sub(start.elapsed()))).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request until it gets an answer worth returning, reading at
    /// most `out.limit` bytes of it. Each attempt has a deadline: one that
    /// passes drops the connection (the proxy may hang) and is retried.
    async fn call(&self, out: Outgoing) -> Result<Bytes, ClientError> {
        let deadline =
            self.shared.attempt + std::time::Duration::from_secs((out.body.len() / MIN_UPLOAD_BYTES_PER_SEC) as u64);
        self.call_within(out, deadline).await
    }

    /// [`call`](Self::call) with each attempt's deadline given.
    async fn call_within(&self, out: Outgoing, deadline: std::time::Duration) -> Result<Bytes, ClientError> {
        self.retrying(|| async {
            match tokio::time::timeout(deadline, self.call_once(out.clone())).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.shared.conn.lock().await.1 = None;
                    let (method, path) = (out.method.clone(), out.path.clone());
                    Err(ClientError::Timeout { method, path, secs: deadline.as_secs() })
                }
            }
        })
        .await
    }

    async fn call_once(&self, out: Outgoing) -> Result<Bytes, ClientError> {
        let Outgoing { method, path, media, body, extra, limit } = out;
        let conn = self.conn().await?;
        let mut req =
            Request::builder().method(method.clone()).uri(format!("https://{}{path}", self.shared.endpoint.authority));
        // Every body is typed (SPEC "HTTP API"): JSON for admin calls, the
        // binary formats otherwise; a caller's own Content-Type wins.
        let typed = extra.as_ref().is_some_and(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if method != Method::GET && !typed {
            req = req.header(http::header::CONTENT_TYPE, media);
        }
        if let Some((name, value)) = extra {
            req = req.header(name, value);
        }
        if let Some(code) = &self.totp {
            req = req.header(TOTP_HEADER, code);
        }
        let req = req.body(Full::new(body)).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut send = conn.send.clone();
        let sent = async {
            send.ready().await?;
            send.send_request(req).await
        }
        .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let err = Self::explain(&conn, e).await;
                self.drop_conn(&conn).await;
                return Err(err);
            }
        };
        let status = resp.status();
        let body = match Limited::new(resp.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                self.drop_conn(&conn).await;
                return Err(ClientError::Body(e.to_string()));
            }
        };
        if status.is_success() {
            return Ok(body);
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (printable(&e.code), printable(&e.message)),
            Err(_) => (String::new(), printable(&String::from_utf8_lossy(&body).chars().take(200).collect::<String>())),
        };
        Err(ClientError::Status { method, path, status, code, message })
    }

    /// Turns a failed request into the connection's own reason if it died.
    /// A client certificate the proxy refused shows up only here: in TLS 1.3
    /// the client's handshake completes before the server has checked it.
    async fn explain(conn: &Conn, e: hyper::Error) -> ClientError {
        let mut ended = conn.ended.clone();
        let why = tokio::time::timeout(std::time::Duration::from_secs(1), ended.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|v| v.clone()));
        match why {
            Some(why) if why.contains("received fatal alert") => ClientError::Refused(why),
            _ => ClientError::Http(e),
        }
    }
}
