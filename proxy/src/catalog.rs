//! The chunk catalog: what this proxy knows is stored in each repository,
//! so a dedup query and a commit need not ask the store about every chunk.
//!
//! An entry says: chunk `id` is stored, `size` bytes, locked at least until
//! `retain_until`, sealed by a known data key (or by one of a snapshot's
//! keys), uploaded in a scope (SPEC §9 "Dedup scopes"): it answers only
//! for callers of that scope, or for every caller when the upload is from
//! before scopes. The first upload of an id and the scopes' copies beside
//! it are separate entries. It comes from what this proxy wrote (an upload, a commit's index
//! segment), what it read (index segments, a HEAD). Every one of those is a
//! lower bound of the truth: locks only grow, and a locked object cannot be
//! deleted. So an entry is trusted only while its lock is at least
//! [`TRUST_MARGIN_SECS`] in the future; after that expiry may have deleted
//! the chunk, and the store is asked again. Nothing else can remove a chunk
//! (SPEC §9), so no proxy needs to hear of another's expiry, and a chunk
//! another proxy uploaded is simply not known yet: the store is asked.
//!
//! Memory: one entry is about 90 bytes in the hash table (a 32-byte id, the
//! size, the lock, the key, the scope); one million chunks about 90 MiB. The catalogs
//! hold at most `max_chunks` entries over all repositories; the least
//! recently used repository's catalog is dropped first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{ChunkId, KeyId, RepoName, Scope, SnapshotId};

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

/// Whose uploads a caller may count on: its own scope's, and, until its
/// uploads are first quarantined or it is revoked (its generation 0),
/// uploads from before scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uploader {
    pub scope: Scope,
    pub legacy: bool,
}

impl Uploader {
    /// Whether an upload by `owner` (`None`: from before scopes) counts.
    pub fn counts(&self, owner: Option<Scope>) -> bool {
        owner.map_or(self.legacy, |o| o == self.scope)
    }
}

/// What is known of one stored chunk object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    pub retain_until: u64,
    pub sealed_by: SealedBy,
    /// The scope whose upload it is; `None`: from before scopes, which
    /// answers for every scope.
    pub owner: Option<Scope>,
    /// Whether it is the owner's copy beside the id's first upload
    /// (`layout::chunk_copy`), not the first upload itself.
    pub copy: bool,
}

impl Known {
    /// Where the object is stored.
    pub fn key(&self, repo: &RepoName, id: &ChunkId) -> String {
        coffer_proto::layout::chunk_at(repo, id, self.owner.as_ref().filter(|_| self.copy))
    }
}

/// One repository's catalog.
#[derive(Default)]
pub struct RepoCatalog {
    /// The first upload of each id.
    chunks: HashMap<ChunkId, Known>,
    /// Copies beside a first upload, by id and scope: rare (several
    /// writers of one repository, or a quarantine).
    copies: HashMap<(ChunkId, Scope), Known>,
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
    /// The object of `id` that `who` may count on, if one is known and can
    /// be trusted at `now`: the first upload when it counts for `who`,
    /// else the copy of `who`'s scope.
    pub fn present(&self, id: &ChunkId, who: &Uploader, now: u64) -> Option<Known> {
        let trusted = |k: &&Known| k.retain_until >= now.saturating_add(TRUST_MARGIN_SECS);
        let first = self.chunks.get(id).filter(|k| who.counts(k.owner)).filter(trusted);
        first.or_else(|| self.copies.get(&(*id, who.scope)).filter(trusted)).copied()
    }

    /// Who uploaded the first upload of `id`, if known (`Some(None)`: an
    /// upload from before scopes).
    pub fn first_owner(&self, id: &ChunkId, now: u64) -> Option<Option<Scope>> {
        self.chunks.get(id).filter(|k| k.retain_until >= now.saturating_add(TRUST_MARGIN_SECS)).map(|k| k.owner)
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
        self.chunks.len() + self.copies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.copies.is_empty()
    }

    /// Merges what is known of an object of `id`: the later lock, the
    /// exact key. What a store recorded beside a first upload decides its
    /// owner; an index segment only says whose scope used it, which is its
    /// owner or, for an upload from before scopes, narrower.
    pub fn record(&mut self, id: ChunkId, known: Known) {
        let entry = match known.owner.filter(|_| known.copy) {
            Some(scope) => self.copies.entry((id, scope)).or_insert(known),
            None => self.chunks.entry(id).or_insert(known),
        };
        entry.retain_until = entry.retain_until.max(known.retain_until);
        if !matches!(entry.sealed_by, SealedBy::Key(_)) {
            entry.sealed_by = known.sealed_by;
        }
        if known.owner.is_none() {
            entry.owner = None;
        }
    }

