//! The agent side of the `/v1` protocol: one HTTP/2 connection over TLS 1.3
//! with a client certificate, shared by every request in flight.

use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::api::{ErrorBody, SnapshotInfo, Whoami, DIGEST_HEADER};
use coffer_proto::{ChunkId, KeyId, RepoName, SnapshotId, ENVELOPE_MAX};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::AgentConfig;

/// Largest response body the agent reads: a listing or an expiry report.
/// Every other answer has a smaller limit of its own (see the callers).
const LISTING_MAX: usize = 64 * 1024 * 1024;
/// Largest small JSON or key answer (config, key record, whoami, commit).
const SMALL_MAX: usize = 64 * 1024;
/// Upload rate below which an attempt is abandoned: the request timeout
/// grows by a second for every this many bytes of body.
const MIN_UPLOAD_BYTES_PER_SEC: usize = 64 * 1024;
/// How long one attempt of an admin call may take (holds and expiry walk a
/// whole repository).
const ADMIN_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest error message from the proxy shown to a person or a log.
const MESSAGE_MAX: usize = 512;
/// Largest snapshot root answer.
const ROOT_ENVELOPE_MAX: usize = coffer_proto::snapshot::ROOT_MAX + coffer_proto::envelope::OVERHEAD;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot connect to the proxy at {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with the proxy at {addr} failed: {source}")]
    Handshake { addr: String, source: std::io::Error },
    #[error("HTTP/2 error talking to the proxy: {0}")]
    Http(#[from] hyper::Error),
    #[error(
        "the proxy refused the TLS session ({0}): is this agent's certificate issued by the proxy's client CA, \
         and still valid?"
    )]
    Refused(String),
    #[error("reading the proxy's response: {0}")]
    Body(String),
    #[error("{method} {path}: proxy answered {status} {code}: {message}")]
    Status { method: Method, path: String, status: StatusCode, code: String, message: String },
    #[error("the proxy's response was not understood: {0}")]
    Protocol(String),
    #[error("{method} {path}: no answer from the proxy within {secs} s")]
    Timeout { method: Method, path: String, secs: u64 },
}

/// Text from the proxy made safe to print: control and direction-changing
/// characters (escape sequences that would clear a screen, retitle a
/// window or forge a log line) shown escaped, and the length capped.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MESSAGE_MAX {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

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

/// Everything needed to (re)connect.
struct Endpoint {
    tls: Arc<rustls::ClientConfig>,
    keepalive: std::time::Duration,
    server_name: ServerName<'static>,
    addr: String,
    authority: String,
}

/// One live HTTP/2 connection.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Full<Bytes>>,
    /// Why the connection ended, once it has: requests cut off by a dead
    /// connection only learn "closed", the connection task learns why.
    ended: watch::Receiver<Option<String>>,
    generation: u64,
}

struct Shared {
    endpoint: Endpoint,
    conn: tokio::sync::Mutex<(u64, Option<Conn>)>,
    retry: RetryPolicy,
    /// One attempt's deadline, before the allowance for its body.
    attempt: std::time::Duration,
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

/// The header carrying a TOTP code (the proxy's `mfa::TOTP_HEADER`).
pub const TOTP_HEADER: &str = "x-coffer-totp";

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

impl ClientError {
    /// Whether the same request may succeed later: the proxy unreachable
    /// or restarting, the connection lost, 429, 5xx. Not: a refused
    /// certificate, a TLS verification failure, any other 4xx.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Http(_) | ClientError::Body(_) | ClientError::Timeout { .. } => {
                true
            }
            ClientError::Handshake { source, .. } => source.kind() != std::io::ErrorKind::InvalidData,
            ClientError::Status { status, .. } => {
                matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
            }
            ClientError::Tls(_) | ClientError::Refused(_) | ClientError::Protocol(_) => false,
        }
    }
}

impl Endpoint {
    /// TCP, then the TLS 1.3 handshake with this agent's certificate.
    async fn tls_stream(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let addr = &self.addr;
        let tcp =
            TcpStream::connect(addr).await.map_err(|source| ClientError::Connect { addr: addr.clone(), source })?;
        tcp.set_nodelay(true).ok();
        tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ClientError::Handshake { addr: addr.clone(), source })
    }

    async fn connect(&self, generation: u64) -> Result<Conn, ClientError> {
        let stream = self.tls_stream().await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            // A stalled or silently dead connection is noticed by its pings,
            // then reconnected (and the request retried) like a closed one.
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive + std::time::Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(1024 * 1024)
            .handshake(TokioIo::new(stream))
            .await?;
        let (ended_tx, ended) = watch::channel(None);
        tokio::spawn(async move {
            let why = match conn.await {
                Ok(()) => "the proxy closed the connection".to_string(),
                Err(e) => std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()),
            };
            tracing::debug!("proxy connection ended: {why}");
            let _ = ended_tx.send(Some(why));
        });
        Ok(Conn { send, ended, generation })
    }
}

