//! What can go wrong in the daemon and in `coffer send`, and the one way
//! both are told to a person or a log.

use std::io;

use coffer_client::ClientError;

use crate::backup::{BackupError, CommandError};
use crate::repo::RepoError;

/// Why a scheduled job, a socket backup, or the daemon itself failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("the proxy's policy asks this identity for a TOTP code, which unattended backups cannot give")]
    NeedsMfa,
    #[error(transparent)]
    Hook(#[from] super::hooks::HookError),
    #[error("the run took longer than its max_run_secs ({0} s) and was stopped")]
    TooLong(u64),
    #[error("nothing to do: the config has no [[jobs]] and no daemon.socket")]
    NothingToDo,
    /// A local resource: the socket, the health endpoint, a signal handler.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// A sender that will not be served, and why.
    #[error("{0}")]
    Refused(String),
}

/// Why `coffer send` got nothing committed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Command(CommandError),
    #[error("the daemon refused the backup: {0}")]
    Refused(String),
    #[error("the daemon could not commit the backup: {0}")]
    Failed(String),
    /// The stream did not reach its end; the daemon's word on it, if any.
    #[error("{source}; nothing was committed{}", daemon.as_ref().map(|d| format!(" (the daemon: {d})")).unwrap_or_default())]
    Incomplete { source: Box<SendError>, daemon: Option<String> },
    #[error("{0}")]
    Protocol(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> SendError {
    let what = what.into();
    move |source| SendError::Io { what, source }
}

/// The error and its causes, skipping a cause its parent already quotes.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        cause = c.source();
    }
    msg
}
