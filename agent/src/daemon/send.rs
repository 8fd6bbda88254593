//! `coffer send`: the application side of the sidecar socket.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _};
use coffer_proto::SnapshotId;

use super::describe;
use super::frames::{write_line, FrameWriter, Reply, SendHeader, FRAME_MAX, LINE_MAX};
use crate::backup::command::{run_command, CommandError};
use crate::backup::Source;

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
    match run_command(argv, |mut stdout| io::copy(&mut stdout, frames)) {
        Ok(_) => Ok(()),
        Err(CommandError::Read(e)) => Err(anyhow::Error::new(e).context("sending the stream")),
        Err(e) => Err(e.into()),
    }
}

fn read_reply(r: &mut impl io::BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    io::BufRead::read_line(&mut r.take(LINE_MAX), &mut line).context("reading the daemon's answer")?;
    if line.is_empty() {
        bail!("the daemon closed the connection without an answer");
    }
    serde_json::from_str(&line).with_context(|| format!("the daemon's answer is not understood: {line:?}"))
}
