//! What `--json` prints: one object per command, with the field names
//! `docs/operations.md` ("JSON output") documents. Snapshot ids are `id`
//! everywhere, as in `backup --json` and `snapshots --json`; sizes are bytes.

use std::path::PathBuf;

use coffer_proto::{KeyId, RepoName, SnapshotId};
use serde::Serialize;

/// `coffer init --json`.
#[derive(Serialize)]
pub(crate) struct Initialised {
    pub repo: RepoName,
    /// The KEK the repository's chunk-id key is wrapped by.
    pub chunk_id_kek: String,
    pub zstd_level: i32,
}

/// `coffer restore -o FILE --json`.
#[derive(Serialize)]
pub(crate) struct Restored {
    pub id: SnapshotId,
    pub file: PathBuf,
    pub bytes: u64,
    /// In octal, e.g. "0600".
    pub mode: String,
    pub seconds: f64,
}

/// One snapshot of `coffer verify --json`: `ok`, with its size, or the
/// problem found.
#[derive(Serialize)]
pub(crate) struct Verified {
    pub id: SnapshotId,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Verified {
    pub fn ok(id: SnapshotId, bytes: u64, chunks: u64) -> Self {
        Self { id, ok: true, bytes: Some(bytes), chunks: Some(chunks), problem: None }
    }

    pub fn damaged(id: SnapshotId, problem: String) -> Self {
        Self { id, ok: false, bytes: None, chunks: None, problem: Some(problem) }
    }
}

/// `coffer verify --json`: every snapshot checked (the exit status is 1 if
/// any is damaged, after the object is printed).
#[derive(Serialize)]
pub(crate) struct Verification {
    pub repo: RepoName,
    pub snapshots: Vec<Verified>,
}

/// `coffer key rotate --json`.
#[derive(Serialize)]
pub(crate) struct Rotated {
    pub repo: RepoName,
    /// The new chunk-id key epoch.
    pub epoch: KeyId,
}

/// `coffer send --json`.
#[derive(Serialize)]
pub(crate) struct Sent {
    pub id: SnapshotId,
    pub bytes_in: u64,
    pub bytes_new: u64,
}
