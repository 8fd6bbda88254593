//! The accept loop: source check, TLS handshakes, HTTP/2 connections,
//! reload on SIGHUP, graceful shutdown.

pub mod conns;
pub mod limit;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceBuilder;

use crate::access::identity::Identity;
use crate::access::trust::TrustDomains;
use crate::api::{self, Caller};
use crate::app::{App, AppParts};
use crate::audit::{AuditLog, AuditWriter, Draft, Outcome};
use crate::config::{ProxyConfig, StoreConfig};
use crate::monitor::alerts::Severity;
use crate::monitor::metrics::{TimedChecker, TimedStore};
use crate::server::limit::{timeout_to_response, Activity, LimitLayer, Limiter};
use crate::store::S3Store;

/// Connections served at once; the permit is taken before `accept`.
pub const MAX_CONNECTIONS: usize = 1024;
/// HTTP/2 streams one connection may have open. A client that opens more
/// than the proxy advertised breaks the protocol: the first stream refused
/// (or reset for any other error of the client's) closes the connection
/// with GOAWAY ENHANCE_YOUR_CALM and an audit event, rather than being
/// answered stream by stream where nothing records it.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// How long a refused client's last bytes are read before hanging up.
pub const LINGER_AFTER_REFUSAL: Duration = Duration::from_secs(2);
/// How long in-flight requests get to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What a reload replaces: trust domains (CAs, CRLs), the proxy's own
/// certificate and the source allowlist. New connections use the new one;
/// open connections keep theirs.
struct Live {
    acceptor: tokio_rustls::TlsAcceptor,
    domains: Arc<TrustDomains>,
    allow: Vec<IpNet>,
}

impl Live {
    fn load(cfg: &ProxyConfig) -> Result<Self, String> {
        let domains = Arc::new(TrustDomains::load(&cfg.trust_domains)?);
        let tls = crate::server::tls::server_config(&cfg.tls, domains.clone())?;
        Ok(Self { acceptor: tls.into(), domains, allow: cfg.network.allow_cidrs.clone() })
    }

    fn source_allowed(&self, peer: &SocketAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&peer.ip()))
    }
}

/// Per-connection settings that do not change on reload.
#[derive(Clone)]
struct ConnLimits {
    limiter: Arc<Limiter>,
    slots: Arc<crate::server::conns::Slots>,
    refusals: Arc<crate::server::conns::RefusalThrottle>,
    request_timeout: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
}

/// Who asked for a reload: a signal may only tighten repository policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reloader {
    Signal,
    Admin,
}

/// A proxy with everything opened and checked, not yet listening.
pub struct Proxy {
    app: Arc<App>,
    reloads: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<Result<(), String>>>,
    limits: ConnLimits,
    /// The trust domains, certificate and allowlist in force; replaced on
    /// reload, and watched by open connections, which close when their
    /// client is no longer accepted.
    live: watch::Sender<Arc<Live>>,
    writer: AuditWriter,
    listen: SocketAddr,
    config_path: PathBuf,
    spool: crate::audit::SpoolConfig,
    proxy_id: String,
    webhook: Option<crate::monitor::alerts::WebhookConfig>,
    scrub: crate::monitor::scrub::ScrubConfig,
    /// The configuration as loaded, for the background assessment.
    config: Arc<ProxyConfig>,
    ship_every: Duration,
    metrics_listen: Option<SocketAddr>,
}

/// Checks what `build` would open, without creating or starting anything
/// (an S3 bucket is checked for Object Lock and versioning): for
/// `--check-config`.
pub async fn check(cfg: &ProxyConfig) -> Result<(), String> {
    Live::load(cfg)?;
    crate::parts::key_checker(cfg).await?;
    match &cfg.store {
        StoreConfig::Fs { path } => crate::parts::writable("store", path)?,
        StoreConfig::S3(s3) => drop(S3Store::connect(s3, &crate::parts::aws_sdk_config().await).await?),
    }
    crate::parts::writable("audit log", &cfg.audit.path)?;
    cfg.policy()?;
    Ok(())
}

