//! The backup pipeline.
//!
//! ```text
//! source ─▶ reading thread: blocks ─▶ [READ_AHEAD] ─▶ cutting thread: FastCDC
//!        ─▶ [CUT_QUEUE] ─▶ hashing thread: stream BLAKE3 + keyed chunk ids
//!        ─▶ [CHUNK_QUEUE]
//!        ─▶ batcher: dedup query per batch ─▶ uploader: zstd + AES-GCM on the
//!           blocking pool (one sealer per core), N uploads in flight on one
//!           HTTP/2 connection
//!        ─▶ manifest chunks ─▶ root ─▶ commit
//! ```
//!
//! Every queue is bounded, and every chunk holds its share of
//! [`PIPELINE_BYTES`] from the cut until it is found stored or uploaded, so
//! memory is bounded by that budget (plus the blocks read ahead, the chunk
//! being cut, the rest of the blocks a chunk's slices keep alive, and the
//! envelopes being sealed and sent), whatever the stream's length.
//! Nothing is committed unless the source ended cleanly (a command must
//! exit 0) and every chunk is stored.

use std::collections::HashSet;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::keys::{DataKey, CHUNKS_PER_DATA_KEY};
use coffer_proto::snapshot::{
    CommitRequest, Manifest, ManifestEntry, ManifestRef, SnapshotRoot, SnapshotStats, ROOT_VERSION,
};
use coffer_proto::{ChunkId, KeyId, SnapshotId};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::cutter::{self, Cutter, Pieces};
use crate::progress::Progress;
use crate::repo::{OpenRepo, RepoError};
use coffer_client::ClientError;

/// Most plaintext bytes cut and not yet found stored or uploaded.
pub const PIPELINE_BYTES: usize = 16 * 1024 * 1024;
/// Chunks between the reader's cutting and hashing threads.
pub const CUT_QUEUE: usize = 2;
/// Chunks between the hashing thread and the batcher.
pub const CHUNK_QUEUE: usize = 4;
/// Most chunks in one dedup query.
pub const DEDUP_BATCH_MAX: usize = 64;
/// Most plaintext bytes held in one dedup batch.
pub const DEDUP_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long a partial batch waits for more chunks before it is sent, so a
/// slow producer still makes steady progress.
pub const DEDUP_BATCH_LINGER: Duration = Duration::from_millis(50);

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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("reading the backup source: {0}; no snapshot was committed")]
    Source(io::Error),
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` {status}; no snapshot was committed")]
    CommandFailed { command: String, status: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}; no snapshot was committed")]
    Client(#[from] ClientError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What `coffer backup --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub id: SnapshotId,
    pub bytes_in: u64,
    pub bytes_new: u64,
    pub stored_new: u64,
    pub chunks: u64,
    pub chunks_new: u64,
    pub duration_secs: f64,
}

struct Chunk {
    id: ChunkId,
    data: Pieces,
    /// Its share of [`PIPELINE_BYTES`], held until it is found stored or
    /// uploaded (the manifest's chunks, cut after the stream, have none).
    lease: Option<Lease>,
    /// A piece of the stream, not of the manifest: only these count as new
    /// stream bytes, so `bytes_new` never exceeds `bytes_in`.
    stream: bool,
}

/// The plaintext bytes cut from the stream and not yet found stored or
/// uploaded. The cutter waits while they are spent, so the pipeline's
/// memory is bounded in bytes, whatever the chunk sizes (counts alone let a
/// run of 8 MiB chunks take eight times the memory of 1 MiB ones).
#[derive(Default)]
struct Budget {
    spent: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Budget {
    /// Blocks until `n` more bytes fit. A chunk is always admitted into an
    /// empty pipeline, so none is too large to pass.
    fn take(self: &Arc<Self>, n: usize) -> Lease {
        let mut spent = self.spent.lock().expect("not poisoned");
        while *spent > 0 && *spent + n > PIPELINE_BYTES {
            spent = self.freed.wait(spent).expect("not poisoned");
        }
        *spent += n;
        Lease { budget: self.clone(), n }
    }
}

struct Lease {
    budget: Arc<Budget>,
    n: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.budget.spent.lock().expect("not poisoned") -= self.n;
        self.budget.freed.notify_all();
    }
}

