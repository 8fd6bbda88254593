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

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Events queued for the writer thread before senders wait.
pub const AUDIT_QUEUE: usize = 4096;
/// The `prev` of the first event of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

#[derive(Debug, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(String);

struct Pending {
    draft: Draft,
    durable: bool,
    ack: oneshot::Sender<Result<(), String>>,
}

/// The handle requests use. Dropping every clone stops the writer after it
/// has flushed what was queued.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
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
fn render(event: &Event) -> (String, String) {
    let body = serde_json::to_string(&Event { hash: String::new(), ..event.clone() }).expect("events serialise");
    let hash = chain_hash(&body);
    let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    (line, hash)
}

/// Where the chain stands at the end of an existing log: last seq and hash.
/// A torn last line (a crash mid-write) is cut off.
fn resume(file: &mut File) -> std::io::Result<(u64, String)> {
    let len = file.metadata()?.len();
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    BufReader::new(&mut *file).read_to_string(&mut text)?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if (complete as u64) < len {
        file.set_len(complete as u64)?;
        file.sync_all()?;
    }
    match text[..complete].lines().last() {
        None => Ok((0, GENESIS.to_string())),
        Some(line) => {
            let e: Event = serde_json::from_str(line)
                .map_err(|e| std::io::Error::other(format!("last audit line is not an event: {e}")))?;
            Ok((e.seq, e.hash))
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log and starts its writer thread.
    pub fn open(path: &Path, proxy_id: &str) -> std::io::Result<(Self, AuditWriter)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let (seq, prev) = resume(&mut file)?;
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let proxy = proxy_id.to_string();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(file, rx, proxy, seq, prev))?;
        Ok((Self { tx }, AuditWriter(thread)))
    }

    /// Records an event. With `durable`, returns only once it is fsync'd.
    pub async fn record(&self, draft: Draft, durable: bool) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx.send(Pending { draft, durable, ack }).await.map_err(|_| AuditError("writer stopped".into()))?;
        if !durable {
            return Ok(());
        }
        done.await.map_err(|_| AuditError("writer stopped".into()))?.map_err(AuditError)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn writer(mut file: File, mut rx: mpsc::Receiver<Pending>, proxy: String, mut seq: u64, mut prev: String) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_QUEUE {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (seq0, prev0) = (seq, prev.clone());
        let mut out = String::new();
        for p in &batch {
            seq += 1;
            let d = &p.draft;
            let event = Event {
                seq,
                time_ms: now_ms(),
                proxy: proxy.clone(),
                identity: d.identity.clone(),
                trust_domain: d.trust_domain.clone(),
                peer: d.peer.clone(),
                action: d.action.to_string(),
                repo: d.repo.clone(),
                object: d.object.clone(),
                bytes: d.bytes,
                outcome: d.outcome.unwrap_or(Outcome::Ok),
                reason: d.reason.clone(),
                prev: std::mem::take(&mut prev),
                hash: String::new(),
            };
            let (line, hash) = render(&event);
            out.push_str(&line);
            out.push('\n');
            prev = hash;
        }
        let len_before = file.metadata().map(|m| m.len()).ok();
        let durable = batch.iter().any(|p| p.durable);
        let result = file
            .write_all(out.as_bytes())
            .and_then(|()| if durable { file.sync_data() } else { Ok(()) })
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!("audit log write failed: {e}");
            // Keep the chain whole: forget this batch on disk and in memory.
            if let Some(len) = len_before {
                let _ = file.set_len(len);
            }
            (seq, prev) = (seq0, prev0);
        }
        for p in batch {
            let _ = p.ack.send(result.clone());
        }
    }
    let _ = file.sync_all();
}

/// A break in a log's chain: the first line that does not follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at line {line} (seq {seq:?}): {reason}")]
pub struct ChainBreak {
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

/// Checks a log file's chain from its first line; returns the event count.
pub fn verify_file(path: &PathBuf) -> Result<u64, ChainBreak> {
    let file = File::open(path).map_err(|e| ChainBreak { line: 0, seq: None, reason: e.to_string() })?;
    let (mut prev, mut expect_seq) = (GENESIS.to_string(), 1u64);
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let brk = |seq, reason: String| ChainBreak { line: i + 1, seq, reason };
        let line = line.map_err(|e| brk(None, e.to_string()))?;
        let event: Event = serde_json::from_str(&line).map_err(|e| brk(None, format!("not an event: {e}")))?;
        let seq = Some(event.seq);
        if event.seq != expect_seq {
            return Err(brk(seq, format!("expected seq {expect_seq}")));
        }
        if event.prev != prev {
            return Err(brk(seq, "prev does not match the previous event's hash".into()));
        }
        let (rendered, hash) = render(&event);
        if rendered != line || hash != event.hash {
            return Err(brk(seq, "the event's hash does not match its contents".into()));
        }
        prev = hash;
        expect_seq += 1;
    }
    Ok(expect_seq - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(action: &'static str) -> Draft {
        Draft { identity: Some("w".into()), peer: "127.0.0.1:1".into(), action, ..Default::default() }
    }

    #[tokio::test]
    async fn chain_survives_restart_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (log, w) = AuditLog::open(&path, "p1").unwrap();
        log.record(draft("put-chunk"), true).await.unwrap();
        log.record(draft("get-chunk"), false).await.unwrap();
        drop(log);
        w.join();
        let (log, w) = AuditLog::open(&path, "p1").unwrap();
        log.record(draft("commit"), true).await.unwrap();
        drop(log);
        w.join();
        assert_eq!(verify_file(&path).unwrap(), 3);

        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("get-chunk", "get-chonk", 1);
        std::fs::write(&path, &edited).unwrap();
        assert_eq!(verify_file(&path).unwrap_err().seq, Some(2));

        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let brk = verify_file(&path).unwrap_err();
        assert_eq!((brk.line, brk.seq), (2, Some(3)));
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (log, w) = AuditLog::open(&path, "p1").unwrap();
        rt.block_on(log.record(draft("put-key"), true)).unwrap();
        drop(log);
        w.join();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":2,\"ti").unwrap();
        drop(f);
        let (log, w) = AuditLog::open(&path, "p1").unwrap();
        rt.block_on(log.record(draft("commit"), true)).unwrap();
        drop(log);
        w.join();
        assert_eq!(verify_file(&path).unwrap(), 2);
    }
}