/// Builds the proxy from a validated config: opens the store (an S3
/// bucket must have Object Lock and versioning), the audit log and the key
/// checker, loads certificates. Errors name what to fix. `config_path` is
/// read again on reload.
pub async fn build(cfg: &ProxyConfig, config_path: &Path) -> Result<Proxy, String> {
    let live = Live::load(cfg)?;
    let metrics = Arc::new(crate::monitor::metrics::Metrics::default());
    let store = Arc::new(TimedStore { inner: crate::parts::open_store(cfg).await?, metrics: metrics.clone() });
    let checker = Arc::new(TimedChecker { inner: crate::parts::key_checker(cfg).await?, metrics: metrics.clone() });
    let (audit, writer) = AuditLog::open(&cfg.audit.spool(), &cfg.proxy_id)
        .map_err(|e| format!("audit log {}: {e}", cfg.audit.path.display()))?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let alerts = Arc::new(
        crate::monitor::alerts::Alerts::new(cfg.audit.alert_spool(), &cfg.proxy_id, audit.clone(), metrics.clone())
            .map_err(|e| format!("alert spool {}: {e}", cfg.audit.alert_spool().display()))?,
    );
    // Repository policies' RPOs join the alert rules (they take effect on restart).
    let mut alerts_cfg = cfg.alerts.clone();
    for p in &cfg.repo_policies {
        if let Some(secs) = p.rpo_secs {
            alerts_cfg.rpo.push(crate::monitor::detect::RpoRule { repos: p.repos.clone(), secs });
        }
    }
    let watch = Arc::new(crate::monitor::detect::Watch::new(alerts, &alerts_cfg)?);
    let mfa = crate::access::mfa::MfaVerifier::new(cfg.admin.totp_file.clone(), store.clone());
    let app = App::new(AppParts {
        policy: cfg.policy()?,
        store,
        audit,
        checker,
        retention: cfg.retention_secs(),
        commit_max_bytes: cfg.limits.commit_max_bytes,
        mfa,
        reload: reload_tx,
        metrics: metrics.clone(),
        watch,
        client_certs: crate::access::clientcerts::ClientCerts::open(cfg.audit.client_certs()),
    });
    app.set_repo_policies(cfg.repo_policies()?);
    let limits = ConnLimits {
        limiter: Arc::new(Limiter::new(cfg.limits)),
        slots: crate::server::conns::Slots::new(cfg.limits.connections_per_source, cfg.limits.connections_per_identity),
        refusals: Arc::default(),
        request_timeout: Duration::from_secs(cfg.limits.request_timeout_secs),
        idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
        handshake_timeout: Duration::from_secs(cfg.limits.handshake_timeout_secs),
    };
    Ok(Proxy {
        app: Arc::new(app),
        reloads: reload_rx,
        limits,
        live: watch::Sender::new(Arc::new(live)),
        writer,
        listen: cfg.listen,
        config_path: config_path.to_path_buf(),
        spool: cfg.audit.spool(),
        proxy_id: cfg.proxy_id.clone(),
        webhook: cfg.alerts.webhook.clone(),
        scrub: cfg.scrub,
        config: Arc::new(ProxyConfig::load(config_path).map_err(|e| e.to_string())?),
        ship_every: Duration::from_secs(cfg.audit.ship_secs.max(1)),
        metrics_listen: cfg.metrics.listen,
    })
}

