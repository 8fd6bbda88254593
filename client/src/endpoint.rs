//! Connecting: TCP, TLS 1.3 with this client's certificate, then HTTP/2.

use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{ClientConfig, ClientError};

/// Everything needed to (re)connect.
pub(crate) struct Endpoint {
    tls: Arc<rustls::ClientConfig>,
    keepalive: std::time::Duration,
    server_name: ServerName<'static>,
    pub(crate) addr: String,
    pub(crate) authority: String,
}

/// One live HTTP/2 connection.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) send: SendRequest<Full<Bytes>>,
    /// Why the connection ended, once it has: requests cut off by a dead
    /// connection only learn "closed", the connection task learns why.
    pub(crate) ended: watch::Receiver<Option<String>>,
    pub(crate) generation: u64,
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Tls(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

/// Checks what connecting would need, without connecting: the proxy URL,
/// the CA, the certificate and its key (for `coffer --check-config`).
pub fn check_tls(cfg: &ClientConfig) -> Result<(), ClientError> {
    Endpoint::new(cfg).map(drop)
}

/// One TLS connection to the proxy as this agent (ALPN `h2`), for tools and
/// tests that speak HTTP/2 themselves; no retries.
pub async fn tls_stream(cfg: &ClientConfig) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
    Endpoint::new(cfg)?.tls_stream().await
}

impl Endpoint {
    pub(crate) fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
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

    pub(crate) async fn connect(&self, generation: u64) -> Result<Conn, ClientError> {
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
