//! Runs a program as a benchmark step: wall time, CPU and peak memory.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;

/// How often a running program's /proc entry is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

pub struct Timed {
    /// What it printed (empty when fed to a sink).
    pub stdout: Vec<u8>,
    pub secs: f64,
    pub usage: procfs::Sample,
}

/// Runs `cmd` with stdin from `stdin` (or nothing), watching its CPU and
/// memory. Its stdout is kept, or fed to `sink` when given; a non-zero exit
/// is an error carrying its stderr.
pub fn timed(cmd: &mut Command, stdin: Option<&Path>, sink: Option<&mut blake3::Hasher>) -> Result<Timed, String> {
    let input = match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Stdio::null(),
    };
    let started = Instant::now();
    let mut child = cmd
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let watcher = std::thread::spawn(move || procfs::watch(pid, SAMPLE_EVERY));
    let mut out = Vec::new();
    let read = match sink {
        Some(h) => h.update_reader(&mut stdout).map(|_| ()),
        None => stdout.read_to_end(&mut out).map(|_| ()),
    };
    drop(stdout); // should reading have failed, the program gets EPIPE instead of blocking
    let usage = watcher.join().map_err(|_| "the sampler panicked")?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    read.map_err(|e| format!("{:?}: reading its output: {e}", cmd.get_program()))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status}): {}", errors.join().unwrap_or_default().trim()));
    }
    Ok(Timed { stdout: out, secs, usage })
}