    /// What the store itself says of an object of `id` (a HEAD's answer,
    /// or an upload this proxy just created): it replaces whatever the
    /// catalog held, which may describe an object expiry deleted since (on
    /// another proxy) and another identity uploaded again.
    pub fn observe(&mut self, id: ChunkId, known: Known) {
        match known.owner.filter(|_| known.copy) {
            Some(scope) => self.copies.insert((id, scope), known),
            None => self.chunks.insert(id, known),
        };
    }

    /// What a HEAD answered: of the first upload of `id`, or (`copy`) of
    /// that scope's copy. `owner` is whose the first upload counts as
    /// (what the store recorded beside it, judged by `App::owner_of`).
    pub fn record_head(&mut self, id: ChunkId, meta: &ObjectMeta, copy: Option<Scope>, owner: Option<Scope>) {
        let Some(retain_until) = meta.retain_until else { return };
        let sealed_by = meta.sealed_by.map_or(SealedBy::Unknown, SealedBy::Key);
        let (owner, copy) = match copy {
            Some(scope) => (Some(scope), true),
            None => (owner, false),
        };
        self.observe(id, Known { size: meta.size, retain_until, sealed_by, owner, copy });
    }

    /// Every chunk of a committed snapshot's index segment. A segment from
    /// before scopes (no scope) committed after `scopes_since` is an old
    /// proxy's: its chunks count for no one until a HEAD says whose they are.
    pub fn record_index(&mut self, index: &IndexSegment, scopes_since: u64) {
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
        let owner = match index.scope {
            None if index.committed >= scopes_since => Some(Scope::UNSCOPED),
            scope => scope,
        };
        for e in &index.chunks {
            let (size, retain_until, copy) = (u64::from(e.size), e.retain_until, e.copy);
            self.record(e.id, Known { size, retain_until, sealed_by, owner, copy });
        }
    }

    pub fn merged(&self, snapshot: &SnapshotId) -> bool {
        self.merged.contains(snapshot)
    }