struct StreamSummary {
    bytes: u64,
    blake3: blake3::Hash,
}

/// Chunks a stream, sending each chunk with its id down `tx`. Stops early
/// if the receiver has gone.
///
/// Reading, cutting and hashing each take a thread, so that on two cores a
/// re-backup, where nothing else is left to do, keeps both busy: a thread
/// of its own reads the stream in blocks, the calling thread cuts them,
/// and a scoped one hashes each chunk (the stream's BLAKE3 and the chunk's
/// keyed id) in order and sends it on.
fn chunk_stream(
    reader: impl Read + Send + 'static,
    repo: &OpenRepo,
    tx: &mpsc::Sender<Chunk>,
) -> io::Result<StreamSummary> {
    let (block_tx, block_rx) = std::sync::mpsc::sync_channel(cutter::READ_AHEAD);
    let (cut_tx, cut_rx) = std::sync::mpsc::sync_channel::<(Pieces, Lease)>(CUT_QUEUE);
    let budget = Arc::new(Budget::default());
    // Not scoped: should the pipeline stop while the reader waits on a
    // source that has gone quiet, the failure is reported (and a source
    // command killed) without waiting for that read to return.
    let reading = std::thread::Builder::new()
        .name("coffer-read".into())
        .spawn(move || cutter::read_blocks(reader, cutter::BLOCK, &block_tx))?;
    let (cut, hashed) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            let mut stream = blake3::Hasher::new();
            let mut bytes = 0u64;
            for (data, lease) in cut_rx {
                // Both hashes over each part while it is in cache.
                let mut id = repo.id_key.chunk_hasher();
                for part in data.parts() {
                    stream.update(part);
                    id.update(part);
                }
                bytes += data.len() as u64;
                let id = id.finish();
                if tx.blocking_send(Chunk { id, data, lease: Some(lease), stream: true }).is_err() {
                    return Err(io::Error::other("backup pipeline stopped"));
                }
            }
            Ok(StreamSummary { bytes, blake3: stream.finalize() })
        });
        let mut cutter = Cutter::new(block_rx, repo.config.chunker, repo.gear.clone());
        let cut = (|| -> io::Result<()> {
            while let Some(data) = cutter.next_chunk()? {
                let lease = budget.take(data.len());
                cut_tx.send((data, lease)).map_err(|_| io::Error::other("backup pipeline stopped"))?;
            }
            Ok(())
        })();
        // Closing both ends stops the reader (at its next block) and the hasher.
        drop((cutter, cut_tx));
        (cut, hasher.join().map_err(|_| io::Error::other("the hashing thread panicked")))
    });
    // The hasher's error first: when it stops, it is why cutting stopped.
    let summary = hashed??;
    cut?;
    // The cutter saw the end mark, so the reader has returned or is about to.
    reading.join().map_err(|_| io::Error::other("the reading thread panicked"))?;
    Ok(summary)
}

