//! One client connection: the source checks, the TLS handshake, the
//! identity, the connection caps, then HTTP/2 until it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tower::ServiceBuilder;

use crate::access::identity::Identity;
use crate::api::{self, Caller};
use crate::app::App;
use crate::audit::{Draft, Outcome};
use crate::server::limit::{request_deadline, timed_out, Activity, LimitLayer};

use super::{ConnLimits, Live, LINGER_AFTER_REFUSAL, MAX_STREAMS_PER_CONNECTION};

async fn refuse(app: &App, limits: &ConnLimits, peer: SocketAddr, action: &'static str, reason: String) {
    app.metrics.refused(action);
    if action == "handshake" {
        app.watch.handshake_failed(peer.ip()).await;
    }
    if !limits.refusals.admit(peer.ip(), crate::unix_now()) {
        return;
    }
    tracing::info!(%peer, "{action} refused: {reason}");
    let draft = Draft {
        peer: peer.to_string(),
        action,
        outcome: Some(Outcome::Denied),
        reason: Some(reason),
        ..Default::default()
    };
    let _ = app.audit.record(draft, false).await;
}

/// After a refused handshake (the alert already sent), closes our side and
/// reads what the client still sends for a moment. Closing at once would
/// answer those bytes with a reset, which can destroy the alert before the
/// client reads it, leaving it with "broken pipe" instead of the reason.
async fn linger(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_AFTER_REFUSAL, async { while matches!(tcp.read(&mut sink).await, Ok(1..)) {} })
        .await;
}

