//! Asking which chunks the repository lacks (in batches, several queries
//! out at once) and uploading those: sealed on the blocking pool, several in
//! flight on one connection, the data key rolled after
//! [`CHUNKS_PER_DATA_KEY`] envelopes.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::keys::{DataKey, CHUNKS_PER_DATA_KEY};
use coffer_proto::snapshot::SnapshotStats;
use coffer_proto::{ChunkId, KeyId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::stream::Chunk;
use super::{BackupError, DEDUP_BATCH_BYTES, DEDUP_BATCH_MAX, DEDUP_QUERIES_IN_FLIGHT};
use crate::repo::OpenRepo;

/// Seals and uploads chunks with at most `in_flight` at once, rolling the
/// data key after [`CHUNKS_PER_DATA_KEY`] envelopes.
pub(super) struct Uploader {
    pub(super) repo: Arc<OpenRepo>,
    pub(super) key_id: KeyId,
    pub(super) key: Arc<DataKey>,
    pub(super) sealed_with_key: u64,
    pub(super) permits: Arc<Semaphore>,
    pub(super) tasks: JoinSet<Result<(u64, u64), BackupError>>,
    /// Dedup queries sent and not yet acted on: the stream goes on while
    /// they are out, so one batch's round trip (the proxy's, and the
    /// store's for chunks its catalog does not know) overlaps the next
    /// batch's cutting and the uploads in flight.
    pub(super) queries: JoinSet<Result<Answer, BackupError>>,
    pub(super) stats: SnapshotStats,
}

/// A dedup query's batch and the ids the repository lacks.
pub(super) type Answer = (Vec<Chunk>, HashSet<ChunkId>);

impl Uploader {
    pub(super) async fn new(repo: Arc<OpenRepo>, in_flight: usize) -> Result<Self, BackupError> {
        let (key_id, key) = repo.new_data_key().await?;
        Ok(Self {
            repo,
            key_id,
            key,
            sealed_with_key: 0,
            permits: Arc::new(Semaphore::new(in_flight)),
            tasks: JoinSet::new(),
            queries: JoinSet::new(),
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

    pub(super) async fn upload(&mut self, chunk: Chunk) -> Result<(), BackupError> {
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
            if let Some(limit) = &repo.limits.upload {
                limit.take(envelope.len()).await;
            }
            repo.client.put_chunk(&repo.name, &id, Bytes::from(envelope)).await?;
            Ok((plain, stored))
        });
        Ok(())
    }

    /// Uploads what an answered dedup query found missing.
    pub(super) async fn answered(
        &mut self,
        joined: Result<Result<Answer, BackupError>, tokio::task::JoinError>,
    ) -> Result<(), BackupError> {
        let (chunks, missing) = joined.map_err(|e| BackupError::Internal(e.to_string()))??;
        for chunk in chunks {
            // A chunk found stored is dropped here, returning its bytes to
            // the pipeline's budget.
            if missing.contains(&chunk.id) {
                self.upload(chunk).await?;
            }
        }
        Ok(())
    }

    /// Waits for every dedup query and every upload.
    pub(super) async fn finish(&mut self) -> Result<(), BackupError> {
        while let Some(answered) = self.queries.join_next().await {
            self.answered(answered).await?;
        }
        while let Some(done) = self.tasks.join_next().await {
            self.account(done)?;
        }
        Ok(())
    }
}

/// Chunks waiting for one dedup query.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) chunks: Vec<Chunk>,
    pub(super) bytes: usize,
}

impl Batch {
    pub(super) fn push(&mut self, c: Chunk) {
        self.bytes += c.data.len();
        self.chunks.push(c);
    }

    pub(super) fn full(&self) -> bool {
        self.chunks.len() >= DEDUP_BATCH_MAX || self.bytes >= DEDUP_BATCH_BYTES
    }

    /// Sends the batch's dedup query; its answer is acted on when it comes
    /// (`Uploader::answered`). With [`DEDUP_QUERIES_IN_FLIGHT`] already
    /// out, waits for one of them first.
    pub(super) async fn flush(&mut self, up: &mut Uploader) -> Result<(), BackupError> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        while up.queries.len() >= DEDUP_QUERIES_IN_FLIGHT {
            let Some(answered) = up.queries.join_next().await else { break };
            up.answered(answered).await?;
        }
        let chunks = std::mem::take(&mut self.chunks);
        self.bytes = 0;
        let repo = up.repo.clone();
        up.queries.spawn(async move {
            let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
            let missing = repo.client.missing(&repo.name, &ids).await?.into_iter().collect();
            Ok((chunks, missing))
        });
        Ok(())
    }
}

/// The chunks a snapshot references, each once, in first-seen order.
#[derive(Default)]
pub(super) struct References {
    pub(super) seen: HashSet<ChunkId>,
    pub(super) order: Vec<ChunkId>,
}

impl References {
    /// Records `id`; true the first time it is seen in this run.
    pub(super) fn add(&mut self, id: ChunkId) -> bool {
        let new = self.seen.insert(id);
        if new {
            self.order.push(id);
        }
        new
    }
}
