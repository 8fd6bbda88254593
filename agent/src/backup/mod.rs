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

pub mod command;
mod source;
mod stream;
mod upload;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coffer_client::ClientError;
use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::snapshot::{CommitRequest, Manifest, ManifestEntry, ManifestRef, SnapshotRoot, ROOT_VERSION};
use coffer_proto::SnapshotId;
use serde::Serialize;
use tokio::sync::mpsc;

pub use command::{describe_status, kill_source_command, kill_sources, CommandError};
pub use source::Source;

use crate::cutter::Pieces;
use crate::progress::{Action, Progress, ProgressMode};
use crate::repo::{OpenRepo, RepoError};
use stream::Chunk;
use upload::{Batch, References, Uploader};

/// Most plaintext bytes cut and not yet found stored or uploaded.
pub const PIPELINE_BYTES: usize = 32 * 1024 * 1024;
/// Chunks between the reader's cutting and hashing threads.
pub const CUT_QUEUE: usize = 2;
/// Chunks between the hashing thread and the batcher.
pub const CHUNK_QUEUE: usize = 4;
/// Most chunks in one dedup query.
pub const DEDUP_BATCH_MAX: usize = 64;
/// Most plaintext bytes held in one dedup batch.
pub const DEDUP_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Dedup queries out at once. Their chunks hold bytes of
/// [`PIPELINE_BYTES`], which bounds the memory whatever this is.
pub const DEDUP_QUERIES_IN_FLIGHT: usize = 4;
/// How long a partial batch waits for more chunks before it is sent, so a
/// slow producer still makes steady progress.
pub const DEDUP_BATCH_LINGER: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("reading the backup source: {0}; no snapshot was committed")]
    Source(io::Error),
    #[error("{0}; no snapshot was committed")]
    Command(CommandError),
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

/// How long the batcher waits for the next chunk before sending `batch`.
fn linger(batch: &Batch) -> Duration {
    if batch.chunks.is_empty() {
        Duration::MAX
    } else {
        DEDUP_BATCH_LINGER
    }
}

/// Runs one backup of `source` into `repo` and commits it.
pub async fn run(
    repo: Arc<OpenRepo>,
    source: Source,
    name: String,
    in_flight: usize,
    progress: ProgressMode,
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
            let _ = read_tx.send(source::read_source(source, &reader_repo, tx));
        })
        .map_err(|e| BackupError::Internal(format!("cannot start the reading thread: {e}")))?;

    let mut progress = Progress::new(progress, Action::Backup);
    let mut manifest = Manifest::default();
    let mut refs = References::default();
    let mut batch = Batch::default();
    let streamed: Result<(), BackupError> = async {
        loop {
            let next = tokio::select! {
                // An answer first: its chunks hold the budget the cutter
                // may be waiting for.
                biased;
                Some(answered) = up.queries.join_next(), if !up.queries.is_empty() => {
                    up.answered(answered).await?;
                    continue;
                }
                // A partial batch waits DEDUP_BATCH_LINGER for more, an
                // empty one for ever.
                next = tokio::time::timeout(linger(&batch), rx.recv()) => match next {
                    Ok(next) => next,
                    Err(_) => {
                        batch.flush(&mut up).await?;
                        continue;
                    }
                },
            };
            let Some(chunk) = next else { break };
            manifest.0.push(ManifestEntry { id: chunk.id, len: chunk.data.len() as u32 });
            up.stats.chunks += 1;
            up.stats.bytes_in += chunk.data.len() as u64;
            progress.update_backup(up.stats.bytes_in, up.stats.bytes_new);
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
    progress.finish_backup(up.stats.bytes_in, up.stats.bytes_new);

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
    let info = repo.client.commit(&repo.name, commit.encode()).await?;
    if let Some(memory) = &repo.memory {
        // The snapshot is committed whatever the memory says.
        if let Err(e) = memory.committed(&info) {
            tracing::warn!(repo = %repo.name, "the snapshot memory is not kept: {e}");
        }
    }
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