impl ProxyClient {
    /// Connects and completes the TLS 1.3 and HTTP/2 handshakes (retrying
    /// while the proxy is unreachable, up to the retry deadline).
    pub async fn connect(cfg: &AgentConfig) -> Result<Self, ClientError> {
        let endpoint = Endpoint::new(cfg)?;
        let retry = RetryPolicy::with_deadline(std::time::Duration::from_secs(cfg.retry_deadline_secs));
        let attempt = std::time::Duration::from_secs(cfg.request_timeout_secs);
        let shared = Arc::new(Shared { endpoint, conn: tokio::sync::Mutex::new((0, None)), retry, attempt });
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

/// Checks what connecting would need, without connecting: the proxy URL,
/// the CA, the certificate and its key (for `coffer --check-config`).
pub fn check_tls(cfg: &AgentConfig) -> Result<(), ClientError> {
    Endpoint::new(cfg).map(drop)
}

/// One TLS connection to the proxy as this agent (ALPN `h2`), for tools and
/// tests that speak HTTP/2 themselves; no retries.
pub async fn tls_stream(cfg: &AgentConfig) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    Endpoint::new(cfg)?.tls_stream().await
}

impl Endpoint {
    fn new(cfg: &AgentConfig) -> Result<Self, ClientError> {
        let uri: Uri = cfg.proxy.parse().map_err(|e| ClientError::Tls(format!("proxy URL {:?}: {e}", cfg.proxy)))?;
        let authority =
            uri.authority().ok_or_else(|| ClientError::Tls(format!("proxy URL {:?} has no host", cfg.proxy)))?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(cfg.server_name.clone().unwrap_or(host.clone()))
            .map_err(|e| ClientError::Tls(format!("server name: {e}")))?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&cfg.ca)? {
            roots.add(cert).map_err(|e| ClientError::Tls(format!("{}: {e}", cfg.ca.display())))?;
        }
        let key = PrivateKeyDer::from_pem_file(&cfg.key)
            .map_err(|e| ClientError::Tls(format!("{}: {e}", cfg.key.display())))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(read_certs(&cfg.cert)?, key)
            .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];

        Ok(Endpoint {
            tls: Arc::new(tls),
            keepalive: std::time::Duration::from_secs(cfg.keepalive_secs),
            server_name,
            addr: format!("{host}:{port}"),
            authority: authority.to_string(),
        })
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
                    tokio::time::sleep((backoff + jitter).min(policy.deadline.saturating_sub(start.elapsed()))).await;
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request until it gets an answer worth returning, reading at
    /// most `limit` bytes of it. Each attempt has a deadline: one that
    /// passes drops the connection (the proxy may hang) and is retried.
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Bytes,
        extra: Option<(&'static str, String)>,
        limit: usize,
    ) -> Result<Bytes, ClientError> {
        let deadline =
            self.shared.attempt + std::time::Duration::from_secs((body.len() / MIN_UPLOAD_BYTES_PER_SEC) as u64);
        self.call_within(method, path, body, extra, limit, deadline).await
    }

