//! `coffer send`: the application side of the sidecar socket.

use std::io::{self, Read, Write};
use std::path::Path;

use coffer_proto::SnapshotId;

use super::error::{io, SendError};
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
pub fn send(socket: &Path, header: &SendHeader, source: Source) -> Result<Sent, SendError> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(io(format!("connecting to the daemon's socket {}", socket.display())))?;
    let mut replies = io::BufReader::new(stream.try_clone().map_err(io("the socket"))?);
    if let Err(e) = write_line(&mut &stream, header) {
        // A daemon that refuses a sender at once (too many waiting, a user
        // it does not serve) answers and hangs up before the header: its
        // answer says why, the broken pipe does not.
        if let Ok(Reply::Failed { error }) = read_reply(&mut replies) {
            return Err(SendError::Refused(error));
        }
        return Err(io("sending the header")(e));
    }
    match read_reply(&mut replies)? {
        Reply::Ready => {}
        Reply::Failed { error } => return Err(SendError::Refused(error)),
        other => return Err(SendError::Protocol(format!("the daemon answered {other:?} before the stream"))),
    }
    let mut frames = io::BufWriter::with_capacity(FRAME_MAX / 4, FrameWriter(&stream));
    let streamed = match source {
        Source::Stdin => io::copy(&mut io::stdin().lock(), &mut frames).map_err(io("sending stdin")).map(drop),
        Source::File(path) => std::fs::File::open(&path)
            .map_err(io(format!("opening {}", path.display())))
            .and_then(|mut f| io::copy(&mut f, &mut frames).map_err(io(format!("sending {}", path.display()))))
            .map(drop),
        Source::Command(argv) => send_command(&argv, &mut frames),
        Source::Reader { description, mut reader } => {
            io::copy(&mut reader, &mut frames).map_err(io(format!("sending {description}"))).map(drop)
        }
    };
    let ended = streamed.and_then(|()| {
        let frames = frames.into_inner().map_err(|e| io("sending the stream")(e.into_error()))?;
        frames.finish().map_err(io("ending the stream"))?;
        Ok(())
    });
    if let Err(e) = ended {
        // Without the end frame the daemon commits nothing; its answer may
        // say more (why it stopped reading, say).
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let daemon = match read_reply(&mut replies) {
            Ok(Reply::Failed { error }) => Some(error),
            _ => None,
        };
        return Err(SendError::Incomplete { source: Box::new(e), daemon });
    }
    match read_reply(&mut replies)? {
        Reply::Committed { snapshot, bytes_in, bytes_new } => Ok(Sent { snapshot, bytes_in, bytes_new }),
        Reply::Failed { error } => Err(SendError::Failed(error)),
        Reply::Ready => Err(SendError::Protocol("the daemon answered ready twice".into())),
    }
}

/// Sends a command's stdout; an error unless it exits 0.
fn send_command(argv: &[String], frames: &mut impl Write) -> Result<(), SendError> {
    match run_command(argv, |mut stdout| io::copy(&mut stdout, frames)) {
        Ok(_) => Ok(()),
        Err(CommandError::Read(e)) => Err(io("sending the stream")(e)),
        Err(e) => Err(SendError::Command(e)),
    }
}

fn read_reply(r: &mut impl io::BufRead) -> Result<Reply, SendError> {
    let mut line = String::new();
    io::BufRead::read_line(&mut r.take(LINE_MAX), &mut line).map_err(io("reading the daemon's answer"))?;
    if line.is_empty() {
        return Err(SendError::Protocol("the daemon closed the connection without an answer".into()));
    }
    serde_json::from_str(&line)
        .map_err(|e| SendError::Protocol(format!("the daemon's answer is not understood ({e}): {line:?}")))
}
