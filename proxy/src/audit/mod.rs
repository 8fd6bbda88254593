//! The audit log: one JSON line per request and per security decision,
//! each carrying the BLAKE3 hash of the line before it.
//!
//! A dedicated thread owns the file. Callers send events down a bounded
//! channel; the thread writes whatever has queued up in one go and, if any
//! of it is for a mutating request, fsyncs once before acknowledging them
//! all (group commit: durable without one fsync per request).
//!
//! Line format: the event's JSON with fields in a fixed order and `prev`
//! (the previous line's hash) last, then `,"hash":"<hex>"}`, where hash =
//! BLAKE3 of the line up to and including `prev`'s value plus the closing
//! `}` (that is, the line as it would be without the `hash` field).
//!
//! The live file is sealed into a segment every `segment_events` events or
//! `segment_secs` seconds: the lines, then a seal line carrying their
//! BLAKE3, the seq range, the chain hashes at both ends and an Ed25519
//! signature by the proxy's audit key ([`segment`]). Sealed segments are
//! shipped to the object store under `audit/<proxy-id>/` with Object Lock
//! ([`ship`]); [`verify`] finds the first broken link anywhere.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub mod checkpoint;
pub mod segment;
pub mod ship;
pub mod verify;

pub use verify::{verify, ChainBreak, Report};

/// Events queued for the writer thread before senders wait.
pub const AUDIT_QUEUE: usize = 4096;
/// The `prev` of the first event of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Events per sealed segment, unless configured.
pub const DEFAULT_SEGMENT_EVENTS: u64 = 10_000;
/// Seconds before a non-empty live file is sealed, unless configured.
pub const DEFAULT_SEGMENT_SECS: u64 = 3600;
/// Default `audit.checkpoint_secs`: how much of the newest trail root on
/// the proxy host can cut off unnoticed, besides the shipping interval.
pub const DEFAULT_CHECKPOINT_SECS: u64 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Denied,
    Invalid,
    NotFound,
    Conflict,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::NotFound => "not-found",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// What a handler knows about an event; the log adds seq, time and chain.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    pub identity: Option<String>,
    pub trust_domain: Option<String>,
    pub peer: String,
    pub action: &'static str,
    pub repo: Option<String>,
    pub object: Option<String>,
    pub bytes: u64,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
}

/// A recorded event, as one line of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    pub time_ms: u64,
    pub proxy: String,
    pub identity: Option<String>,
    pub trust_domain: Option<String>,
    pub peer: String,
    pub action: String,
    pub repo: Option<String>,
    pub object: Option<String>,
    pub bytes: u64,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// Why an event could not be recorded (the request it belongs to is not
/// acknowledged).
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log unavailable: the writer stopped")]
    WriterStopped,
    /// Writing or syncing the log failed; the I/O error's text, as every
    /// request of the batch is told.
    #[error("audit log unavailable: {0}")]
    Write(String),
}

/// Where and how the log is kept.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The live file; sealed segments go to `sealed/` beside it.
    pub path: PathBuf,
    pub segment_events: u64,
    pub segment_secs: u64,
    /// A checkpoint of the newest event at most this often (0: none).
    pub checkpoint_secs: u64,
    /// The Ed25519 key (PKCS#8, 0600) that signs seals; made on first use.
    pub signing_key: PathBuf,
}

impl SpoolConfig {
    pub fn sealed_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join("sealed")
    }
}

/// Tells a waiting request whether its event is on disk.
type Ack = oneshot::Sender<Result<(), AuditError>>;

enum Msg {
    Event {
        draft: Draft,
        durable: bool,
        ack: Ack,
    },
    /// Seal if the live file is old enough.
    Tick,
}

/// The handle requests use. Dropping every clone stops the writer after it
/// has flushed what was queued.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

/// Joins the writer thread at shutdown.
pub struct AuditWriter(std::thread::JoinHandle<()>);

impl AuditWriter {
    pub fn join(self) {
        let _ = self.0.join();
    }
}

/// Hashes a line body (the event without `hash`).
fn chain_hash(body: &str) -> String {
    blake3::hash(body.as_bytes()).to_hex().to_string()
}

/// Renders an event with its hash as one line (without the newline).
pub(crate) fn render(event: &Event) -> (String, String) {
    let body = serde_json::to_string(&Event { hash: String::new(), ..event.clone() }).expect("events serialise");
    let hash = chain_hash(&body);
    let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    (line, hash)
}