impl Proxy {
    /// Binds, calls `ready` with the bound address, and serves until
    /// `shutdown` resolves; then lets requests finish and flushes the audit log.
    pub async fn serve(
        mut self,
        ready: impl FnOnce(SocketAddr),
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let revoked = self.app.load_revocations().await.map_err(|e| std::io::Error::other(e.to_string()))?;
        if revoked > 0 {
            tracing::info!("{revoked} identities are revoked");
        }
        if self.app.load_lockdown().await.map_err(|e| std::io::Error::other(e.to_string()))? {
            tracing::warn!("the proxy is in lockdown: only reads are served");
        }
        let listener = TcpListener::bind(self.listen).await?;
        let mut hangup = signal(SignalKind::hangup())?;
        let metrics_task = match self.metrics_listen {
            Some(addr) => {
                let listener = crate::monitor::metrics::bind(addr).await?;
                tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
                let (app, sealed) = (self.app.clone(), self.spool.sealed_dir());
                let refresh = Arc::new(move || {
                    app.metrics.audit_backlog.set(app.audit.backlog() as i64);
                    app.metrics.audit_unshipped.set(crate::audit::ship::unshipped(&sealed) as i64);
                });
                Some(tokio::spawn(crate::monitor::metrics::serve(listener, self.app.metrics.clone(), refresh)))
            }
            None => None,
        };
        let watchers = [
            tokio::spawn(crate::monitor::alerts::deliver(self.app.watch.alerts.clone(), self.webhook.clone())),
            tokio::spawn(watch_overdue(self.app.clone())),
            tokio::spawn(watch_admin_state(self.app.clone(), Duration::from_secs(self.config.admin.poll_secs.max(1)))),
            tokio::spawn(crate::monitor::scrub::scrub_loop(
                self.app.store.clone(),
                self.app.watch.clone(),
                self.app.audit.clone(),
                self.scrub,
            )),
            tokio::spawn(crate::compliance::assess::assess_loop(
                self.app.clone(),
                self.config.clone(),
                self.config.assess.interval_secs,
            )),
        ];
        check_audit_chain(&self.app, &self.spool).await;
        let shipper =
            tokio::spawn(ship_audit(self.app.clone(), self.spool.sealed_dir(), self.proxy_id.clone(), self.ship_every));
        ready(listener.local_addr()?);
        let (stop_tx, stop_rx) = watch::channel(false);
        // The last ADMIN_RESERVED connections are taken only when the rest
        // are, and kept only by admins.
        let general = Arc::new(Semaphore::new(MAX_CONNECTIONS - crate::server::conns::ADMIN_RESERVED));
        let reserve = Arc::new(Semaphore::new(crate::server::conns::ADMIN_RESERVED));
        let mut conns = JoinSet::new();
        let flusher = tokio::spawn(flush_refusals(self.app.clone(), self.limits.refusals.clone()));
        tokio::pin!(shutdown);
        loop {
            let (permit, reserved) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                p = general.clone().acquire_owned() => (p.expect("never closed"), false),
                p = reserve.clone().acquire_owned() => (p.expect("never closed"), true),
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
                _ = hangup.recv() => {
                    let _ = self.reload(Reloader::Signal).await;
                    continue;
                }
                Some(reply) = self.reloads.recv() => {
                    let _ = reply.send(self.reload(Reloader::Admin).await);
                    continue;
                }
                () = &mut shutdown => break,
            };
            let live = self.live.subscribe();
            let (app, limits, stop) = (self.app.clone(), self.limits.clone(), stop_rx.clone());
            conns.spawn(async move {
                serve_connection(app, live, limits, tcp, peer, reserved, stop).await;
                drop(permit);
            });
            while conns.try_join_next().is_some() {}
        }
        tracing::info!("shutting down: finishing {} connections", conns.len());
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
        conns.shutdown().await;
        flusher.abort();
        let _ = flusher.await;
        shipper.abort();
        let _ = shipper.await; // drops its handle on the app, and so on the log
        for task in watchers {
            task.abort();
            let _ = task.await;
        }
        if let Some(task) = metrics_task {
            task.abort();
            let _ = task.await;
        }
        let (app, writer) = (self.app, self.writer);
        let store = app.store.clone();
        let (retain, sealed, proxy_id) = (app.new_retain_until(), self.spool.sealed_dir(), self.proxy_id);
        drop(app);
        tokio::task::spawn_blocking(move || writer.join()).await.ok();
        // What was sealed last goes to the store too, if it can.
        if let Err(e) = crate::audit::ship::ship_pending(&sealed, &*store, &proxy_id, retain).await {
            tracing::warn!("audit segments left unshipped at shutdown: {e}");
        }
        Ok(())
    }

    /// Re-reads the config file and swaps in its trust domains, certificate,
    /// allowlist, policy and repository policies, all or nothing: an invalid
    /// file keeps the old ones. Repository policies may only get stricter by
    /// a signal; loosening one needs the admin API (admin role + TOTP).
    /// Either way the outcome is an audit event.
    async fn reload(&self, by: Reloader) -> Result<(), String> {
        let old = self.app.repo_policies().configs();
        let loaded = ProxyConfig::load(&self.config_path).map_err(|e| e.to_string()).and_then(|cfg| {
            let looser = crate::access::governance::loosening(&old, &cfg.repo_policies);
            if let (Some(why), Reloader::Signal) = (&looser, by) {
                return Err(format!(
                    "{why}: loosening a repository policy needs `coffer-proxy admin reload` (admin + TOTP)"
                ));
            }
            Ok((Live::load(&cfg)?, cfg.policy()?, cfg.repo_policies()?, looser))
        });
        let (outcome, reason, result) = match loaded {
            Ok((live, policy, repo_policies, looser)) => {
                self.live.send_replace(Arc::new(live));
                self.app.set_policy(policy);
                self.app.set_repo_policies(repo_policies);
                tracing::info!("reloaded {}", self.config_path.display());
                (Outcome::Ok, looser.map(|why| format!("repository policy loosened by an admin: {why}")), Ok(()))
            }
            Err(e) => {
                tracing::error!("reload refused, keeping the running configuration: {e}");
                let reason = format!("reload refused, running configuration kept: {e}");
                self.app.watch.alerts.raise("reload", Severity::High, None, None, reason.clone(), None).await;
                (Outcome::Invalid, Some(reason.clone()), Err(reason))
            }
        };
        let peer = match by {
            Reloader::Signal => "signal",
            Reloader::Admin => "admin API",
        };
        let draft = Draft { peer: peer.into(), action: "reload", outcome: Some(outcome), reason, ..Default::default() };
        let _ = self.app.audit.record(draft, true).await;
        result
    }
}

