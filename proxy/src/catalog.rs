//! The chunk catalog: what this proxy knows is stored in each repository,
//! so a dedup query and a commit need not ask the store about every chunk.
//!
//! An entry says: chunk `id` is stored, `size` bytes, locked at least until
//! `retain_until`, sealed by a known data key (or by one of a snapshot's
//! keys). It comes from what this proxy wrote (an upload, a commit's index
//! segment), what it read (index segments, a HEAD). Every one of those is a
//! lower bound of the truth: locks only grow, and a locked object cannot be
//! deleted. So an entry is trusted only while its lock is at least
//! [`TRUST_MARGIN_SECS`] in the future; after that expiry may have deleted
//! the chunk, and the store is asked again. Nothing else can remove a chunk
//! (SPEC §9), so no proxy needs to hear of another's expiry, and a chunk
//! another proxy uploaded is simply not known yet: the store is asked.
//!
//! Memory: one entry is about 70 bytes in the hash table (a 32-byte id, the
//! size, the lock, the key); one million chunks about 70 MiB. The catalogs
//! hold at most `max_chunks` entries over all repositories; the least
//! recently used repository's catalog is dropped first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{ChunkId, KeyId, RepoName, SnapshotId};

use crate::store::ObjectMeta;

/// How far in the future an entry's lock must be for the entry to be
/// trusted: room for the clocks of the proxies (and S3's) to disagree.
pub const TRUST_MARGIN_SECS: u64 = 3600;
/// Index segments a repository's catalog is first filled from: the newest
/// snapshots, which hold what the next backup most likely repeats.
pub const LOAD_SEGMENTS: usize = 3;
/// How often a repository's new index segments (other proxies' commits)
/// are merged, at most.
pub const REFRESH_SECS: u64 = 60;
/// Entries over all repositories, unless configured.
pub const DEFAULT_MAX_CHUNKS: usize = 4_000_000;

/// Which data key sealed a chunk: known exactly, or one of a snapshot's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedBy {
    Key(KeyId),
    /// An index into the repository's key sets (a snapshot's `keys`).
    OneOf(u32),
    /// From a segment that did not record keys: any of the repository's.
    Unknown,
}

/// What is known of one stored chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    pub retain_until: u64,
    pub sealed_by: SealedBy,
}

/// One repository's catalog.
#[derive(Default)]
pub struct RepoCatalog {
    chunks: HashMap<ChunkId, Known>,
    key_sets: Vec<Box<[KeyId]>>,
    /// Index segments already merged.
    merged: HashSet<SnapshotId>,
    /// Whether the newest segments were read in once.
    pub loaded: bool,
    /// When the committed snapshots were last looked at for segments this
    /// proxy has not merged (other proxies' commits).
    pub refreshed: u64,
}

impl RepoCatalog {
    /// The entry for `id`, if it can be trusted at `now`.
    pub fn present(&self, id: &ChunkId, now: u64) -> Option<Known> {
        self.chunks.get(id).copied().filter(|k| k.retain_until >= now.saturating_add(TRUST_MARGIN_SECS))
    }