    /// [`call`](Self::call) with each attempt's deadline given.
    async fn call_within(
        &self,
        method: Method,
        path: String,
        body: Bytes,
        extra: Option<(&'static str, String)>,
        limit: usize,
        deadline: std::time::Duration,
    ) -> Result<Bytes, ClientError> {
        self.retrying(|| async {
            let attempt = self.call_once(method.clone(), path.clone(), body.clone(), extra.clone(), limit);
            match tokio::time::timeout(deadline, attempt).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.shared.conn.lock().await.1 = None;
                    Err(ClientError::Timeout { method: method.clone(), path: path.clone(), secs: deadline.as_secs() })
                }
            }
        })
        .await
    }

    async fn call_once(
        &self,
        method: Method,
        path: String,
        body: Bytes,
        extra: Option<(&'static str, String)>,
        limit: usize,
    ) -> Result<Bytes, ClientError> {
        let conn = self.conn().await?;
        let mut req =
            Request::builder().method(method.clone()).uri(format!("https://{}{path}", self.shared.endpoint.authority));
        // Every body is typed (SPEC "HTTP API"): JSON for admin calls, the
        // binary formats otherwise; a caller's own Content-Type wins.
        let typed = extra.as_ref().is_some_and(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if method != Method::GET && !typed {
            let media = if path.starts_with("/v1/admin/") { "application/json" } else { "application/octet-stream" };
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

    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        Self::json(&self.call(Method::GET, "/v1/whoami".into(), Bytes::new(), None, SMALL_MAX).await?)
    }

    pub async fn put_config(&self, repo: &RepoName, body: Vec<u8>) -> Result<(), ClientError> {
        self.call(Method::PUT, format!("/v1/repos/{repo}/config"), body.into(), None, SMALL_MAX).await.map(drop)
    }

    pub async fn get_config(&self, repo: &RepoName) -> Result<Bytes, ClientError> {
        self.call(Method::GET, format!("/v1/repos/{repo}/config"), Bytes::new(), None, SMALL_MAX).await
    }

    pub async fn put_key(&self, repo: &RepoName, id: KeyId, body: Vec<u8>) -> Result<(), ClientError> {
        self.call(Method::PUT, format!("/v1/repos/{repo}/keys/{id}"), body.into(), None, SMALL_MAX).await.map(drop)
    }

    pub async fn get_key(&self, repo: &RepoName, id: KeyId) -> Result<Bytes, ClientError> {
        self.call(Method::GET, format!("/v1/repos/{repo}/keys/{id}"), Bytes::new(), None, SMALL_MAX).await
    }

    /// Which of `ids` the repository does not hold yet.
    pub async fn missing(&self, repo: &RepoName, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClientError> {
        let body = coffer_proto::snapshot::encode_ids(ids);
        // The answer is a subset of the question (an error answer may be
        // longer than a small question: small answers are always read).
        let missing_max = body.len().max(SMALL_MAX);
        let path = format!("/v1/repos/{repo}/chunks/missing");
        let resp = self.call(Method::POST, path, body.into(), None, missing_max).await?;
        coffer_proto::snapshot::decode_ids(&resp).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Uploads an envelope with its transit digest. Idempotent.
    pub async fn put_chunk(&self, repo: &RepoName, id: &ChunkId, envelope: Bytes) -> Result<(), ClientError> {
        let digest = blake3::hash(&envelope).to_hex().to_string();
        self.call(
            Method::PUT,
            format!("/v1/repos/{repo}/chunks/{id}"),
            envelope,
            Some((DIGEST_HEADER, digest)),
            SMALL_MAX,
        )
        .await
        .map(drop)
    }

    pub async fn get_chunk(&self, repo: &RepoName, id: &ChunkId) -> Result<Bytes, ClientError> {
        self.call(Method::GET, format!("/v1/repos/{repo}/chunks/{id}"), Bytes::new(), None, ENVELOPE_MAX).await
    }

    pub async fn commit(&self, repo: &RepoName, body: Vec<u8>) -> Result<SnapshotInfo, ClientError> {
        Self::json(&self.call(Method::POST, format!("/v1/repos/{repo}/snapshots"), body.into(), None, SMALL_MAX).await?)
    }

    pub async fn list_snapshots(&self, repo: &RepoName) -> Result<Vec<SnapshotInfo>, ClientError> {
        Self::json(
            &self.call(Method::GET, format!("/v1/repos/{repo}/snapshots"), Bytes::new(), None, LISTING_MAX).await?,
        )
    }

    pub async fn get_snapshot(&self, repo: &RepoName, id: SnapshotId) -> Result<Bytes, ClientError> {
        self.call(Method::GET, format!("/v1/repos/{repo}/snapshots/{id}"), Bytes::new(), None, ROOT_ENVELOPE_MAX).await
    }

    pub async fn put_epoch(&self, repo: &RepoName, id: KeyId, body: Vec<u8>) -> Result<(), ClientError> {
        self.call(Method::PUT, format!("/v1/repos/{repo}/epochs/{id}"), body.into(), None, SMALL_MAX).await.map(drop)
    }

    /// The repository's chunk-id key epochs, oldest first.
    pub async fn list_epochs(&self, repo: &RepoName) -> Result<Vec<coffer_proto::repo::Epoch>, ClientError> {
        Self::json(&self.call(Method::GET, format!("/v1/repos/{repo}/epochs"), Bytes::new(), None, LISTING_MAX).await?)
    }

    /// An admin call: `POST /v1/admin/{what}` with a JSON body. Holds and
    /// expiry touch every object of a repository, so an attempt may take up
    /// to `ADMIN_CALL_DEADLINE`; abandoning one half way would leave it half
    /// done, and its retry would resend a spent TOTP code.
    pub async fn admin(&self, what: &str, body: &impl serde::Serialize) -> Result<Bytes, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let deadline = self.shared.attempt.max(ADMIN_CALL_DEADLINE);
        self.call_within(Method::POST, format!("/v1/admin/{what}"), body.into(), None, LISTING_MAX, deadline).await
    }

    /// A raw request, for tests that must send what the agent never would.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        header: Option<(&'static str, String)>,
    ) -> Result<Bytes, ClientError> {
        self.call(method, path.to_string(), body.into(), header, LISTING_MAX).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_text_cannot_drive_a_terminal_or_forge_a_log_line() {
        // Clear the screen, set the window title, a forged second log line,
        // and a right-to-left override.
        let hostile = "denied\x1b[2J\x1b]0;pwned\x07\nINFO backup committed\u{202e}txt.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert_eq!(shown, "denied\\u{1b}[2J\\u{1b}]0;pwned\\u{7}\\nINFO backup committed\\u{202e}txt.exe");
        let long = printable(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), MESSAGE_MAX + 1, "capped, with an ellipsis");
        assert_eq!(printable("plain \"quoted\" text é"), "plain \"quoted\" text é");
    }
}
