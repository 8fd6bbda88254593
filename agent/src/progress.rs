//! Progress of a backup, restore or verify on stderr: a line redrawn five
//! times a second on a terminal, or (`--progress json`, for scripts) one JSON
//! object a second, as restic's `--json` status lines. Never on stdout,
//! which carries the stream or the result (docs/operations.md, "Progress").

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How progress is shown, as `--progress` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// A line on a terminal; nothing when stderr is not one.
    #[default]
    Auto,
    /// One JSON object a second on stderr, terminal or not.
    Json,
    /// Nothing.
    None,
}

/// What is being done, as the line and the JSON `action` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Backup,
    Restore,
    Verify,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    Off,
    Line,
    Json,
}

/// One JSON progress line.
#[derive(Serialize)]
struct Status<'a> {
    message_type: &'static str,
    action: Action,
    seconds_elapsed: f64,
    bytes_done: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_bytes: Option<u64>,
    /// 0 to 1, as restic's.
    #[serde(skip_serializing_if = "Option::is_none")]
    percent_done: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds_remaining: Option<u64>,
    /// Backup: stream bytes not deduplicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_new: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<&'a str>,
    /// Verify: snapshots finished, and how many are to be checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots_done: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots_total: Option<usize>,
}

pub struct Progress {
    shown: Shown,
    action: Action,
    start: Instant,
    last: Option<Instant>,
    total: Option<u64>,
    done: u64,
    new: Option<u64>,
    snapshot: Option<String>,
    /// (done, total) snapshots, for verify.
    of: Option<(usize, usize)>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Progress {
    pub fn new(mode: ProgressMode, action: Action) -> Self {
        let shown = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => Shown::Line,
            ProgressMode::Json => Shown::Json,
            _ => Shown::Off,
        };
        Self {
            shown,
            action,
            start: Instant::now(),
            last: None,
            total: None,
            done: 0,
            new: None,
            snapshot: None,
            of: None,
        }
    }

    /// Names the snapshot worked on; for verify, `of` is how many are done
    /// and how many are to be checked.
    pub fn snapshot(&mut self, id: &str, of: Option<(usize, usize)>) {
        self.snapshot = Some(id.to_string());
        self.of = of;
    }

    /// `total` bytes are to be restored or checked: the counts start again.
    pub fn total(&mut self, total: u64) {
        self.total = Some(total);
        self.done = 0;
        self.start = Instant::now();
        self.last = None;
    }

    /// Backup's counts: stream bytes read and those not deduplicated.
    pub fn update_backup(&mut self, bytes_in: u64, bytes_new: u64) {
        self.new = Some(bytes_new);
        self.set(bytes_in);
    }

    /// Backup's final counts, drawn once more.
    pub fn finish_backup(&mut self, bytes_in: u64, bytes_new: u64) {
        self.new = Some(bytes_new);
        self.done = bytes_in;
        self.finish();
    }

    /// `bytes` more restored or checked.
    pub fn add(&mut self, bytes: u64) {
        self.set(self.done + bytes);
    }

    fn set(&mut self, done: u64) {
        self.done = done;
        let every = match self.shown {
            Shown::Off => return,
            Shown::Line => Duration::from_millis(200),
            Shown::Json => Duration::from_secs(1),
        };
        if self.last.is_none_or(|t| t.elapsed() >= every) {
            self.last = Some(Instant::now());
            self.draw();
        }
    }

    /// The last state, drawn once more (and the line ended).
    pub fn finish(&mut self) {
        if self.shown != Shown::Off {
            self.draw();
            if self.shown == Shown::Line {
                eprintln!();
            }
        }
    }

    fn draw(&self) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let remaining = self
            .total
            .filter(|&t| rate > 0.0 && self.done < t)
            .map(|t| (t.saturating_sub(self.done) as f64 / rate).ceil() as u64);
        let fraction = self.total.map(|t| if t == 0 { 1.0 } else { (self.done as f64 / t as f64).min(1.0) });
        let mut err = std::io::stderr().lock();
        match self.shown {
            Shown::Off => {}
            Shown::Json => {
                let status = Status {
                    message_type: "status",
                    action: self.action,
                    seconds_elapsed: (secs * 1000.0).round() / 1000.0,
                    bytes_done: self.done,
                    total_bytes: self.total,
                    percent_done: fraction.map(|f| (f * 10_000.0).round() / 10_000.0),
                    seconds_remaining: remaining,
                    bytes_new: self.new,
                    snapshot: self.snapshot.as_deref(),
                    snapshots_done: self.of.map(|o| o.0),
                    snapshots_total: self.of.map(|o| o.1),
                };
                if let Ok(line) = serde_json::to_string(&status) {
                    let _ = writeln!(err, "{line}");
                }
            }
            Shown::Line => {
                let line = match (self.action, self.total, self.new) {
                    (Action::Backup, _, new) => {
                        let new = new.unwrap_or(0);
                        format!(
                            "{:.1} MiB read, {:.1} MiB/s, {:.1} MiB new, {:.1} MiB deduplicated",
                            mib(self.done),
                            mib(self.done) / secs,
                            mib(new),
                            mib(self.done.saturating_sub(new)),
                        )
                    }
                    (action, total, _) => {
                        let verb = if action == Action::Restore { "restored" } else { "checked" };
                        let which = match self.of {
                            Some((done, of)) => format!("snapshot {} of {of}: ", done + 1),
                            None => String::new(),
                        };
                        let eta = remaining.map(|s| format!(", {s} s left")).unwrap_or_default();
                        format!(
                            "{which}{:.1} of {:.1} MiB {verb} ({:.0}%), {:.1} MiB/s{eta}",
                            mib(self.done),
                            mib(total.unwrap_or(0)),
                            fraction.unwrap_or(0.0) * 100.0,
                            mib(self.done) / secs,
                        )
                    }
                };
                let _ = write!(err, "\r\x1b[K{line}");
            }
        }
        let _ = err.flush();
    }
}