    /// Forgets a chunk object expiry deleted: the first upload of `id`,
    /// or a scope's copy.
    pub fn forget(&mut self, id: &ChunkId, copy: Option<Scope>) {
        match copy {
            Some(scope) => self.copies.remove(&(*id, scope)),
            None => self.chunks.remove(id),
        };
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

    /// Forgets a chunk object expiry deleted.
    pub async fn forget(&self, repo: &RepoName, id: &ChunkId, copy: Option<Scope>) {
        let found = self.repos.lock().expect("not poisoned").iter().find(|(r, _)| r == repo).map(|(_, c)| c.clone());
        if let Some(c) = found {
            c.lock().await.forget(id, copy);
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

    fn scope(n: u8) -> Scope {
        Scope::from_bytes([n; 8])
    }

    fn who(n: u8) -> Uploader {
        Uploader { scope: scope(n), legacy: true }
    }

    fn known(retain_until: u64, sealed_by: SealedBy, owner: Option<Scope>, copy: bool) -> Known {
        Known { size: 10, retain_until, sealed_by, owner, copy }
    }

    #[test]
    fn an_entry_is_trusted_only_while_its_lock_is_well_in_the_future() {
        let mut c = RepoCatalog::default();
        let (key, a) = (KeyId::from_bytes([9; 16]), scope(1));
        c.record(id(1), known(NOW + TRUST_MARGIN_SECS, SealedBy::Key(key), Some(a), false));
        c.record(id(2), known(NOW + 60, SealedBy::Key(key), Some(a), false));
        assert!(c.present(&id(1), &who(1), NOW).is_some());
        assert!(c.present(&id(2), &who(1), NOW).is_none(), "expiry may delete it soon: ask the store");
        assert!(c.present(&id(1), &who(1), NOW + 1).is_none(), "the margin passes with time");
        assert!(c.present(&id(3), &who(1), NOW).is_none(), "never seen");
        // Locks only grow: a later, shorter record does not shorten it.
        c.record(id(1), known(NOW, SealedBy::Unknown, Some(a), false));
        assert_eq!(c.present(&id(1), &who(1), NOW).unwrap().retain_until, NOW + TRUST_MARGIN_SECS);
        assert_eq!(c.present(&id(1), &who(1), NOW).unwrap().sealed_by, SealedBy::Key(key), "the exact key is kept");
        c.forget(&id(1), None);
        assert!(c.present(&id(1), &who(1), NOW).is_none());
    }

    #[test]
    fn an_upload_answers_only_for_its_own_scope_and_copies_stand_apart() {
        let mut c = RepoCatalog::default();
        let (a, b, later) = (scope(1), scope(2), NOW * 2);
        c.record(id(1), known(later, SealedBy::Unknown, Some(a), false));
        assert!(c.present(&id(1), &who(1), NOW).is_some());
        assert!(c.present(&id(1), &who(2), NOW).is_none(), "a's upload never answers for b");
        assert_eq!(c.first_owner(&id(1), NOW), Some(Some(a)));
        // b's copy beside it answers for b, and is stored at b's copy.
        c.record(id(1), known(later, SealedBy::Unknown, Some(b), true));
        let found = c.present(&id(1), &who(2), NOW).unwrap();
        let repo: RepoName = "dev/db".parse().unwrap();
        assert_eq!(found.key(&repo, &id(1)), coffer_proto::layout::chunk_copy(&repo, &id(1), &b));
        assert_eq!(
            c.present(&id(1), &who(1), NOW).unwrap().key(&repo, &id(1)),
            coffer_proto::layout::chunk(&repo, &id(1))
        );
        assert_eq!(c.len(), 2);
        c.forget(&id(1), Some(b));
        assert!(c.present(&id(1), &who(2), NOW).is_none());
        assert!(c.present(&id(1), &who(1), NOW).is_some(), "forgetting a copy keeps the first upload");
        // An upload from before scopes answers for everyone; what the store
        // recorded beside the object wins over what a segment implied.
        c.record(id(2), known(later, SealedBy::Unknown, Some(a), false));
        c.record(id(2), known(later, SealedBy::Unknown, None, false));
        assert!(c.present(&id(2), &who(2), NOW).is_some());
    }

    #[test]
    fn an_index_segment_gives_each_chunk_its_snapshots_keys_and_scope_once() {
        let mut c = RepoCatalog::default();
        let keys = vec![KeyId::from_bytes([1; 16]), KeyId::from_bytes([2; 16])];
        let entry = |n, copy| IndexEntry { id: id(n), size: 5, retain_until: NOW + 86_400, copy };
        let index = IndexSegment {
            snapshot: SnapshotId::from_bytes([7; 16]),
            committed: NOW,
            retain_until: NOW + 86_400,
            stats: SnapshotStats::default(),
            keys: Some(keys.clone()),
            scope: Some(scope(1)),
            chunks: vec![entry(1, false), entry(2, true)],
        };
        c.record_index(&index, u64::MAX);
        c.record_index(&index, u64::MAX);
        let known = c.present(&id(1), &who(1), NOW).unwrap();
        assert_eq!(c.keys_of(&known), Some(keys));
        assert_eq!(c.key_sets.len(), 1, "a segment is merged once");
        assert!(c.merged(&index.snapshot));
        assert!(c.present(&id(1), &who(2), NOW).is_none(), "another scope's snapshot");
        assert!(c.present(&id(2), &who(1), NOW).unwrap().copy);
        assert_eq!(c.first_owner(&id(2), NOW), None, "a copy says nothing of the first upload");
        // A segment from before scopes: its uploads answer for everyone.
        let old = IndexSegment {
            snapshot: SnapshotId::from_bytes([8; 16]),
            scope: None,
            chunks: vec![entry(3, false)],
            ..index
        };
        c.record_index(&old, NOW + 1);
        assert!(c.present(&id(3), &who(2), NOW).is_some());
        // ... except for an identity whose uploads were quarantined.
        assert!(c.present(&id(3), &Uploader { scope: scope(2), legacy: false }, NOW).is_none());
        // One an old proxy wrote after scopes began counts for no one.
        let late = IndexSegment { snapshot: SnapshotId::from_bytes([9; 16]), chunks: vec![entry(4, false)], ..old };
        c.record_index(&late, NOW);
        assert!(c.present(&id(4), &who(2), NOW).is_none());
        assert!(c.present(&id(4), &Uploader { scope: Scope::UNSCOPED, legacy: true }, NOW).is_some(), "recorded");
    }

    #[test]
    fn the_least_recently_used_catalogs_go_first() {
        let cats = Catalogs::new(2);
        let (a, b): (RepoName, RepoName) = ("dev/a".parse().unwrap(), "dev/b".parse().unwrap());
        let k = known(NOW * 2, SealedBy::Unknown, None, false);
        cats.of(&a).try_lock().unwrap().record(id(1), k);
        cats.of(&a).try_lock().unwrap().record(id(2), k);
        cats.of(&b).try_lock().unwrap().record(id(3), k);
        cats.trim();
        assert!(cats.of(&a).try_lock().unwrap().is_empty(), "a was used least recently and went");
        assert_eq!(cats.of(&b).try_lock().unwrap().len(), 1);
    }
}
