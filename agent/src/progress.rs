//! A one-line progress report on stderr, only when stderr is a terminal.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

const REDRAW_EVERY: Duration = Duration::from_millis(200);

pub(crate) struct Progress {
    enabled: bool,
    start: Instant,
    last: Instant,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Progress {
    /// `wanted` is the caller's choice (e.g. not with `--json`); the line is
    /// drawn only if stderr is also a terminal, never into a pipe or log.
    pub(crate) fn new(wanted: bool) -> Self {
        let now = Instant::now();
        Self { enabled: wanted && std::io::stderr().is_terminal(), start: now, last: now }
    }

    pub(crate) fn update(&mut self, bytes_in: u64, bytes_new: u64) {
        if self.enabled && self.last.elapsed() >= REDRAW_EVERY {
            self.last = Instant::now();
            self.draw(bytes_in, bytes_new);
        }
    }

    fn draw(&self, bytes_in: u64, bytes_new: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{:.1} MiB read, {:.1} MiB/s, {:.1} MiB new, {:.1} MiB deduplicated",
            mib(bytes_in),
            mib(bytes_in) / secs,
            mib(bytes_new),
            mib(bytes_in.saturating_sub(bytes_new)),
        );
        let _ = err.flush();
    }

    pub(crate) fn finish(&mut self, bytes_in: u64, bytes_new: u64) {
        if self.enabled {
            self.draw(bytes_in, bytes_new);
            eprintln!();
        }
    }
}
