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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use coffer_proto::{RepoName, SnapshotId};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backup::{self, BackupReport, Source};
use crate::config::{AgentConfig, JobConfig};
use crate::keys::KeyProvider;
use crate::repo::OpenRepo;
use coffer_client::ProxyClient;

/// Largest frame on the socket.
pub const FRAME_MAX: usize = 1024 * 1024;
/// Longest header or reply line on the socket.
const LINE_MAX: u64 = 4096;
/// How long a sender may stay silent before its backup is abandoned.
pub const SEND_IDLE: Duration = Duration::from_secs(15 * 60);
/// Most `coffer send` streams served at once; more wait for a turn.
const SENDS_AT_ONCE: usize = 4;
/// Most senders waiting for a turn; beyond, a sender is refused at once,
/// so nobody with access to the socket can pile up connections (and file
/// descriptors) without bound.
pub const SENDERS_WAITING_MAX: usize = 16;

/// Parses a job's schedule: a cron pattern of 5 fields (or 6, seconds
/// first), or an alias such as `@daily`.
pub fn parse_schedule(pattern: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("schedule {pattern:?} is not a cron pattern: {e}"))
}

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

/// What the daemon answers on the socket, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Reply {
    /// The repository is open: send the stream.
    Ready,
    Committed {
        snapshot: SnapshotId,
        bytes_in: u64,
        bytes_new: u64,
    },
    Failed {
        error: String,
    },
}

/// The first line a sender writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendHeader {
    pub repo: RepoName,
    pub name: String,
}

pub struct Daemon {
    config: AgentConfig,
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
    async fn open_repo(&self, repo: &RepoName) -> anyhow::Result<Arc<OpenRepo>> {
        let client = ProxyClient::connect(&self.config.client).await?;
        if client.whoami().await?.mfa {
            bail!("the proxy's policy asks this identity for a TOTP code, which unattended backups cannot give");
        }
        let legacy_ok = self.config.backup.legacy_repos.contains(repo);
        Ok(Arc::new(OpenRepo::open(client, self.provider.clone(), repo.clone(), legacy_ok).await?))
    }

