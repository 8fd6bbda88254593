//! A commit at the sizes users have, in this process (`coffer-bench catalog
//! --commit`): a repository whose catalog knows N chunks commits a snapshot
//! referencing all of them (warm), then a fresh proxy on the same store
//! commits another (cold: its catalog is filled from the first commit's
//! index segment). The chunks are known to the catalog, not stored: a
//! commit with a warm catalog reads nothing of them, which is what is
//! measured. Not for production use.

use std::time::Instant;

use bytes::Bytes;

use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::snapshot::{CommitRequest, SnapshotStats};
use coffer_proto::{ChunkId, RepoName, SnapshotId};

use crate::catalog::{Known, SealedBy};
use crate::testkit::{self, TestApp};

/// Seconds of each commit, and resident memory.
#[derive(Debug, serde::Serialize)]
pub struct CommitScale {
    pub chunks: usize,
    pub warm_commit_secs: f64,
    pub cold_commit_secs: f64,
    /// Resident bytes with the warm catalog filled, before the commit.
    pub rss_before: u64,
    /// The process's peak resident bytes during each commit (the peak is
    /// reset before each, through `/proc/self/clear_refs`).
    pub warm_peak_rss: u64,
    pub cold_peak_rss: u64,
    /// The index segment the first commit wrote, bytes.
    pub index_bytes: u64,
}

/// Why a measured commit did not go through.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the commit failed: {0:?}")]
    Commit(crate::api::ApiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The `i`-th of a benchmark's chunk ids (distinct, spread as real ids are).
pub fn id(i: usize) -> ChunkId {
    ChunkId::from_bytes(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes())
}

/// A commit of the first `chunks` ids under a root sealed with a new data
/// key, encoded as the proxy receives it (the ids are made as they are
/// written: the process holds nothing the proxy would not).
async fn request(t: &TestApp, app: &crate::app::App, repo: &RepoName, chunks: usize) -> (SnapshotId, Bytes) {
    let (key_id, key, record) = t.data_key(repo);
    crate::api::repo::put_key(app, &testkit::writer_grant(), repo, key_id, record).await.expect("a key record");
    let snapshot = SnapshotId::random();
    let root = envelope::seal(Kind::SnapshotRoot, Compression::None, key_id, &key, repo, snapshot.as_bytes(), b"{}");
    let n = chunks as u64;
    let stats = SnapshotStats { bytes_in: 300 * n, bytes_new: 0, stored_new: 0, chunks: n, chunks_new: 0 };
    let head = CommitRequest { snapshot, root, stats, chunks: Vec::new() }.encode();
    // The encoding with no ids ends in a count of 0; the ids follow it.
    let mut body = Vec::with_capacity(head.len() + chunks * ChunkId::LEN);
    body.extend_from_slice(&head[..head.len() - 8]);
    body.extend_from_slice(&n.to_le_bytes());
    for i in 0..chunks {
        body.extend_from_slice(id(i).as_bytes());
    }
    (snapshot, body.into())
}

/// A line of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// Starts the peak resident memory again from the current (Linux 4.0+).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn commit(app: &crate::app::App, repo: &RepoName, body: Bytes) -> Result<f64, BenchError> {
    reset_peak();
    let start = Instant::now();
    let mut draft = testkit::draft("commit");
    crate::api::snapshots::commit(app, &mut draft, repo, &testkit::uploader(), body)
        .await
        .map_err(BenchError::Commit)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Runs both commits of `chunks` chunks.
pub async fn commit_scale(chunks: usize) -> Result<CommitScale, BenchError> {
    let t = testkit::app().await;
    let repo: RepoName = "bench/commit".parse().expect("a valid name");
    t.init(&repo).await;
    let (key_id, _, record) = t.data_key(&repo);
    crate::api::repo::put_key(&t.app, &testkit::writer_grant(), &repo, key_id, record).await.expect("a key record");
    // Locked well past the snapshots' retention, so no lock is extended
    // (those objects do not exist).
    let until = crate::unix_now() + 400 * 86_400;
    {
        let catalog = t.app.catalogs.of(&repo);
        let mut cat = catalog.lock().await;
        let owner = Some(testkit::uploader().scope);
        for i in 0..chunks {
            let known = Known { size: 300, retain_until: until, sealed_by: SealedBy::Key(key_id), owner, copy: false };
            cat.observe(id(i), known);
        }
    }
    let (first, body) = request(&t, &t.app, &repo, chunks).await;
    let rss_before = status_bytes("VmRSS:");
    let warm_commit_secs = commit(&t.app, &repo, body).await?;
    let warm_peak_rss = status_bytes("VmHWM:");
    let index = coffer_proto::layout::index(&repo, &first);
    let index_bytes = t.app.store.head(&index).await?.map_or(0, |m| m.size);
    let cold = testkit::app_on(&t).await;
    let (_, body) = request(&t, &cold, &repo, chunks).await;
    let cold_commit_secs = commit(&cold, &repo, body).await?;
    let cold_peak_rss = status_bytes("VmHWM:");
    Ok(CommitScale {
        chunks,
        warm_commit_secs,
        cold_commit_secs,
        rss_before,
        warm_peak_rss,
        cold_peak_rss,
        index_bytes,
    })
}
