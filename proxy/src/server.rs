//! The accept loop: TLS handshakes, HTTP/2 connections, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::api::{self, App, Caller};
use crate::audit::{AuditLog, AuditWriter, Draft, Outcome};
use crate::config::{KeysConfig, ProxyConfig, StoreConfig};
use crate::identity::Identity;
use crate::keycheck::LocalKeyChecker;
use crate::store::FsStore;

/// Connections served at once; the permit is taken before `accept`.
pub const MAX_CONNECTIONS: usize = 1024;
/// A TLS handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams one connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// How long in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A proxy with everything opened and checked, not yet listening.
pub struct Proxy {
    app: Arc<App>,
    tls: tokio_rustls::TlsAcceptor,
    writer: AuditWriter,
    listen: SocketAddr,
}

/// Checks what `build` would open, without creating or starting anything:
/// for `--check-config`.
pub fn check(cfg: &ProxyConfig) -> Result<(), String> {
    crate::tls::server_config(&cfg.tls)?;
    match &cfg.keys {
        KeysConfig::Local { master_key } => crate::config::read_master_key(master_key).map(drop)?,
    }
    let StoreConfig::Fs { path } = &cfg.store;
    for (what, p) in [("store", path.as_path()), ("audit log", cfg.audit.path.as_path())] {
        let existing = p.ancestors().find(|a| a.exists()).unwrap_or(std::path::Path::new("/"));
        if std::fs::metadata(existing).map(|m| m.permissions().readonly()).unwrap_or(true) {
            return Err(format!("{what} {}: {} is not writable", p.display(), existing.display()));
        }
    }
    cfg.policy()?;
    Ok(())
}

/// Builds the proxy from a validated config: opens the store, the audit
/// log and the key checker, loads certificates. Errors name what to fix.
pub fn build(cfg: &ProxyConfig) -> Result<Proxy, String> {
    let tls = crate::tls::server_config(&cfg.tls)?;
    let store = match &cfg.store {
        StoreConfig::Fs { path } => {
            Arc::new(FsStore::open(path).map_err(|e| format!("store {}: {e}", path.display()))?)
        }
    };
    let checker = match &cfg.keys {
        KeysConfig::Local { master_key } => Arc::new(LocalKeyChecker::new(crate::config::read_master_key(master_key)?)),
    };
    let (audit, writer) = AuditLog::open(&cfg.audit.path, &cfg.proxy_id)
        .map_err(|e| format!("audit log {}: {e}", cfg.audit.path.display()))?;
    let app = App::new(cfg.policy()?, store, audit, checker, cfg.retention_secs(), cfg.limits.commit_max_bytes);
    Ok(Proxy { app: Arc::new(app), tls: tls.into(), writer, listen: cfg.listen })
}

impl Proxy {
    /// Binds, calls `ready` with the bound address, and serves until
    /// `shutdown` resolves; then lets requests finish and flushes the audit log.
    pub async fn serve(
        self,
        ready: impl FnOnce(SocketAddr),
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.listen).await?;
        ready(listener.local_addr()?);
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => p.expect("never closed"),
                () = &mut shutdown => break,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let (app, tls, stop) = (self.app.clone(), self.tls.clone(), stop_rx.clone());
            conns.spawn(async move {
                serve_connection(app, tls, tcp, peer, stop).await;
                drop(permit);
            });
            while conns.try_join_next().is_some() {}
        }
        tracing::info!("shutting down: finishing {} connections", conns.len());
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
        conns.shutdown().await;
        drop(self.app);
        let writer = self.writer;
        tokio::task::spawn_blocking(move || writer.join()).await.ok();
        Ok(())
    }
}

async fn serve_connection(
    app: Arc<App>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    tcp.set_nodelay(true).ok();
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "handshake timed out".to_string(),
            };
            tracing::info!(%peer, "TLS handshake failed: {reason}");
            let draft = Draft {
                peer: peer.to_string(),
                action: "handshake",
                outcome: Some(Outcome::Denied),
                reason: Some(reason),
                ..Default::default()
            };
            let _ = app.audit.record(draft, false).await;
            return;
        }
    };
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|c| Identity::from_certificate(c));
    let caller = Arc::new(Caller { identity, peer });
    let service = service_fn(move |req| {
        let (app, caller) = (app.clone(), caller.clone());
        async move { Ok::<_, std::convert::Infallible>(api::handle(app, caller, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