    /// Runs one job now (a scheduled start, or `coffer run NAME`).
    pub async fn run_job(&self, job: &JobConfig) -> anyhow::Result<BackupReport> {
        self.job_status(&job.name, |s| {
            s.running = true;
            s.last_started = Some(crate::unix_now());
        });
        tracing::info!(job = %job.name, repo = %job.repo, "backup started");
        let run = async {
            let repo = self.open_repo(&job.repo).await?;
            let in_flight = self.config.backup.uploads_in_flight;
            anyhow::Ok(backup::run(repo, Source::Command(job.argv()), job.name.clone(), in_flight, false).await?)
        };
        let result = match job.max_run_secs {
            Some(secs) => match tokio::time::timeout(std::time::Duration::from_secs(secs), run).await {
                Ok(r) => r,
                Err(_) => {
                    backup::kill_source_command(&job.argv());
                    Err(anyhow::anyhow!("the run took longer than its max_run_secs ({secs} s) and was stopped"))
                }
            },
            None => run.await,
        };
        match &result {
            Ok(r) => tracing::info!(
                job = %job.name, repo = %job.repo, snapshot = %r.id, bytes_in = r.bytes_in,
                bytes_new = r.bytes_new, seconds = r.duration_secs, "backup committed"
            ),
            Err(e) => tracing::error!(
                job = %job.name, repo = %job.repo, error = %describe(e), "backup failed; nothing was committed"
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
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(redact_arguments(&describe(e), &job.argv()));
                }
            }
        });
        result
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
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let d = &self.config.daemon;
        if self.config.jobs.is_empty() && d.socket.is_none() {
            bail!("nothing to do: the config has no [[jobs]] and no daemon.socket");
        }
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Some(addr) = d.health {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding the health endpoint on {addr}"))?;
            tokio::spawn(serve_health(self.clone(), listener));
        }
        if let Some(path) = &d.socket {
            let listener = bind_socket(path, d.socket_mode)?;
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

    async fn accept(self: Arc<Self>, listener: UnixListener, stop: CancellationToken, tracker: TaskTracker) {
        let turns = Arc::new(tokio::sync::Semaphore::new(SENDS_AT_ONCE));
        let places = Arc::new(tokio::sync::Semaphore::new(SENDS_AT_ONCE + SENDERS_WAITING_MAX));
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("accepting on the socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let uids = &self.config.daemon.socket_uids;
            if !uids.is_empty() {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !uid.is_some_and(|u| uids.contains(&u)) {
                    let e = anyhow::anyhow!(
                        "the sender runs as user id {}, which daemon.socket_uids does not list",
                        uid.map_or("unknown".into(), |u| u.to_string())
                    );
                    tracker.spawn(refuse(stream, None, e));
                    continue;
                }
            }
            let Ok(place) = places.clone().try_acquire_owned() else {
                let e = anyhow::anyhow!(
                    "{SENDS_AT_ONCE} sends are being served and {SENDERS_WAITING_MAX} are waiting; try again later"
                );
                tracker.spawn(refuse(stream, None, e));
                continue;
            };
            let (d, turns) = (self.clone(), turns.clone());
            tracker.spawn(async move {
                let _place = place;
                let Ok(_turn) = turns.acquire_owned().await else { return };
                d.serve_send(stream).await;
            });
        }
    }

    /// One `coffer send`, counted in the health answer.
    async fn serve_send(&self, stream: UnixStream) {
        self.socket_status(|s| s.running += 1);
        let committed = self.receive(stream).await;
        self.socket_status(|s| {
            s.running -= 1;
            if committed {
                s.committed += 1;
            } else {
                s.failed += 1;
            }
        });
    }

    /// Header, `Ready`, frames, then the outcome; true if committed.
    async fn receive(&self, stream: UnixStream) -> bool {
        let mut stream = tokio::io::BufReader::new(stream);
        let header = match read_header(&mut stream).await {
            Ok(h) => h,
            Err(e) => return refuse(stream.into_inner(), None, e).await,
        };
        let repo_name = header.repo.clone();
        if !self.config.daemon.socket_repos.contains(&repo_name) {
            let e = anyhow::anyhow!(
                "the socket may not write repository {repo_name} (daemon.socket_repos: {})",
                self.config.daemon.socket_repos.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            );
            return refuse(stream.into_inner(), Some(&repo_name), e).await;
        }
        let repo = match self.open_repo(&repo_name).await {
            Ok(r) => r,
            Err(e) => return refuse(stream.into_inner(), Some(&repo_name), e).await,
        };
        if !stream.buffer().is_empty() {
            let e = anyhow::anyhow!("the sender did not wait for the daemon to be ready");
            return refuse(stream.into_inner(), Some(&repo_name), e).await;
        }
        let mut stream = stream.into_inner();
        if write_line_async(&mut stream, &Reply::Ready).await.is_err() {
            return false;
        }
        // From here the backup's reader thread reads the frames.
        let (frames, mut answer) = match blocking_halves(stream) {
            Ok(halves) => halves,
            Err(e) => {
                tracing::error!(repo = %repo_name, "socket: {e}");
                return false;
            }
        };
        let source = Source::Reader {
            description: format!("socket:{}", header.name),
            reader: Box::new(FrameReader::new(frames)),
        };
        let in_flight = self.config.backup.uploads_in_flight;
        let (reply, committed) = match backup::run(repo, source, header.name.clone(), in_flight, false).await {
            Ok(r) => {
                tracing::info!(repo = %repo_name, name = %header.name, snapshot = %r.id, bytes_in = r.bytes_in,
                    bytes_new = r.bytes_new, "socket backup committed");
                (Reply::Committed { snapshot: r.id, bytes_in: r.bytes_in, bytes_new: r.bytes_new }, true)
            }
            Err(e) => {
                let error = describe(&e.into());
                tracing::error!(repo = %repo_name, name = %header.name, error = %error,
                    "socket backup failed; nothing was committed");
                (Reply::Failed { error }, false)
            }
        };
        let _ = tokio::task::spawn_blocking(move || write_line(&mut answer, &reply)).await;
        committed
    }
}

/// Answers a sender that will not be served, and logs why.
async fn refuse(mut stream: UnixStream, repo: Option<&RepoName>, e: anyhow::Error) -> bool {
    let error = describe(&e);
    tracing::error!(repo = ?repo.map(ToString::to_string), error = %error, "socket backup refused");
    let _ = write_line_async(&mut stream, &Reply::Failed { error }).await;
    false
}