/// Reads the whole source on the calling thread. For a command, waits for it
/// and reports its exit status; if the pipeline stops early, kills it.
fn read_source(source: Source, repo: &OpenRepo, tx: mpsc::Sender<Chunk>) -> Result<StreamSummary, BackupError> {
    match source {
        Source::Stdin => chunk_stream(io::stdin(), repo, &tx).map_err(BackupError::Source),
        Source::File(path) => {
            let f = std::fs::File::open(&path)
                .map_err(|e| BackupError::Source(io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
            chunk_stream(f, repo, &tx).map_err(BackupError::Source)
        }
        Source::Reader { reader, .. } => chunk_stream(reader, repo, &tx).map_err(BackupError::Source),
        Source::Command(argv) => {
            let command = argv.join(" ");
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|source| BackupError::Spawn { command: command.clone(), source })?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let pid = child.id();
            let child = Arc::new(std::sync::Mutex::new(child));
            SOURCE_CHILDREN.lock().expect("not poisoned").push((pid, command.clone(), child.clone()));
            let read = chunk_stream(stdout, repo, &tx);
            let mut child = child.lock().expect("not poisoned");
            if read.is_err() {
                let _ = child.kill();
            }
            let status = child.wait();
            SOURCE_CHILDREN.lock().expect("not poisoned").retain(|(p, _, _)| *p != pid);
            let status = status.map_err(BackupError::Source)?;
            let summary = read.map_err(BackupError::Source)?;
            check_status(&command, status)?;
            Ok(summary)
        }
    }
}

type SharedChild = Arc<std::sync::Mutex<std::process::Child>>;

/// The running source commands (by pid, with their command line), so an
/// interrupted agent or a stopping daemon can stop them rather than leave
/// them without a reader.
static SOURCE_CHILDREN: std::sync::Mutex<Vec<(u32, String, SharedChild)>> = std::sync::Mutex::new(Vec::new());

/// Kills every running source command (on SIGINT, or when a stopping
/// daemon abandons its backups).
pub fn kill_sources() {
    for (_, _, child) in SOURCE_CHILDREN.lock().expect("not poisoned").drain(..) {
        if let Ok(mut c) = child.try_lock() {
            let _ = c.kill();
        }
    }
}

/// Kills the running source commands whose command line is `argv` (a
/// daemon job stopped after its max_run_secs); the thread reading one then
/// sees its end and finishes.
pub fn kill_source_command(argv: &[String]) {
    let command = argv.join(" ");
    for (_, c, child) in SOURCE_CHILDREN.lock().expect("not poisoned").iter() {
        if *c == command {
            if let Ok(mut c) = child.try_lock() {
                let _ = c.kill();
            }
        }
    }
}

fn check_status(command: &str, status: ExitStatus) -> Result<(), BackupError> {
    if status.success() {
        return Ok(());
    }
    Err(BackupError::CommandFailed { command: command.into(), status: describe_status(status) })
}

/// "exited with status N" or "was killed by signal N".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(sig) = status.signal() {
        return format!("was killed by signal {sig}");
    }
    format!("exited with status {}", status.code().map_or("unknown".into(), |c| c.to_string()))
}

/// Seals and uploads chunks with at most `in_flight` at once, rolling the
/// data key after [`CHUNKS_PER_DATA_KEY`] envelopes.
struct Uploader {
    repo: Arc<OpenRepo>,
    key_id: KeyId,
    key: Arc<DataKey>,
    sealed_with_key: u64,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Result<(u64, u64), BackupError>>,
    stats: SnapshotStats,
}

impl Uploader {
    async fn new(repo: Arc<OpenRepo>, in_flight: usize) -> Result<Self, BackupError> {
        let (key_id, key) = repo.new_data_key().await?;
        Ok(Self {
            repo,
            key_id,
            key,
            sealed_with_key: 0,
            permits: Arc::new(Semaphore::new(in_flight)),
            tasks: JoinSet::new(),
            stats: SnapshotStats::default(),
        })
    }

    fn account(
        &mut self,
        joined: Result<Result<(u64, u64), BackupError>, tokio::task::JoinError>,
    ) -> Result<(), BackupError> {
        let (plain, stored) = joined.map_err(|e| BackupError::Internal(e.to_string()))??;
        self.stats.bytes_new += plain;
        self.stats.stored_new += stored;
        self.stats.chunks_new += 1;
        Ok(())
    }