impl AuditLog {
    /// Opens (or creates) the log, resumes its chain after the last sealed
    /// segment and the live file, and starts the writer thread.
    pub fn open(cfg: &SpoolConfig, proxy_id: &str) -> std::io::Result<(Self, AuditWriter)> {
        let spool = Spool::open(cfg, proxy_id)?;
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let thread = std::thread::Builder::new().name("audit-writer".into()).spawn(move || spool.run(rx))?;
        Ok((Self { tx }, AuditWriter(thread)))
    }

    /// Records an event. With `durable`, returns only once it is fsync'd.
    pub async fn record(&self, draft: Draft, durable: bool) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Msg::Event { draft, durable, ack }).await.map_err(|_| AuditError::WriterStopped)?;
        if !durable {
            return Ok(());
        }
        done.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Lets the writer seal the live file if it has grown old.
    pub fn tick(&self) {
        let _ = self.tx.try_send(Msg::Tick);
    }

    /// Events queued and not yet written.
    pub fn backlog(&self) -> usize {
        AUDIT_QUEUE - self.tx.capacity()
    }
}

/// The writer thread's state: the live file and where the chain stands.
struct Spool {
    cfg: SpoolConfig,
    proxy: String,
    file: File,
    key: aws_lc_rs::signature::Ed25519KeyPair,
    seq: u64,
    prev: String,
    /// First event of the live file: (seq, time, prev), if any.
    live_first: Option<(u64, u64, String)>,
    live_count: u64,
    /// The newest checkpoint written: (seq, unix ms).
    checkpointed: (u64, u64),
}

