//! Where a backup stream comes from, and reading it whole.

use std::io::{self, Read};
use std::path::PathBuf;

use tokio::sync::mpsc;

use super::command::{run_command, CommandError};
use super::stream::Chunk;
use super::stream::{chunk_stream, StreamSummary};
use super::BackupError;
use crate::repo::OpenRepo;

/// Where the backup stream comes from.
pub enum Source {
    Stdin,
    File(PathBuf),
    /// A command whose stdout is the stream; it must exit 0.
    Command(Vec<String>),
    /// Any reader (a `coffer send` over the daemon's socket): it must end
    /// with `Ok(0)`; an error means the stream is incomplete.
    Reader {
        description: String,
        reader: Box<dyn Read + Send>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// How the snapshot root records the source.
    pub fn describe(&self) -> String {
        match self {
            Source::Stdin => "stdin".into(),
            Source::File(p) => format!("file:{}", p.display()),
            Source::Command(argv) => format!("command:{}", argv.join(" ")),
            Source::Reader { description, .. } => description.clone(),
        }
    }
}

/// Reads the whole source on the calling thread. For a command, waits for it
/// and reports its exit status; if the pipeline stops early, kills it.
pub(super) fn read_source(
    source: Source,
    repo: &OpenRepo,
    tx: mpsc::Sender<Chunk>,
) -> Result<StreamSummary, BackupError> {
    match source {
        Source::Stdin => chunk_stream(io::stdin(), repo, &tx).map_err(BackupError::Source),
        Source::File(path) => {
            let f = std::fs::File::open(&path)
                .map_err(|e| BackupError::Source(io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
            chunk_stream(f, repo, &tx).map_err(BackupError::Source)
        }
        Source::Reader { reader, .. } => chunk_stream(reader, repo, &tx).map_err(BackupError::Source),
        Source::Command(argv) => run_command(&argv, |stdout| chunk_stream(stdout, repo, &tx)).map_err(|e| match e {
            CommandError::Read(e) => BackupError::Source(e),
            e => BackupError::Command(e),
        }),
    }
}
