//! The accept loop: source check, TLS handshakes, HTTP/2 connections,
//! reload on SIGHUP, graceful shutdown.

mod connection;
pub mod conns;
pub mod limit;
mod tasks;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::access::trust::{TrustDomains, TrustError};
use crate::app::{App, AppParts, ReloadError};
use crate::audit::{AuditLog, AuditWriter, Draft, Outcome};
use crate::config::{ProxyConfig, StoreConfig};
use crate::monitor::alerts::Severity;
use crate::monitor::metrics::{TimedChecker, TimedStore};
use crate::parts::SetupError;
use crate::server::limit::Limiter;
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
    fn load(cfg: &ProxyConfig) -> Result<Self, TrustError> {
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
    reloads: tokio::sync::mpsc::Receiver<crate::app::ReloadReply>,
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
pub async fn check(cfg: &ProxyConfig) -> Result<(), SetupError> {
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

/// The shared state a config describes: the store, the key checker, the
/// audit log (and its writer thread), alerts, the detector and the policy.
/// Apart from the listener and TLS, this is the whole proxy, which is what
/// the handlers' unit tests build.
pub(crate) async fn build_app(
    cfg: &ProxyConfig,
) -> Result<(App, AuditWriter, tokio::sync::mpsc::Receiver<crate::app::ReloadReply>), SetupError> {
    let metrics = Arc::new(crate::monitor::metrics::Metrics::default());
    let store = Arc::new(TimedStore { inner: crate::parts::open_store(cfg).await?, metrics: metrics.clone() });
    let checker = Arc::new(TimedChecker { inner: crate::parts::key_checker(cfg).await?, metrics: metrics.clone() });
    let (audit, writer) = AuditLog::open(&cfg.audit.spool(), &cfg.proxy_id)
        .map_err(|e| SetupError::path("audit log", &cfg.audit.path, e))?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let alerts = Arc::new(
        crate::monitor::alerts::Alerts::new(cfg.audit.alert_spool(), &cfg.proxy_id, audit.clone(), metrics.clone())
            .map_err(|e| SetupError::path("alert spool", &cfg.audit.alert_spool(), e))?,
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
        upload_lock: cfg.upload_lock_secs(),
        commit_max_bytes: cfg.limits.commit_max_bytes,
        fan_out: cfg.limits.store_fan_out,
        catalog_chunks: cfg.limits.catalog_chunks,
        store_requests: cfg.limits.store_requests,
        mfa,
        reload: reload_tx,
        metrics: metrics.clone(),
        watch,
        client_certs: crate::access::clientcerts::ClientCerts::open(cfg.audit.client_certs()),
        packs_enabled: cfg.lifecycle.listing_packs,
        upload_quota: cfg.limits.identity_upload_bytes_per_day,
    });
    app.set_repo_policies(cfg.repo_policies()?);
    app.load_scopes_since().await?;
    Ok((app, writer, reload_rx))
}

/// Builds the proxy from a validated config: opens the store (an S3
/// bucket must have Object Lock and versioning), the audit log and the key
/// checker, loads certificates. Errors name what to fix. `config_path` is
/// read again on reload.
pub async fn build(cfg: &ProxyConfig, config_path: &Path) -> Result<Proxy, SetupError> {
    let live = Live::load(cfg)?;
    let (app, writer, reload_rx) = build_app(cfg).await?;
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
        config: Arc::new(ProxyConfig::load(config_path)?),
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
            tokio::spawn(tasks::watch_overdue(self.app.clone())),
            tokio::spawn(tasks::watch_admin_state(
                self.app.clone(),
                Duration::from_secs(self.config.admin.poll_secs.max(1)),
            )),
            tokio::spawn(crate::monitor::scrub::scrub_loop(
                self.app.store.clone(),
                self.app.watch.clone(),
                self.app.audit.clone(),
                self.scrub,
            )),
            tokio::spawn(tasks::assess_loop(self.app.clone(), self.config.clone(), self.config.assess.interval_secs)),
            tokio::spawn(tasks::lifecycle_loop(self.app.clone(), self.config.lifecycle)),
        ];
        tasks::check_audit_chain(&self.app, &self.spool).await;
        let shipper = tokio::spawn(tasks::ship_audit(
            self.app.clone(),
            self.spool.sealed_dir(),
            self.proxy_id.clone(),
            self.ship_every,
        ));
        ready(listener.local_addr()?);
        let (stop_tx, stop_rx) = watch::channel(false);
        // The last ADMIN_RESERVED connections are taken only when the rest
        // are, and kept only by admins.
        let general = Arc::new(Semaphore::new(MAX_CONNECTIONS - crate::server::conns::ADMIN_RESERVED));
        let reserve = Arc::new(Semaphore::new(crate::server::conns::ADMIN_RESERVED));
        let mut conns = JoinSet::new();
        let flusher = tokio::spawn(tasks::flush_refusals(self.app.clone(), self.limits.refusals.clone()));
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
                connection::serve_connection(app, live, limits, tcp, peer, reserved, stop).await;
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
        let alerts = app.watch.alerts.spool_target();
        drop(app);
        tokio::task::spawn_blocking(move || writer.join()).await.ok();
        // What was sealed last goes to the store too, if it can, and its
        // hash to the webhook (spooled: sent when the proxy next starts).
        let pass = crate::audit::ship::ship_pending(&sealed, &*store, &proxy_id, retain).await;
        for s in &pass.shipped {
            let msg = crate::audit::ship::seal_message(s);
            if let Err(e) = crate::monitor::alerts::spool_seal(&alerts, s.key.clone(), msg) {
                tracing::error!("could not spool the audit-seal alert of {}: {e}", s.key);
            }
        }
        if let Some(e) = pass.failed {
            tracing::warn!("audit segments left unshipped at shutdown: {e}");
        }
        Ok(())
    }

    /// Re-reads the config file and swaps in its trust domains, certificate,
    /// allowlist, policy and repository policies, all or nothing: an invalid
    /// file keeps the old ones. Repository policies may only get stricter by
    /// a signal; loosening one needs the admin API (admin role + TOTP).
    /// Either way the outcome is an audit event.
    async fn reload(&self, by: Reloader) -> Result<(), ReloadError> {
        let old = self.app.repo_policies().configs();
        let loaded = ProxyConfig::load(&self.config_path).map_err(ReloadError::from).and_then(|cfg| {
            let looser = crate::access::governance::loosening(&old, &cfg.repo_policies);
            if let (Some(why), Reloader::Signal) = (&looser, by) {
                return Err(ReloadError::NeedsAdmin(why.clone()));
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
                (Outcome::Invalid, Some(reason), Err(e))
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
