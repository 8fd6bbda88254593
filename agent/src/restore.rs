//! Restore and verify: fetch a snapshot's root, its manifest and its chunks,
//! open every envelope, check every keyed hash, and write the stream in
//! order. Fetches run ahead of the writer, `in_flight` at a time.

use std::collections::VecDeque;
use std::sync::Arc;

use coffer_proto::envelope::{self, Kind};
use coffer_proto::keys::IdKey;
use coffer_proto::snapshot::{Manifest, SnapshotRoot};
use coffer_proto::{ChunkId, SnapshotId};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::task::JoinHandle;

use crate::progress::Progress;
use crate::repo::{OpenRepo, RepoError};
use coffer_client::ClientError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error("integrity error: snapshot {snapshot} chunk {chunk}: {what}")]
    Chunk { snapshot: SnapshotId, chunk: ChunkId, what: &'static str },
    #[error("integrity error: snapshot {snapshot}: {what}")]
    Snapshot { snapshot: SnapshotId, what: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("writing the restored stream: {0}")]
    Write(std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What restore and verify report for a snapshot that checks out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub id: SnapshotId,
    pub bytes: u64,
    pub chunks: usize,
}

/// Fetches and opens the root of `snapshot`.
pub async fn load_root(repo: &OpenRepo, snapshot: SnapshotId) -> Result<SnapshotRoot, RestoreError> {
    let sealed = repo.client.get_snapshot(&repo.name, snapshot).await?;
    open_root(repo, snapshot, &sealed, None).await
}

/// Opens a snapshot's root envelope, with the record of its data key when
/// the caller has it (a listing's copy from a listing pack, SPEC §7): the
/// same checks either way, since the key unwraps only under this
/// repository's context and the root only under its own id.
pub async fn open_root(
    repo: &OpenRepo,
    snapshot: SnapshotId,
    sealed: &[u8],
    key_record: Option<&[u8]>,
) -> Result<SnapshotRoot, RestoreError> {
    let bad = |what: &str| RestoreError::Snapshot { snapshot, what: what.to_string() };
    let header = envelope::parse_header(sealed).map_err(|e| bad(&format!("root: {e}")))?;
    let key = repo.data_key_with(header.key_id, key_record).await?;
    let (_, plain) = envelope::open(sealed, Kind::SnapshotRoot, &key, &repo.name, snapshot.as_bytes())
        .map_err(|_| bad("the snapshot root failed authentication"))?;
    let root = SnapshotRoot::decode(&plain).map_err(|e| bad(&format!("root: {e}")))?;
    if root.id != snapshot {
        return Err(bad("the root names another snapshot"));
    }
    Ok(root)
}

/// Fetches one chunk and opens it off the reactor. When the id's first
/// upload does not open to the id (another identity stored something else
/// under it, SPEC §9 "Dedup scopes"), the copies beside it are tried.
async fn fetch_chunk(
    repo: Arc<OpenRepo>,
    id_key: Arc<IdKey>,
    snapshot: SnapshotId,
    id: ChunkId,
    len: u32,
) -> Result<Vec<u8>, RestoreError> {
    let bad = |what| RestoreError::Chunk { snapshot, chunk: id, what };
    if let Some(limit) = &repo.limits.download {
        // The envelope is about the chunk's length (before compression).
        limit.take(len as usize).await;
    }
    let problem = match repo.client.get_chunk(&repo.name, &id).await {
        Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => bad("missing from the repository"),
        other => match open_chunk(&repo, &id_key, id, len, other?).await {
            Ok(plain) => return Ok(plain),
            Err(Unopened::Fatal(e)) => return Err(e),
            Err(Unopened::Not(what)) => bad(what),
            Err(Unopened::Key(e)) => e,
        },
    };
    for scope in repo.client.list_copies(&repo.name, &id).await? {
        let sealed = match repo.client.get_chunk_copy(&repo.name, &id, &scope).await {
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => continue,
            other => other?,
        };
        match open_chunk(&repo, &id_key, id, len, sealed).await {
            Ok(plain) => {
                tracing::warn!(repo = %repo.name, chunk = %id, %scope, "the chunk's first upload: {problem}; its copy opened");
                return Ok(plain);
            }
            Err(Unopened::Fatal(e)) => return Err(e),
            Err(Unopened::Not(_) | Unopened::Key(_)) => {}
        }
    }
    Err(problem)
}

/// Why a fetched envelope did not give the chunk.
enum Unopened {
    /// It is not this chunk's envelope.
    Not(&'static str),
    /// Its data key could not be had (gone, refused by the KMS, or the KMS
    /// unreachable): reported as it is unless a copy opens.
    Key(RestoreError),
    /// Nothing else can be tried.
    Fatal(RestoreError),
}

/// Opens a fetched envelope of chunk `id`.
async fn open_chunk(
    repo: &Arc<OpenRepo>,
    id_key: &Arc<IdKey>,
    id: ChunkId,
    len: u32,
    sealed: bytes::Bytes,
) -> Result<Vec<u8>, Unopened> {
    let header = envelope::parse_header(&sealed).map_err(|_| Unopened::Not("not a valid envelope"))?;
    let key = repo.data_key(header.key_id).await.map_err(|e| Unopened::Key(e.into()))?;
    let (repo, id_key) = (repo.clone(), id_key.clone());
    let opened =
        tokio::task::spawn_blocking(move || coffer_proto::chunk::open(&sealed, &key, &repo.name, &id, &id_key))
            .await
            .map_err(|e| Unopened::Fatal(RestoreError::Internal(e.to_string())))?;
    match opened {
        Err(_) => Err(Unopened::Not("failed authentication or does not match its id")),
        Ok(plain) if plain.len() != len as usize => Err(Unopened::Not("has the wrong length")),
        Ok(plain) => Ok(plain),
    }
}

/// Most plaintext bytes of chunks being fetched or waiting their turn to be
/// written: with `in_flight` alone, 32 fetches of 8 MiB chunks would hold
/// 256 MiB.
pub const FETCH_BYTES_IN_FLIGHT: u64 = 16 * 1024 * 1024;

type Fetch = JoinHandle<Result<Vec<u8>, RestoreError>>;

/// Fetches chunks in order, keeping up to `in_flight` requests running
/// (within [`FETCH_BYTES_IN_FLIGHT`]), and hands each plaintext to `sink` in
/// stream order.
async fn for_each_chunk(
    repo: &Arc<OpenRepo>,
    id_key: &Arc<IdKey>,
    snapshot: SnapshotId,
    chunks: impl IntoIterator<Item = (ChunkId, u32)>,
    in_flight: usize,
    mut sink: impl AsyncFnMut(Vec<u8>) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    // Each fetch with its chunk's length.
    let mut pending: VecDeque<(Fetch, u64)> = VecDeque::new();
    let mut pending_bytes = 0;
    let mut chunks = chunks.into_iter().peekable();
    let result = async {
        loop {
            while pending.len() < in_flight {
                let Some(&(id, len)) = chunks.peek() else { break };
                // The first is always fetched, so no chunk is too large.
                if !pending.is_empty() && pending_bytes + u64::from(len) > FETCH_BYTES_IN_FLIGHT {
                    break;
                }
                chunks.next();
                pending_bytes += u64::from(len);
                let task = tokio::spawn(fetch_chunk(repo.clone(), id_key.clone(), snapshot, id, len));
                pending.push_back((task, u64::from(len)));
            }
            let Some((next, len)) = pending.pop_front() else { return Ok(()) };
            let data = next.await.map_err(|e| RestoreError::Internal(e.to_string()))??;
            sink(data).await?;
            pending_bytes -= len;
        }
    }
    .await;
    for (task, _) in pending {
        task.abort();
    }
    result
}

/// A snapshot's root, the chunk-id key its chunks are named with, and its
/// manifest, each checked against the others.
struct Loaded {
    root: SnapshotRoot,
    id_key: Arc<IdKey>,
    manifest: Manifest,
}

/// Fetches and checks the root of `snapshot` and the manifest it points to.
async fn load_manifest(repo: &Arc<OpenRepo>, snapshot: SnapshotId, in_flight: usize) -> Result<Loaded, RestoreError> {
    let root = load_root(repo, snapshot).await?;
    let bad = |what: &str| RestoreError::Snapshot { snapshot, what: what.to_string() };
    let id_key = repo.id_key_for(root.id_key).ok_or_else(|| bad("its chunk-id key epoch is not in the repository"))?;
    let mut encoded = Vec::new();
    let refs = root.manifest.iter().map(|r| (r.id, r.len));
    for_each_chunk(repo, &id_key, snapshot, refs, in_flight, async |data| {
        encoded.extend_from_slice(&data);
        Ok(())
    })
    .await?;
    let manifest = Manifest::decode(&encoded).map_err(|e| bad(&format!("manifest: {e}")))?;
    if manifest.stream_len() != root.bytes {
        return Err(bad("the manifest's length disagrees with the root"));
    }
    Ok(Loaded { root, id_key, manifest })
}

/// Restores `snapshot` into `out`, checking every chunk and, at the end,
/// the BLAKE3 of the whole stream.
pub async fn restore(
    repo: Arc<OpenRepo>,
    snapshot: SnapshotId,
    out: &mut (impl AsyncWrite + Unpin),
    in_flight: usize,
    progress: &mut Progress,
) -> Result<Verified, RestoreError> {
    let Loaded { root, id_key, manifest } = load_manifest(&repo, snapshot, in_flight).await?;
    progress.total(root.bytes);
    let mut hasher = blake3::Hasher::new();
    let entries = manifest.0.iter().map(|e| (e.id, e.len));
    for_each_chunk(&repo, &id_key, snapshot, entries, in_flight, async |data| {
        hasher.update(&data);
        progress.add(data.len() as u64);
        out.write_all(&data).await.map_err(RestoreError::Write)
    })
    .await?;
    out.flush().await.map_err(RestoreError::Write)?;
    if hasher.finalize().to_hex().as_str() != root.blake3 {
        let bad =
            RestoreError::Snapshot { snapshot, what: "the restored stream's BLAKE3 does not match the root".into() };
        return Err(bad);
    }
    Ok(Verified { id: snapshot, bytes: root.bytes, chunks: manifest.0.len() })
}

/// Verifies a snapshot: a full restore into nowhere.
pub async fn verify(
    repo: Arc<OpenRepo>,
    snapshot: SnapshotId,
    in_flight: usize,
    progress: &mut Progress,
) -> Result<Verified, RestoreError> {
    restore(repo, snapshot, &mut tokio::io::sink(), in_flight, progress).await
}

/// Which of a snapshot's data chunks `verify --read-data-subset` reads, as
/// restic's `check --read-data-subset` does: `N/M` (the N-th of M groups by
/// chunk id, the same chunks every time, so M runs with N = 1..M cover
/// everything) or `P%` (a fresh random sample each run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    Group { n: u64, m: u64 },
    Share { percent: f64, salt: [u8; 16] },
}

/// Why a `--read-data-subset` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubsetError(String);

impl std::str::FromStr for Subset {
    type Err = SubsetError;

    fn from_str(s: &str) -> Result<Self, SubsetError> {
        Self::parse(s)
    }
}

impl Subset {
    fn parse(s: &str) -> Result<Self, SubsetError> {
        if let Some(p) = s.strip_suffix('%') {
            let percent: f64 =
                p.trim().parse().map_err(|_| SubsetError(format!("{s:?}: expected a percentage such as 10%")))?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(SubsetError(format!("{s:?}: the percentage must be above 0 and at most 100")));
            }
            let mut salt = [0u8; 16];
            aws_lc_rs::rand::fill(&mut salt).map_err(|_| SubsetError("the system RNG failed".into()))?;
            return Ok(Subset::Share { percent, salt });
        }
        let (n, m) = s
            .split_once('/')
            .ok_or_else(|| SubsetError(format!("{s:?}: expected N/M (such as 1/5) or P% (such as 10%)")))?;
        let (n, m): (u64, u64) = match (n.trim().parse(), m.trim().parse()) {
            (Ok(n), Ok(m)) => (n, m),
            _ => return Err(SubsetError(format!("{s:?}: N and M must be whole numbers"))),
        };
        if m == 0 || n == 0 || n > m {
            return Err(SubsetError(format!("{s:?}: N must be from 1 to M")));
        }
        Ok(Subset::Group { n, m })
    }

    /// Whether chunk `id` is read.
    pub fn contains(&self, id: &ChunkId) -> bool {
        match self {
            Subset::Group { n, m } => {
                let head = u64::from_be_bytes(*id.as_bytes().first_chunk().expect("32 bytes"));
                head % m == n - 1
            }
            Subset::Share { percent, .. } if *percent >= 100.0 => true,
            Subset::Share { percent, salt } => {
                let mut h = blake3::Hasher::new();
                h.update(salt);
                h.update(id.as_bytes());
                let draw = u64::from_be_bytes(*h.finalize().as_bytes().first_chunk().expect("32 bytes"));
                (draw as f64) < percent / 100.0 * u64::MAX as f64
            }
        }
    }
}

/// Verifies part of a snapshot: its root and manifest in full, then only the
/// data chunks in `subset`, each opened and its keyed id checked. The
/// whole-stream hash needs every chunk, so it is not checked; `chunks` in
/// the answer counts the data chunks read.
pub async fn verify_subset(
    repo: Arc<OpenRepo>,
    snapshot: SnapshotId,
    in_flight: usize,
    subset: Subset,
    progress: &mut Progress,
) -> Result<Verified, RestoreError> {
    let Loaded { root, id_key, manifest } = load_manifest(&repo, snapshot, in_flight).await?;
    let mut seen = std::collections::HashSet::new();
    let picked: Vec<(ChunkId, u32)> =
        manifest.0.iter().filter(|e| subset.contains(&e.id) && seen.insert(e.id)).map(|e| (e.id, e.len)).collect();
    let read = picked.len();
    progress.total(picked.iter().map(|&(_, len)| u64::from(len)).sum());
    for_each_chunk(&repo, &id_key, snapshot, picked, in_flight, async |data| {
        progress.add(data.len() as u64);
        Ok(())
    })
    .await?;
    Ok(Verified { id: snapshot, bytes: root.bytes, chunks: read })
}