    async fn upload(&mut self, chunk: Chunk) -> Result<(), BackupError> {
        while let Some(done) = self.tasks.try_join_next() {
            self.account(done)?;
        }
        if self.sealed_with_key == CHUNKS_PER_DATA_KEY {
            (self.key_id, self.key) = self.repo.new_data_key().await?;
            self.sealed_with_key = 0;
        }
        self.sealed_with_key += 1;
        let permit = self.permits.clone().acquire_owned().await.expect("semaphore is never closed");
        let (repo, key, key_id) = (self.repo.clone(), self.key.clone(), self.key_id);
        let Chunk { id, data, lease, stream } = chunk;
        self.tasks.spawn(async move {
            // Both held until the envelope is sent.
            let (_permit, _lease) = (permit, lease);
            let plain = if stream { data.len() as u64 } else { 0 };
            let seal_repo = repo.clone();
            let envelope = tokio::task::spawn_blocking(move || {
                let r = &seal_repo;
                coffer_proto::chunk::seal_parts(data.parts(), &key, key_id, &r.name, &id, r.config.zstd_level)
            })
            .await
            .map_err(|e| BackupError::Internal(e.to_string()))?;
            let stored = envelope.len() as u64;
            repo.client.put_chunk(&repo.name, &id, Bytes::from(envelope)).await?;
            Ok((plain, stored))
        });
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), BackupError> {
        while let Some(done) = self.tasks.join_next().await {
            self.account(done)?;
        }
        Ok(())
    }
}

/// Chunks waiting for one dedup query.
#[derive(Default)]
struct Batch {
    chunks: Vec<Chunk>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, c: Chunk) {
        self.bytes += c.data.len();
        self.chunks.push(c);
    }

    fn full(&self) -> bool {
        self.chunks.len() >= DEDUP_BATCH_MAX || self.bytes >= DEDUP_BATCH_BYTES
    }

    /// Asks which chunks the repository lacks and uploads those.
    async fn flush(&mut self, up: &mut Uploader) -> Result<(), BackupError> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = self.chunks.iter().map(|c| c.id).collect();
        let missing: HashSet<ChunkId> = up.repo.client.missing(&up.repo.name, &ids).await?.into_iter().collect();
        self.bytes = 0;
        for chunk in self.chunks.drain(..) {
            if missing.contains(&chunk.id) {
                up.upload(chunk).await?;
            }
        }
        Ok(())
    }
}

/// The chunks a snapshot references, each once, in first-seen order.
#[derive(Default)]
struct References {
    seen: HashSet<ChunkId>,
    order: Vec<ChunkId>,
}

impl References {
    /// Records `id`; true the first time it is seen in this run.
    fn add(&mut self, id: ChunkId) -> bool {
        let new = self.seen.insert(id);
        if new {
            self.order.push(id);
        }
        new
    }
}

