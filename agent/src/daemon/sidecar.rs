//! Sidecar mode: backups streamed by `coffer send` over a Unix socket, so an
//! application container can back up without holding a certificate or a
//! key. At most `SENDS_AT_ONCE` are served, `SENDERS_WAITING_MAX` wait.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::RepoName;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frames::{write_line, FrameReader, Reply, SendHeader, LINE_MAX};
use super::{describe, Daemon, DaemonError};
use crate::backup::{self, Source};

/// How long a sender may stay silent before its backup is abandoned.
pub const SEND_IDLE: Duration = Duration::from_secs(15 * 60);
/// Most `coffer send` streams served at once; more wait for a turn.
const SENDS_AT_ONCE: usize = 4;
/// Most senders waiting for a turn; beyond, a sender is refused at once,
/// so nobody with access to the socket can pile up connections (and file
/// descriptors) without bound.
pub const SENDERS_WAITING_MAX: usize = 16;

impl Daemon {
    pub(super) async fn accept(self: Arc<Self>, listener: UnixListener, stop: CancellationToken, tracker: TaskTracker) {
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
                    let e = DaemonError::Refused(format!(
                        "the sender runs as user id {}, which daemon.socket_uids does not list",
                        uid.map_or("unknown".into(), |u| u.to_string())
                    ));
                    tracker.spawn(refuse(stream, None, e));
                    continue;
                }
            }
            let Ok(place) = places.clone().try_acquire_owned() else {
                let e = DaemonError::Refused(format!(
                    "{SENDS_AT_ONCE} sends are being served and {SENDERS_WAITING_MAX} are waiting; try again later"
                ));
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
            let e = DaemonError::Refused(format!(
                "the socket may not write repository {repo_name} (daemon.socket_repos: {})",
                self.config.daemon.socket_repos.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ));
            return refuse(stream.into_inner(), Some(&repo_name), e).await;
        }
        let limits = crate::limit::Limits::new(self.config.backup.limit_upload_kib, None);
        let repo = match self.open_repo(&repo_name, limits).await {
            Ok(r) => r,
            Err(e) => return refuse(stream.into_inner(), Some(&repo_name), e).await,
        };
        if !stream.buffer().is_empty() {
            let e = DaemonError::Refused("the sender did not wait for the daemon to be ready".into());
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
        let (reply, committed) = match backup::run(
            repo,
            source,
            header.name.clone(),
            in_flight,
            crate::progress::ProgressMode::None,
        )
        .await
        {
            Ok(r) => {
                tracing::info!(repo = %repo_name, name = %header.name, snapshot = %r.id, bytes_in = r.bytes_in,
                    bytes_new = r.bytes_new, "socket backup committed");
                (Reply::Committed { snapshot: r.id, bytes_in: r.bytes_in, bytes_new: r.bytes_new }, true)
            }
            Err(e) => {
                let error = describe(&DaemonError::from(e));
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
async fn refuse(mut stream: UnixStream, repo: Option<&RepoName>, e: DaemonError) -> bool {
    let error = describe(&e);
    let repo = repo.map_or_else(String::new, ToString::to_string);
    tracing::error!(repo = %repo, error = %error, "socket backup refused");
    let _ = write_line_async(&mut stream, &Reply::Failed { error }).await;
    false
}

/// The sender's header line (it must arrive within a minute).
async fn read_header(stream: &mut tokio::io::BufReader<UnixStream>) -> Result<SendHeader, DaemonError> {
    let mut line = String::new();
    let mut limited = (&mut *stream).take(LINE_MAX);
    let read = limited.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(60), read).await {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => return Err(DaemonError::Io { what: "reading the header line".into(), source }),
        Err(_) => return Err(DaemonError::Refused("no header line within a minute".into())),
    }
    parse_header(&line)
}

/// A sender's header line, newline included, checked.
pub(crate) fn parse_header(line: &str) -> Result<SendHeader, DaemonError> {
    if !line.ends_with('\n') {
        return Err(DaemonError::Refused(format!("the header line is missing or longer than {LINE_MAX} bytes")));
    }
    let header: SendHeader = serde_json::from_str(line)
        .map_err(|e| DaemonError::Refused(format!("the header line is not a valid send header: {e}")))?;
    if header.name.is_empty() || header.name.len() > 256 {
        return Err(DaemonError::Refused("the snapshot name must be 1 to 256 bytes".into()));
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

/// Binds the socket, replacing a stale socket file (a daemon that did not
/// stop cleanly) but nothing else, and sets its mode.
pub(super) fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    let io = |what: String| move |source| DaemonError::Io { what, source };
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io(format!("removing the old socket {}", path.display())))?
        }
        Ok(_) => {
            return Err(DaemonError::Refused(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("checking {}", path.display()))(e)),
    }
    let listener = UnixListener::bind(path).map_err(io(format!("binding the socket {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    Ok(listener)
}