/// At start: is the local audit chain whole? If not, an alert (and the
/// proxy keeps serving: the evidence is kept as it is).
async fn check_audit_chain(app: &App, spool: &crate::audit::SpoolConfig) {
    let verdict = crate::audit::local_trail(spool).map_err(|e| e.to_string()).and_then(|(segments, live)| {
        let key = crate::audit::public_key(spool).ok();
        crate::audit::verify(&segments, Some(&live), key.as_deref()).map_err(|b| b.to_string())
    });
    if let Err(e) = verdict {
        app.watch.alerts.raise("audit-chain", Severity::Critical, None, None, e, None).await;
    }
}

/// Checks RPOs every `check_secs`, after learning each repository's last
/// commit from its index segments.
async fn watch_overdue(app: Arc<App>) {
    if !app.watch.has_rpo() {
        return;
    }
    match app.store.list("").await {
        Ok(keys) => {
            for key in keys.iter().filter(|k| k.contains("/index/")) {
                let Some((repo, id)) = key.split_once("/index/") else { continue };
                let (Ok(repo), Ok(bytes)) = (repo.parse::<coffer_proto::RepoName>(), app.store.get(key).await) else {
                    continue;
                };
                let index = bytes.and_then(|b| coffer_proto::snapshot::IndexSegment::decode(&b).ok());
                if let Some(index) = index.filter(|i| i.snapshot.to_string() == id) {
                    app.watch.seen(repo, index.committed);
                }
            }
        }
        Err(e) => tracing::warn!("cannot learn the repositories' last snapshots: {e}"),
    }
    let mut tick = tokio::time::interval(Duration::from_secs(app.watch.check_secs));
    loop {
        tick.tick().await;
        app.watch.check_overdue(crate::unix_now()).await;
    }
}

/// Reads the admin state (revocations, lockdown) from the store again and
/// again, so an admin call made through another proxy on the same store
/// takes effect here within `every` (aborted at shutdown).
async fn watch_admin_state(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.load_revocations().await {
            tracing::warn!("reading revocations from the store failed (will retry): {e}");
        }
        let before = app.lockdown.load(std::sync::atomic::Ordering::Acquire);
        match app.load_lockdown().await {
            Ok(on) if on != before => {
                tracing::warn!(
                    "lockdown {} by an administrator (through another proxy)",
                    if on { "entered" } else { "lifted" }
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the lockdown state from the store failed (will retry): {e}"),
        }
    }
}

/// Seals by age and ships sealed segments, forever (aborted at shutdown).
async fn ship_audit(app: Arc<App>, sealed: PathBuf, proxy_id: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        app.audit.tick();
        match crate::audit::ship::ship_pending(&sealed, &*app.store, &proxy_id, app.new_retain_until()).await {
            Ok(shipped) => {
                if !shipped.is_empty() {
                    tracing::info!("shipped {} audit segments", shipped.len());
                }
                // Each segment's hash goes to the webhook too: a copy of
                // the trail's anchor that root on this host cannot rewrite.
                for s in &shipped {
                    let msg = crate::audit::ship::seal_message(s);
                    app.watch.alerts.raise("audit-seal", Severity::Info, None, Some(s.key.clone()), msg, None).await;
                }
            }
            Err(e) => tracing::warn!("shipping audit segments failed (will retry): {e}"),
        }
    }
}

/// Writes, once a minute has ended, how many refused connections of each
/// source were counted but not written one by one (aborted at shutdown).
async fn flush_refusals(app: Arc<App>, throttle: Arc<crate::server::conns::RefusalThrottle>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        for (ip, n) in throttle.take_ended(crate::unix_now()) {
            let reason = format!(
                "{n} more connections from {ip} were refused in that minute (beyond {} a minute, counted, not written one by one)",
                crate::server::conns::REFUSALS_AUDITED_PER_MINUTE
            );
            let draft = Draft {
                peer: ip.to_string(),
                action: "connect",
                outcome: Some(Outcome::Denied),
                reason: Some(reason),
                bytes: n,
                ..Default::default()
            };
            let _ = app.audit.record(draft, false).await;
        }
    }
}

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

async fn serve_connection(
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
        .map_result(timeout_to_response(caller, audit))
        .timeout(limits.request_timeout)
        .service_fn(move |req| {
            let (app, caller) = (app.clone(), handler_caller.clone());
            async move { Ok::<_, std::convert::Infallible>(api::handle(app, caller, req).await) }
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
