//! The sidecar socket's wire format (docs/SPEC.md, "Sidecar socket"): a
//! JSON header line, JSON reply lines, and the stream in length-prefixed
//! frames ending with an empty one, so a sender that dies half way is told
//! apart from one that finished.

use std::io::{self, Read, Write};

use coffer_proto::{RepoName, SnapshotId};
use serde::{Deserialize, Serialize};

/// Largest frame on the socket.
pub const FRAME_MAX: usize = 1024 * 1024;
/// Longest header or reply line on the socket.
pub(crate) const LINE_MAX: u64 = 4096;

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

pub(crate) fn write_line(w: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
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
}