/// The sender's header line (it must arrive within a minute).
async fn read_header(stream: &mut tokio::io::BufReader<UnixStream>) -> anyhow::Result<SendHeader> {
    let mut line = String::new();
    let mut limited = (&mut *stream).take(LINE_MAX);
    let read = limited.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(60), read).await.context("no header line within a minute")??;
    if !line.ends_with('\n') {
        bail!("the header line is missing or longer than {LINE_MAX} bytes");
    }
    let header: SendHeader = serde_json::from_str(&line).context("the header line is not a valid send header")?;
    if header.name.is_empty() || header.name.len() > 256 {
        bail!("the snapshot name must be 1 to 256 bytes");
    }
    Ok(header)
}

async fn write_line_async(stream: &mut UnixStream, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// The connection as two blocking halves: one for the backup's reader
/// thread (with the idle timeout), one to answer on.
fn blocking_halves(stream: UnixStream) -> io::Result<(std::os::unix::net::UnixStream, std::os::unix::net::UnixStream)> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SEND_IDLE))?;
    let answer = stream.try_clone()?;
    Ok((stream, answer))
}

/// What the daemon committed for a `coffer send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub snapshot: SnapshotId,
    pub bytes_in: u64,
    pub bytes_new: u64,
}

/// `coffer send`: streams `source` to the daemon's socket and returns what
/// it committed. If the source fails (a command exits non-zero, say), the
/// end frame is never sent, so the daemon commits nothing.
pub fn send(socket: &Path, header: &SendHeader, source: Source) -> anyhow::Result<Sent> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to the daemon's socket {}", socket.display()))?;
    let mut replies = io::BufReader::new(stream.try_clone()?);
    if let Err(e) = write_line(&mut &stream, header) {
        // A daemon that refuses a sender at once (too many waiting, a user
        // it does not serve) answers and hangs up before the header: its
        // answer says why, the broken pipe does not.
        if let Ok(Reply::Failed { error }) = read_reply(&mut replies) {
            bail!("the daemon refused the backup: {error}");
        }
        return Err(anyhow::Error::new(e).context("sending the header"));
    }
    match read_reply(&mut replies)? {
        Reply::Ready => {}
        Reply::Failed { error } => bail!("the daemon refused the backup: {error}"),
        other => bail!("the daemon answered {other:?} before the stream"),
    }
    let mut frames = io::BufWriter::with_capacity(FRAME_MAX / 4, FrameWriter(&stream));
    let streamed = match source {
        Source::Stdin => io::copy(&mut io::stdin().lock(), &mut frames).context("sending stdin").map(drop),
        Source::File(path) => std::fs::File::open(&path)
            .with_context(|| format!("opening {}", path.display()))
            .and_then(|mut f| io::copy(&mut f, &mut frames).with_context(|| format!("sending {}", path.display())))
            .map(drop),
        Source::Command(argv) => send_command(&argv, &mut frames),
        Source::Reader { description, mut reader } => {
            io::copy(&mut reader, &mut frames).with_context(|| format!("sending {description}")).map(drop)
        }
    };
    let ended = streamed.and_then(|()| {
        let frames = frames.into_inner().map_err(|e| e.into_error()).context("sending the stream")?;
        frames.finish().context("ending the stream")?;
        Ok(())
    });
    if let Err(e) = ended {
        // Without the end frame the daemon commits nothing; its answer may
        // say more (why it stopped reading, say).
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let daemon = match read_reply(&mut replies) {
            Ok(Reply::Failed { error }) => format!(" (the daemon: {error})"),
            _ => String::new(),
        };
        bail!("{}; nothing was committed{daemon}", describe(&e));
    }
    match read_reply(&mut replies)? {
        Reply::Committed { snapshot, bytes_in, bytes_new } => Ok(Sent { snapshot, bytes_in, bytes_new }),
        Reply::Failed { error } => bail!("the daemon could not commit the backup: {error}"),
        Reply::Ready => bail!("the daemon answered ready twice"),
    }
}