pub(super) async fn serve_connection(
    app: Arc<App>,
    mut reloads: watch::Receiver<Arc<Live>>,
    limits: ConnLimits,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    reserved: bool,
    mut stop: watch::Receiver<bool>,
) {
    let live = reloads.borrow_and_update().clone();
    if !live.source_allowed(&peer) {
        return refuse(&app, &limits, peer, "connect", format!("source address {} is not allowed", peer.ip())).await;
    }
    let Some(_source_slot) = limits.slots.source(peer.ip()) else {
        let reason = format!("{} holds its fill of connections (limits.connections_per_source)", peer.ip());
        return refuse(&app, &limits, peer, "connect", reason).await;
    };
    tcp.set_nodelay(true).ok();
    let stream = match tokio::time::timeout(limits.handshake_timeout, live.acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(s)) => s,
        Ok(Err((e, tcp))) => {
            refuse(&app, &limits, peer, "handshake", e.to_string()).await;
            return linger(tcp).await;
        }
        Err(_) => return refuse(&app, &limits, peer, "handshake", "handshake timed out".into()).await,
    };
    let chain: Option<Vec<CertificateDer<'static>>> =
        stream.get_ref().1.peer_certificates().map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let identity = stream.get_ref().1.peer_certificates().and_then(|chain| {
        let domain = live.domains.domain_of(chain)?;
        let identity = Identity::from_certificate(domain, chain.first()?)?;
        app.client_certs.note(&identity, chain.first()?, crate::unix_now());
        Some(identity)
    });
    let _identity_slot = match &identity {
        Some(id) => match limits.slots.identity(&format!("{}\0{}", id.domain(), id.name())) {
            Some(slot) => Some(slot),
            None => {
                let reason = format!("{id} holds its fill of connections (limits.connections_per_identity)");
                return refuse(&app, &limits, peer, "connection", reason).await;
            }
        },
        None => None,
    };
    let admin =
        identity.as_ref().is_some_and(|id| app.policy().grants(id).0.contains(&crate::access::policy::Role::Admin));
    if reserved && !admin {
        let reason = "every connection is in use; the last ones are kept for admins".to_string();
        return refuse(&app, &limits, peer, "connection", reason).await;
    }
    let caller = Arc::new(Caller::new(identity, peer));
    let (conn_app, conn_caller) = (app.clone(), caller.clone());
    let activity = Arc::new(Activity::default());
    let audit = app.audit.clone();
    let handler_caller = caller.clone();
    let service = ServiceBuilder::new()
        .layer(LimitLayer::new(
            limits.limiter.clone(),
            caller.clone(),
            audit.clone(),
            app.metrics.clone(),
            activity.clone(),
        ))
        .service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let deadline = request_deadline(limits.request_timeout, &req, app.commit_max_bytes as u64);
            let (app, caller, audit) = (app.clone(), handler_caller.clone(), audit.clone());
            async move {
                let answer = match tokio::time::timeout(deadline, api::handle(app, caller.clone(), req)).await {
                    Ok(answer) => answer,
                    Err(_) => timed_out(&caller, &audit),
                };
                Ok::<_, std::convert::Infallible>(answer)
            }
        });
    let service = TowerToHyperService::new(service);
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_local_error_reset_streams(Some(0))
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(limits.idle_timeout / 4);
    let idle = loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    match protocol_violation(&e) {
                        Some(reason) => {
                            tracing::info!(%peer, "{reason}");
                            conn_app.metrics.refused("protocol");
                            let _ = conn_app.audit.record(connection_denied(&conn_caller, peer, reason), false).await;
                        }
                        None => tracing::debug!(%peer, "connection ended: {e}"),
                    }
                }
                return;
            }
            _ = stop.changed() => break false,
            Ok(()) = reloads.changed() => {
                // A reload (new CRLs, trust domains, allowlist) applies to
                // open connections too: one whose client it no longer
                // accepts is cut at once, not at its next handshake.
                let live = reloads.borrow_and_update().clone();
                let domain = conn_caller.identity.as_ref().map(|i| i.domain().to_string());
                let still = chain.as_deref().and_then(|c| live.domains.domain_of(c)).map(|d| d.to_string());
                let reason = if !live.source_allowed(&peer) {
                    Some(format!("source address {} is no longer allowed after a reload", peer.ip()))
                } else if chain.is_some() && still != domain {
                    Some("the client certificate is no longer accepted after a reload (revoked, or its trust domain changed)".to_string())
                } else {
                    None
                };
                if let Some(reason) = reason {
                    tracing::info!(%peer, "{reason}; connection closed");
                    conn_app.metrics.refused("handshake");
                    let _ = conn_app.audit.record(connection_denied(&conn_caller, peer, reason), false).await;
                    return;
                }
            }
            _ = tick.tick() => {
                if activity.idle_for() >= limits.idle_timeout {
                    tracing::debug!(%peer, "closing idle connection");
                    break true;
                }
            }
        }
    };
    conn.as_mut().graceful_shutdown();
    if !idle {
        // Shutting down: in-flight requests finish (the server bounds the wait).
        let _ = conn.await;
        return;
    }
    // Nothing is in flight, so all that can be left is responses being
    // written. A client that never reads them would otherwise hold the
    // connection, and the bodies buffered for it, for ever.
    if tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await.is_err() {
        let reason = format!("responses left unread for {} s; connection closed", limits.idle_timeout.as_secs());
        tracing::info!(%peer, "{reason}");
        conn_app.metrics.refused("unread");
        let _ = conn_app.audit.record(connection_denied(&conn_caller, peer, reason), false).await;
    }
}

/// The audit event for a connection the proxy closed because of how the
/// client behaved on it.
fn connection_denied(caller: &Caller, peer: SocketAddr, reason: String) -> Draft {
    let who = &caller.identity;
    Draft {
        identity: who.as_ref().map(|i| i.name().to_string()),
        trust_domain: who.as_ref().map(|i| i.domain().to_string()),
        peer: peer.to_string(),
        action: "connection",
        outcome: Some(Outcome::Denied),
        reason: Some(reason),
        ..Default::default()
    }
}

/// Why the proxy's HTTP/2 layer closed a connection, when the client broke
/// the protocol (as opposed to hanging up, or a network error).
fn protocol_violation(e: &hyper::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if !h2.is_library() {
                return None;
            }
            let reason = h2.reason()?;
            return Some(if reason == h2::Reason::ENHANCE_YOUR_CALM {
                format!(
                    "HTTP/2 {reason:?}: more than {MAX_STREAMS_PER_CONNECTION} streams at once, or a malformed stream; \
                     connection closed"
                )
            } else {
                format!("HTTP/2 protocol error {reason:?} ({reason}); connection closed")
            });
        }
        source = err.source();
    }
    None
}
