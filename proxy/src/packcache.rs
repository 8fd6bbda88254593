//! What a proxy keeps of the listing packs (SPEC §7) it has read, and
//! which repositories it is packing now (`api::packs` reads and writes
//! them).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use coffer_proto::snapshot::pack::PackEntry;
use coffer_proto::{RepoName, SnapshotId};

/// Packs read (they are written once, so each is read once per proxy),
/// packs found unreadable, and the repositories this proxy is packing now.
pub struct Packs {
    /// Each pack's entries and size in bytes, by key.
    pub(crate) read: Mutex<HashMap<String, ReadPack>>,
    /// Packs that failed their checks (so they are not read again), by key.
    pub(crate) refused: Mutex<HashSet<String>>,
    pub(crate) packing: Mutex<HashSet<RepoName>>,
    /// Snapshots a packing left out for good (a root or key too large, or
    /// an entry a reader would refuse), so they do not count toward the
    /// next packing.
    pub(crate) unpackable: Mutex<HashSet<(RepoName, SnapshotId)>>,
    /// Packs being fetched at once over all listings: with each at most
    /// `PACK_BYTES_MAX`, a bound on what fetching holds.
    pub(crate) fetching: tokio::sync::Semaphore,
}

impl Default for Packs {
    fn default() -> Self {
        Self {
            read: Mutex::default(),
            refused: Mutex::default(),
            packing: Mutex::default(),
            unpackable: Mutex::default(),
            fetching: tokio::sync::Semaphore::new(FETCHING_MAX),
        }
    }
}

/// Packs fetched at once over all listings (4 × 16 MiB at most).
const FETCHING_MAX: usize = 4;

/// A pack's entries, and its size in bytes.
pub(crate) type ReadPack = (Arc<[PackEntry]>, usize);