    /// The keys `known` may have been sealed with (`None`: any of the
    /// repository's, so the caller must list them).
    pub fn keys_of(&self, known: &Known) -> Option<Vec<KeyId>> {
        match known.sealed_by {
            SealedBy::Key(k) => Some(vec![k]),
            SealedBy::OneOf(i) => self.key_sets.get(i as usize).map(|s| s.to_vec()),
            SealedBy::Unknown => None,
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Merges what is known of `id`: the later lock, the exact key.
    pub fn record(&mut self, id: ChunkId, known: Known) {
        let entry = self.chunks.entry(id).or_insert(known);
        entry.retain_until = entry.retain_until.max(known.retain_until);
        if !matches!(entry.sealed_by, SealedBy::Key(_)) {
            entry.sealed_by = known.sealed_by;
        }
    }

    /// What a HEAD of a chunk answered.
    pub fn record_head(&mut self, id: ChunkId, meta: &ObjectMeta) {
        let Some(retain_until) = meta.retain_until else { return };
        let sealed_by = meta.sealed_by.map_or(SealedBy::Unknown, SealedBy::Key);
        self.record(id, Known { size: meta.size, retain_until, sealed_by });
    }

    /// Every chunk of a committed snapshot's index segment.
    pub fn record_index(&mut self, index: &IndexSegment) {
        if !self.merged.insert(index.snapshot) {
            return;
        }
        let sealed_by = match &index.keys {
            Some(keys) => {
                self.key_sets.push(keys.clone().into_boxed_slice());
                SealedBy::OneOf((self.key_sets.len() - 1) as u32)
            }
            None => SealedBy::Unknown,
        };
        for e in &index.chunks {
            self.record(e.id, Known { size: u64::from(e.size), retain_until: e.retain_until, sealed_by });
        }
    }

    pub fn merged(&self, snapshot: &SnapshotId) -> bool {
        self.merged.contains(snapshot)
    }

    /// Forgets chunks expiry deleted.
    pub fn forget(&mut self, id: &ChunkId) {
        self.chunks.remove(id);
    }
}

/// Every repository's catalog this proxy holds, least recently used first
/// out when they hold more than `max_chunks` entries together.
pub struct Catalogs {
    max_chunks: usize,
    repos: std::sync::Mutex<Vec<(RepoName, Arc<tokio::sync::Mutex<RepoCatalog>>)>>,
}

impl Catalogs {
    pub fn new(max_chunks: usize) -> Self {
        Self { max_chunks, repos: std::sync::Mutex::default() }
    }

    /// The catalog of `repo` (made empty if it had none), now the most
    /// recently used.
    pub fn of(&self, repo: &RepoName) -> Arc<tokio::sync::Mutex<RepoCatalog>> {
        let mut repos = self.repos.lock().expect("not poisoned");
        let found = match repos.iter().position(|(r, _)| r == repo) {
            Some(i) => repos.remove(i).1,
            None => Arc::default(),
        };
        repos.push((repo.clone(), found.clone()));
        found
    }

    /// Drops the least recently used catalogs while all of them together
    /// hold more than the bound (never the one just used). Catalogs in use
    /// are counted as they were when last seen unlocked.
    pub fn trim(&self) {
        let mut repos = self.repos.lock().expect("not poisoned");
        let sizes: Vec<usize> = repos.iter().map(|(_, c)| c.try_lock().map_or(0, |c| c.len())).collect();
        let mut total: usize = sizes.iter().sum();
        let mut i = 0;
        while total > self.max_chunks && repos.len() - i > 1 {
            total -= sizes[i];
            i += 1;
        }
        repos.drain(..i);
    }

    /// Forgets a chunk expiry deleted.
    pub async fn forget(&self, repo: &RepoName, id: &ChunkId) {
        let found = self.repos.lock().expect("not poisoned").iter().find(|(r, _)| r == repo).map(|(_, c)| c.clone());
        if let Some(c) = found {
            c.lock().await.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use coffer_proto::snapshot::{IndexEntry, SnapshotStats};

    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn id(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    #[test]
    fn an_entry_is_trusted_only_while_its_lock_is_well_in_the_future() {
        let mut c = RepoCatalog::default();
        let key = KeyId::from_bytes([9; 16]);
        c.record(id(1), Known { size: 10, retain_until: NOW + TRUST_MARGIN_SECS, sealed_by: SealedBy::Key(key) });
        c.record(id(2), Known { size: 10, retain_until: NOW + 60, sealed_by: SealedBy::Key(key) });
        assert!(c.present(&id(1), NOW).is_some());
        assert!(c.present(&id(2), NOW).is_none(), "expiry may delete it soon: ask the store");
        assert!(c.present(&id(1), NOW + 1).is_none(), "the margin passes with time");
        assert!(c.present(&id(3), NOW).is_none(), "never seen");
        // Locks only grow: a later, shorter record does not shorten it.
        c.record(id(1), Known { size: 10, retain_until: NOW, sealed_by: SealedBy::Unknown });
        assert_eq!(c.present(&id(1), NOW).unwrap().retain_until, NOW + TRUST_MARGIN_SECS);
        assert_eq!(c.present(&id(1), NOW).unwrap().sealed_by, SealedBy::Key(key), "the exact key is kept");
        c.forget(&id(1));
        assert!(c.present(&id(1), NOW).is_none());
    }

    #[test]
    fn an_index_segment_gives_each_chunk_its_snapshots_keys_once() {
        let mut c = RepoCatalog::default();
        let keys = vec![KeyId::from_bytes([1; 16]), KeyId::from_bytes([2; 16])];
        let index = IndexSegment {
            snapshot: SnapshotId::from_bytes([7; 16]),
            committed: NOW,
            retain_until: NOW + 86_400,
            stats: SnapshotStats::default(),
            keys: Some(keys.clone()),
            chunks: vec![IndexEntry { id: id(1), size: 5, retain_until: NOW + 86_400 }],
        };
        c.record_index(&index);
        c.record_index(&index);
        let known = c.present(&id(1), NOW).unwrap();
        assert_eq!(c.keys_of(&known), Some(keys));
        assert_eq!(c.key_sets.len(), 1, "a segment is merged once");
        assert!(c.merged(&index.snapshot));
    }

    #[test]
    fn the_least_recently_used_catalogs_go_first() {
        let cats = Catalogs::new(2);
        let (a, b): (RepoName, RepoName) = ("dev/a".parse().unwrap(), "dev/b".parse().unwrap());
        let k = Known { size: 1, retain_until: NOW * 2, sealed_by: SealedBy::Unknown };
        cats.of(&a).try_lock().unwrap().record(id(1), k);
        cats.of(&a).try_lock().unwrap().record(id(2), k);
        cats.of(&b).try_lock().unwrap().record(id(3), k);
        cats.trim();
        assert!(cats.of(&a).try_lock().unwrap().is_empty(), "a was used least recently and went");
        assert_eq!(cats.of(&b).try_lock().unwrap().len(), 1);
    }
}
