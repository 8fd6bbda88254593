//! `coffer daemon`: runs the config's `[[jobs]]` on their cron schedules,
//! answers `GET /health` on a loopback address, and in sidecar mode takes
//! backup streams from `coffer send` on a Unix socket, so an application
//! container can back up without holding a certificate or a key.
//!
//! One job failing never stops another: each runs in its own task, and a
//! failure is logged, counted in the health answer, and retried at the next
//! scheduled time. A stop (SIGTERM or SIGINT) schedules nothing more, waits
//! up to `daemon.stop_timeout_secs` for running backups, then abandons the
//! rest: their source commands are killed and nothing of them is committed.
//!
//! The socket protocol (docs/SPEC.md, "Sidecar socket") frames the stream,
//! so a sender that dies half way is told apart from one that finished.

mod error;
mod frames;
mod health;
pub mod hooks;
pub mod metrics;
mod send;
pub(crate) mod sidecar;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_client::ProxyClient;
use coffer_proto::{RepoName, SnapshotId};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{describe, DaemonError, SendError};
pub use frames::{FrameReader, FrameWriter, Reply, SendHeader, FRAME_MAX};
pub use send::{send, Sent};
pub use sidecar::{SENDERS_WAITING_MAX, SEND_IDLE};

use crate::backup::{self, BackupReport, Source};
use crate::config::{AgentConfig, JobConfig};
use crate::keys::KeyProvider;
use crate::repo::OpenRepo;
use crate::schedule::{jitter, parse_schedule};
use hooks::{Hook, Outcome};

/// One job's state, as `GET /health` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    pub repo: String,
    pub schedule: String,
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    /// Unix seconds of the next start (jitter included).
    pub next_run: Option<u64>,
    pub last_started: Option<u64>,
    pub last_success: Option<u64>,
    pub last_snapshot: Option<SnapshotId>,
    /// Why the last run failed; cleared by a success.
    pub last_error: Option<String>,
    /// The last committed run's stream bytes, new bytes and seconds.
    pub last_bytes_in: Option<u64>,
    pub last_bytes_new: Option<u64>,
    pub last_duration_secs: Option<f64>,
    /// Hooks that failed (a failing `before` also fails its run).
    pub hook_failures: u64,
}

/// The socket's counters, as `GET /health` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SocketStatus {
    pub path: PathBuf,
    pub committed: u64,
    pub failed: u64,
    pub running: u64,
}

/// The answer of `GET /health`: `status` is `ok`, or `failing` while any
/// job's last run failed. The endpoint answers 200 either way: the daemon
/// is alive, and restarting it would not mend a backup.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub jobs: BTreeMap<String, JobStatus>,
    pub socket: Option<SocketStatus>,
}

pub struct Daemon {
    pub(crate) config: AgentConfig,
    provider: Arc<dyn KeyProvider>,
    jobs: Mutex<BTreeMap<String, JobStatus>>,
    socket: Mutex<Option<SocketStatus>>,
}