/// Runs one backup of `source` into `repo` and commits it.
pub async fn run(
    repo: Arc<OpenRepo>,
    source: Source,
    name: String,
    in_flight: usize,
    progress: bool,
) -> Result<BackupReport, BackupError> {
    let t0 = Instant::now();
    let started = crate::unix_now();
    let description = source.describe();
    let mut up = Uploader::new(repo.clone(), in_flight).await?;
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNK_QUEUE);
    // The source is read on a thread of its own, not tokio's blocking pool:
    // it lasts the whole backup, and a daemon running several backups would
    // otherwise fill the pool and leave no thread to seal their chunks.
    let reader_repo = repo.clone();
    let (read_tx, reader) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("coffer-source".into())
        .spawn(move || {
            let _ = read_tx.send(read_source(source, &reader_repo, tx));
        })
        .map_err(|e| BackupError::Internal(format!("cannot start the reading thread: {e}")))?;

    let mut progress = Progress::new(progress);
    let mut manifest = Manifest::default();
    let mut refs = References::default();
    let mut batch = Batch::default();
    let streamed: Result<(), BackupError> = async {
        loop {
            let next = if batch.chunks.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(DEDUP_BATCH_LINGER, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        batch.flush(&mut up).await?;
                        continue;
                    }
                }
            };
            let Some(chunk) = next else { break };
            manifest.0.push(ManifestEntry { id: chunk.id, len: chunk.data.len() as u32 });
            up.stats.chunks += 1;
            up.stats.bytes_in += chunk.data.len() as u64;
            progress.update(up.stats.bytes_in, up.stats.bytes_new);
            if refs.add(chunk.id) {
                batch.push(chunk);
                if batch.full() {
                    batch.flush(&mut up).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = streamed {
        // Dropping the receiver makes the reader stop (and kill a command)
        // at its next chunk; it is not awaited, as its source may never end.
        drop(rx);
        return Err(e);
    }
    let summary = reader.await.map_err(|_| BackupError::Internal("the reading thread panicked".into()))??;

    // The manifest goes through the same chunk path, so a huge stream still
    // commits with a small root.
    let p = repo.config.chunker;
    let encoded = Bytes::from(manifest.encode());
    let mut manifest_refs = Vec::new();
    for cut in fastcdc::v2020::FastCDC::new(&encoded, p.min_size, p.avg_size, p.max_size) {
        let data = encoded.slice(cut.offset..cut.offset + cut.length);
        let id = repo.id_key.chunk_id(&data);
        manifest_refs.push(ManifestRef { id, len: cut.length as u32 });
        if refs.add(id) {
            batch.push(Chunk { id, data: Pieces::from(data), lease: None, stream: false });
        }
    }
    batch.flush(&mut up).await?;
    up.finish().await?;
    progress.finish(up.stats.bytes_in, up.stats.bytes_new);

    let id = SnapshotId::random();
    let root = SnapshotRoot {
        version: ROOT_VERSION,
        id,
        name,
        host: hostname(),
        source: description,
        started,
        finished: crate::unix_now(),
        bytes: summary.bytes,
        blake3: summary.blake3.to_hex().to_string(),
        manifest: manifest_refs,
        id_key: repo.id_key_epoch,
    };
    let root = envelope::seal(
        Kind::SnapshotRoot,
        Compression::None,
        up.key_id,
        &up.key,
        &repo.name,
        id.as_bytes(),
        &root.encode(),
    );
    let stats = up.stats;
    let commit = CommitRequest { snapshot: id, root, stats, chunks: refs.order };
    repo.client.commit(&repo.name, commit.encode()).await?;
    Ok(BackupReport {
        id,
        bytes_in: stats.bytes_in,
        bytes_new: stats.bytes_new,
        stored_new: stats.stored_new,
        chunks: stats.chunks,
        chunks_new: stats.chunks_new,
        duration_secs: t0.elapsed().as_secs_f64(),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_budget_holds_the_cutter_until_leases_are_returned() {
        let budget = Arc::new(Budget::default());
        let first = budget.take(10 * MIB);
        let second = budget.take(PIPELINE_BYTES - 10 * MIB);
        let (done, admitted) = std::sync::mpsc::channel();
        let waiting = {
            let budget = budget.clone();
            std::thread::spawn(move || done.send(budget.take(MIB)).unwrap())
        };
        let wait = Duration::from_millis(200);
        assert!(admitted.recv_timeout(wait).is_err(), "admitted past the budget");
        drop(first);
        let third = admitted.recv_timeout(Duration::from_secs(5)).expect("admitted once bytes were returned");
        waiting.join().unwrap();
        drop((second, third));
        assert_eq!(*budget.spent.lock().unwrap(), 0, "every lease returns its bytes");
        // A chunk larger than the whole budget passes an empty pipeline.
        let huge = budget.take(2 * PIPELINE_BYTES);
        assert_eq!(*budget.spent.lock().unwrap(), 2 * PIPELINE_BYTES);
        drop(huge);
    }
}