/// Sends a command's stdout; an error unless it exits 0.
fn send_command(argv: &[String], frames: &mut impl Write) -> anyhow::Result<()> {
    let command = argv.join(" ");
    let mut child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{command}`"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let copied = io::copy(&mut stdout, frames);
    if copied.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().with_context(|| format!("waiting for `{command}`"))?;
    copied.context("sending the stream")?;
    if !status.success() {
        bail!("`{command}` {}", crate::backup::describe_status(status));
    }
    Ok(())
}

fn read_reply(r: &mut impl io::BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    io::BufRead::read_line(&mut r.take(LINE_MAX), &mut line).context("reading the daemon's answer")?;
    if line.is_empty() {
        bail!("the daemon closed the connection without an answer");
    }
    serde_json::from_str(&line).with_context(|| format!("the daemon's answer is not understood: {line:?}"))
}

/// Up to `max_secs` of random delay.
fn jitter(max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let mut r = [0u8; 8];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    Duration::from_millis(u64::from_le_bytes(r) % (max_secs * 1000))
}

async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("installing the SIGINT handler")?,
    }
    Ok(())
}

/// Binds the socket, replacing a stale socket file (a daemon that did not
/// stop cleanly) but nothing else, and sets its mode.
fn bind_socket(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).with_context(|| format!("removing the old socket {}", path.display()))?
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

async fn serve_health(daemon: Arc<Daemon>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!("accepting on the health endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let d = d.clone();
                async move {
                    let (status, body) = if req.method() == hyper::Method::GET && req.uri().path() == "/health" {
                        (hyper::StatusCode::OK, serde_json::to_vec(&d.health()).unwrap_or_default())
                    } else {
                        (hyper::StatusCode::NOT_FOUND, b"{\"error\":\"GET /health\"}".to_vec())
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

/// The error and its causes, skipping a cause its parent already quotes.
/// `message` with the job's command line cut to its program: `/health` is
/// open to every local user, and arguments may hold a password or a
/// connection string.
fn redact_arguments(message: &str, argv: &[String]) -> String {
    match argv {
        [program, _, ..] => message.replace(&argv.join(" "), &format!("{program} …")),
        _ => message.to_string(),
    }
}

pub fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

fn write_line(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads the socket's frames as one stream: `u32 (big-endian) length ||
/// bytes`, until a zero-length frame. A stream that stops before that frame
/// is an error, so an incomplete backup is never committed.
pub struct FrameReader<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, left: 0, done: false }
    }
}

fn cut_short() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the sender stopped before the end of its stream")
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            let mut len = [0u8; 4];
            self.inner.read_exact(&mut len).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => cut_short(),
                _ => e,
            })?;
            let n = u32::from_be_bytes(len) as usize;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            if n > FRAME_MAX {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {n} bytes is too large")));
            }
            self.left = n;
        }
        let want = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            return Err(cut_short());
        }
        self.left -= got;
        Ok(got)
    }
}

/// Writes each `write` as one frame (at most [`FRAME_MAX`] bytes); wrap it
/// in a `BufWriter` for frames of a useful size. [`FrameWriter::finish`]
/// writes the end frame.
pub struct FrameWriter<W: Write>(pub W);

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(FRAME_MAX);
        if n == 0 {
            return Ok(0);
        }
        self.0.write_all(&(n as u32).to_be_bytes())?;
        self.0.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> FrameWriter<W> {
    pub fn finish(mut self) -> io::Result<W> {
        self.0.write_all(&0u32.to_be_bytes())?;
        self.0.flush()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_stream_is_an_error() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = io::BufWriter::with_capacity(70_000, FrameWriter(Vec::new()));
        w.write_all(&data).unwrap();
        let wire = w.into_inner().map_err(|e| e.into_error()).unwrap().finish().unwrap();
        let mut back = Vec::new();
        FrameReader::new(&wire[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        for cut in [0, 3, 4, 100, wire.len() - 4, wire.len() - 1] {
            let err = FrameReader::new(&wire[..cut]).read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
        let huge = ((FRAME_MAX + 1) as u32).to_be_bytes();
        assert_eq!(FrameReader::new(&huge[..]).read(&mut [0; 8]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn schedules() {
        assert!(parse_schedule("0 2 * * *").is_ok());
        assert!(parse_schedule("*/2 * * * * *").is_ok(), "seconds first");
        assert!(parse_schedule("@daily").is_ok());
        assert!(parse_schedule("0 2 * *").unwrap_err().contains("not a cron pattern"));
        assert!(parse_schedule("61 * * * *").is_err());
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        assert_eq!(jitter(0), Duration::ZERO);
        assert!((0..200).all(|_| jitter(3) < Duration::from_secs(3)));
    }
}