impl Daemon {
    pub fn new(config: AgentConfig, provider: Arc<dyn KeyProvider>) -> Arc<Self> {
        let jobs = config
            .jobs
            .iter()
            .map(|j| {
                let status = JobStatus { repo: j.repo.to_string(), schedule: j.schedule.clone(), ..Default::default() };
                (j.name.clone(), status)
            })
            .collect();
        let socket = config.daemon.socket.clone().map(|path| SocketStatus { path, ..Default::default() });
        Arc::new(Self { config, provider, jobs: Mutex::new(jobs), socket: Mutex::new(socket) })
    }

    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.config.jobs.iter().find(|j| j.name == name)
    }

    pub fn health(&self) -> Health {
        let jobs = self.jobs.lock().expect("not poisoned").clone();
        let failing = jobs.values().any(|j| j.last_error.is_some());
        Health {
            status: if failing { "failing" } else { "ok" },
            jobs,
            socket: self.socket.lock().expect("not poisoned").clone(),
        }
    }

    fn job_status(&self, name: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Some(s) = self.jobs.lock().expect("not poisoned").get_mut(name) {
            f(s);
        }
    }

    fn socket_status(&self, f: impl FnOnce(&mut SocketStatus)) {
        if let Some(s) = self.socket.lock().expect("not poisoned").as_mut() {
            f(s);
        }
    }

    /// A fresh connection to the proxy and the repository, for one backup.
    /// Unattended backups cannot answer a TOTP prompt, so a repository whose
    /// policy asks for one is refused here with a clear reason.
    async fn open_repo(&self, repo: &RepoName, limits: crate::limit::Limits) -> Result<Arc<OpenRepo>, DaemonError> {
        let client = ProxyClient::connect(&self.config.client).await?;
        if client.whoami().await?.mfa {
            return Err(DaemonError::NeedsMfa);
        }
        let legacy_ok = self.config.backup.legacy_repos.contains(repo);
        let repo = OpenRepo::open(client, self.provider.clone(), repo.clone(), legacy_ok).await?;
        Ok(Arc::new(repo.with_limits(limits).with_memory(self.config.state_dir.as_deref(), &self.config.client.proxy)))
    }

    /// Runs one job now (a scheduled start, or `coffer run NAME`).
    pub async fn run_job(&self, job: &JobConfig) -> Result<BackupReport, DaemonError> {
        self.job_status(&job.name, |s| {
            s.running = true;
            s.last_started = Some(crate::unix_now());
        });
        tracing::info!(job = %job.name, repo = %job.repo, "backup started");
        let result = match hooks::run(job, Hook::Before, None).await {
            Ok(()) => self.backup(job).await,
            Err(e) => {
                self.job_status(&job.name, |s| s.hook_failures += 1);
                Err(DaemonError::Hook(e))
            }
        };
        // The command's arguments may hold a secret: the log, /health and
        // the hooks name its program only.
        let error =
            result.as_ref().err().map(|e| redact_arguments(&describe(e as &dyn std::error::Error), &job.argv()));
        match (&result, &error) {
            (Ok(r), _) => tracing::info!(
                job = %job.name, repo = %job.repo, snapshot = %r.id, bytes_in = r.bytes_in,
                bytes_new = r.bytes_new, seconds = r.duration_secs, "backup committed"
            ),
            (Err(_), e) => tracing::error!(
                job = %job.name, repo = %job.repo, error = e.as_deref().unwrap_or_default(),
                "backup failed; nothing was committed"
            ),
        }
        self.job_status(&job.name, |s| {
            s.running = false;
            s.runs += 1;
            match &result {
                Ok(r) => {
                    s.last_success = Some(crate::unix_now());
                    s.last_snapshot = Some(r.id);
                    s.last_error = None;
                    s.last_bytes_in = Some(r.bytes_in);
                    s.last_bytes_new = Some(r.bytes_new);
                    s.last_duration_secs = Some(r.duration_secs);
                }
                Err(_) => {
                    s.failures += 1;
                    s.last_error = error.clone();
                }
            }
        });
        // The run's result stands whatever its after-hook does: a failing
        // notification is logged and counted, never a backup undone.
        let (hook, outcome) = match (&result, &error) {
            (Ok(r), _) => (Hook::After, Outcome::Committed(r)),
            (Err(_), e) => (Hook::OnFailure, Outcome::Failed(e.as_deref().unwrap_or_default())),
        };
        if let Err(e) = hooks::run(job, hook, Some(&outcome)).await {
            tracing::error!(job = %job.name, repo = %job.repo, error = %e, "hook failed");
            self.job_status(&job.name, |s| s.hook_failures += 1);
        }
        result
    }

    /// One backup of `job`, within its `max_run_secs`.
    async fn backup(&self, job: &JobConfig) -> Result<BackupReport, DaemonError> {
        let run = async {
            let upload = job.limit_upload_kib.or(self.config.backup.limit_upload_kib);
            let repo = self.open_repo(&job.repo, crate::limit::Limits::new(upload, None)).await?;
            let in_flight = self.config.backup.uploads_in_flight;
            Ok::<_, DaemonError>(
                backup::run(
                    repo,
                    Source::Command(job.argv()),
                    job.name.clone(),
                    in_flight,
                    crate::progress::ProgressMode::None,
                )
                .await?,
            )
        };
        match job.max_run_secs {
            Some(secs) => match tokio::time::timeout(std::time::Duration::from_secs(secs), run).await {
                Ok(r) => r,
                Err(_) => {
                    backup::kill_source_command(&job.argv());
                    Err(DaemonError::TooLong(secs))
                }
            },
            None => run.await,
        }
    }

    /// Sleeps until each scheduled time (plus jitter) and runs the job,
    /// until `stop`.
    async fn schedule(self: Arc<Self>, index: usize, stop: CancellationToken) {
        let job = &self.config.jobs[index];
        let cron = match parse_schedule(&job.schedule) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(job = %job.name, "{e}");
                return;
            }
        };
        loop {
            let now = chrono::Local::now();
            let next = match cron.find_next_occurrence(&now, false) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(job = %job.name, "no next time for {:?}: {e}; the job stops", job.schedule);
                    return;
                }
            };
            let wait = (next - now).to_std().unwrap_or_default() + jitter(job.jitter_secs);
            self.job_status(&job.name, |s| s.next_run = Some(crate::unix_now() + wait.as_secs()));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let _ = self.run_job(job).await;
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Runs until SIGTERM or SIGINT, then stops as the module says.
    pub async fn run(self: Arc<Self>) -> Result<(), DaemonError> {
        let d = &self.config.daemon;
        if self.config.jobs.is_empty() && d.socket.is_none() {
            return Err(DaemonError::NothingToDo);
        }
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Some(addr) = d.health {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Io { what: format!("binding the health endpoint on {addr}"), source })?;
            tokio::spawn(health::serve_health(self.clone(), listener));
        }
        if let Some(path) = &d.socket {
            let listener = sidecar::bind_socket(path, d.socket_mode)?;
            tracker.spawn(self.clone().accept(listener, stop.clone(), tracker.clone()));
        }
        for index in 0..self.config.jobs.len() {
            tracker.spawn(self.clone().schedule(index, stop.clone()));
        }
        tracing::info!(jobs = self.config.jobs.len(), socket = ?d.socket, health = ?d.health, "coffer daemon started");
        stop_signal().await?;
        tracing::info!("stopping: no new backups; waiting up to {}s for running ones", d.stop_timeout_secs);
        stop.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(d.stop_timeout_secs), tracker.wait()).await.is_err() {
            tracing::warn!("abandoning the backups still running: nothing of them is committed");
            backup::kill_sources();
        }
        if let Some(path) = &d.socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("coffer daemon stopped");
        Ok(())
    }
}

async fn stop_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DaemonError::Io { what, source }
    };
    let mut term = signal(SignalKind::terminate()).map_err(io("installing the SIGTERM handler"))?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.map_err(io("installing the SIGINT handler"))?,
    }
    Ok(())
}

/// The error and its causes, skipping a cause its parent already quotes.
/// `message` with the job's command line cut to its program: `/health` is
/// open to every local user, and arguments may hold a password or a
/// connection string.
pub fn redact_arguments(message: &str, argv: &[String]) -> String {
    match argv {
        [program, _, ..] => message.replace(&argv.join(" "), &format!("{program} …")),
        _ => message.to_string(),
    }
}