/// Reads an audit signing key, or makes one (0600) on first use.
pub fn signing_key(path: &Path) -> std::io::Result<aws_lc_rs::signature::Ed25519KeyPair> {
    use aws_lc_rs::signature::Ed25519KeyPair;
    use std::os::unix::fs::OpenOptionsExt as _;
    let bad = |e: String| std::io::Error::other(format!("audit signing key {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(der) => Ed25519KeyPair::from_pkcs8(&der).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let der = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
                .map_err(|e| bad(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(der.as_ref())?;
            f.sync_all()?;
            let key = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|e| bad(e.to_string()))?;
            use aws_lc_rs::signature::KeyPair as _;
            std::fs::write(path.with_extension("pub"), hex::encode(key.public_key().as_ref()) + "\n")?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

impl Spool {
    fn open(cfg: &SpoolConfig, proxy: &str) -> std::io::Result<Self> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::create_dir_all(cfg.sealed_dir())?;
        let key = signing_key(&cfg.signing_key)?;
        let (mut seq, mut prev) = (0, GENESIS.to_string());
        if let Some(last) = segment::last_sealed(&cfg.sealed_dir())? {
            (seq, prev) = (last.last_seq, last.last_hash);
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&cfg.path)?;
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut text)?;
        // Keep only complete lines not sealed yet: a crash may have left a
        // torn last line, or the lines of a segment sealed just before it.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let mut keep = String::new();
        let (mut live_first, mut live_count) = (None, 0);
        for line in text[..complete].lines() {
            let e: Event = serde_json::from_str(line).map_err(|err| {
                std::io::Error::other(format!("audit log {}: unreadable line: {err}", cfg.path.display()))
            })?;
            if e.seq <= seq {
                continue;
            }
            live_first.get_or_insert((e.seq, e.time_ms, e.prev.clone()));
            live_count += 1;
            (seq, prev) = (e.seq, e.hash.clone());
            keep.push_str(line);
            keep.push('\n');
        }
        if keep.len() != text.len() {
            file.set_len(0)?;
            file.write_all(keep.as_bytes())?;
            file.sync_all()?;
        }
        let checkpointed = (0, 0);
        Ok(Self {
            cfg: cfg.clone(),
            proxy: proxy.to_string(),
            file,
            key,
            seq,
            prev,
            live_first,
            live_count,
            checkpointed,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                if let Msg::Event { draft, durable, ack } = m {
                    batch.push((draft, durable, ack));
                }
                if batch.len() < AUDIT_QUEUE {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                let result = self.append(&batch);
                for (_, _, ack) in batch {
                    let _ = ack.send(result.clone());
                }
            }
            if let Err(e) = self.maybe_seal() {
                tracing::error!("sealing the audit log failed (will retry): {e}");
            }
            if let Err(e) = self.maybe_checkpoint(false) {
                tracing::error!("writing an audit checkpoint failed (will retry): {e}");
            }
        }
        let _ = self.file.sync_all();
        // The last events too, for the shipping at shutdown.
        if let Err(e) = self.maybe_checkpoint(true) {
            tracing::error!("writing the last audit checkpoint failed: {e}");
        }
    }

    /// Writes a batch; one fsync if any event in it must be durable.
    fn append(&mut self, batch: &[(Draft, bool, Ack)]) -> Result<(), AuditError> {
        let (seq0, prev0, first0, count0) = (self.seq, self.prev.clone(), self.live_first.clone(), self.live_count);
        let mut out = String::new();
        for (d, _, _) in batch {
            self.seq += 1;
            let event = Event {
                seq: self.seq,
                time_ms: crate::unix_now_ms(),
                proxy: self.proxy.clone(),
                identity: d.identity.clone(),
                trust_domain: d.trust_domain.clone(),
                peer: d.peer.clone(),
                action: d.action.to_string(),
                repo: d.repo.clone(),
                object: d.object.clone(),
                bytes: d.bytes,
                outcome: d.outcome.unwrap_or(Outcome::Ok),
                reason: d.reason.clone(),
                prev: self.prev.clone(),
                hash: String::new(),
            };
            self.live_first.get_or_insert((event.seq, event.time_ms, event.prev.clone()));
            self.live_count += 1;
            let (line, hash) = render(&event);
            out.push_str(&line);
            out.push('\n');
            self.prev = hash;
        }
        let len_before = self.file.metadata().map(|m| m.len()).ok();
        let durable = batch.iter().any(|(_, d, _)| *d);
        let result = self
            .file
            .write_all(out.as_bytes())
            .and_then(|()| if durable { self.file.sync_data() } else { Ok(()) })
            .map_err(|e| AuditError::Write(e.to_string()));
        if let Err(e) = &result {
            tracing::error!("{e}");
            // Keep the chain whole: forget this batch on disk and in memory.
            if let Some(len) = len_before {
                let _ = self.file.set_len(len);
            }
            (self.seq, self.prev, self.live_first, self.live_count) = (seq0, prev0, first0, count0);
        }
        result
    }

    /// Writes a checkpoint of the newest event if there are events since
    /// the last one and `checkpoint_secs` have passed, or `now` (shipped
    /// with the segments).
    fn maybe_checkpoint(&mut self, now_anyway: bool) -> std::io::Result<()> {
        let now = crate::unix_now_ms();
        // A clock stepped back does not hold checkpoints back.
        let due = now_anyway
            || now < self.checkpointed.1
            || now - self.checkpointed.1 >= self.cfg.checkpoint_secs.saturating_mul(1000);
        if self.cfg.checkpoint_secs == 0 || self.seq <= self.checkpointed.0 || !due {
            return Ok(());
        }
        // It vouches for events on disk only.
        self.file.sync_data()?;
        let c = checkpoint::Checkpoint {
            proxy: self.proxy.clone(),
            seq: self.seq,
            hash: self.prev.clone(),
            time_ms: now,
            public_key: {
                use aws_lc_rs::signature::KeyPair as _;
                hex::encode(self.key.public_key().as_ref())
            },
        };
        checkpoint::write(&self.cfg.sealed_dir(), &c, &self.key)?;
        self.checkpointed = (self.seq, now);
        Ok(())
    }

    fn maybe_seal(&mut self) -> std::io::Result<()> {
        let Some((first_seq, first_ms, first_prev)) = self.live_first.clone() else { return Ok(()) };
        let old = crate::unix_now_ms().saturating_sub(first_ms) >= self.cfg.segment_secs.saturating_mul(1000);
        if self.live_count < self.cfg.segment_events && !old {
            return Ok(());
        }
        let mut events = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut events)?;
        let header = segment::SealHeader {
            proxy: self.proxy.clone(),
            first_seq,
            last_seq: self.seq,
            count: self.live_count,
            first_prev,
            last_hash: self.prev.clone(),
            events_blake3: blake3::hash(events.as_bytes()).to_hex().to_string(),
            sealed_ms: crate::unix_now_ms(),
            public_key: {
                use aws_lc_rs::signature::KeyPair as _;
                hex::encode(self.key.public_key().as_ref())
            },
        };
        segment::write_sealed(&self.cfg.sealed_dir(), &header, &events, &self.key)?;
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.live_first = None;
        self.live_count = 0;
        Ok(())
    }
}

/// The local trail: sealed segments (name, text) in order, and the live file.
pub fn local_trail(cfg: &SpoolConfig) -> std::io::Result<(Vec<(String, String)>, String)> {
    let segments = segment::read_local(&cfg.sealed_dir())?;
    let live = match std::fs::read_to_string(&cfg.path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok((segments, live))
}

/// The pinned public key: the `.pub` file written beside the signing key.
pub fn public_key(cfg: &SpoolConfig) -> std::io::Result<Vec<u8>> {
    let path = cfg.signing_key.with_extension("pub");
    let text = std::fs::read_to_string(&path)?;
    hex::decode(text.trim()).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
