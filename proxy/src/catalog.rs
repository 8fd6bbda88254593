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
//! Memory: an entry is a 48-byte table slot (the id, the size, the lock,
//! and indexes of its data key and owner, which are kept once each); the
//! table grows by doubling and stays at most 7/8 full, so a million chunks
//! take 55 to 100 MiB (`coffer-bench catalog`). The catalogs
//! hold at most `max_chunks` entries over all repositories; the least
//! recently used repository's catalog is dropped first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use coffer_proto::snapshot::IndexView;
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

/// The catalog keys on the whole id. (A 16-byte prefix would halve the
/// table, but the proxy never checks an upload against its id, so a writer
/// can upload under an id that shares a prefix with another's on purpose,
/// and its entry would then answer for the other's chunk.)
type Prefix = ChunkId;

fn prefix(id: &ChunkId) -> Prefix {
    *id
}

/// One entry as stored: 15 bytes, so with its 32-byte key a table slot
/// is 48 bytes.
#[derive(Clone, Copy)]
struct Entry {
    size: u32,
    /// Unix seconds, clamped to u32 (past 2106 means "far").
    until: u32,
    /// Two tag bits (0 unknown, 1 a key, 2 a snapshot's key set) and an
    /// index into the catalog's keys or key sets.
    sealed: u32,
    /// An index into the catalog's owners (0: from before scopes).
    owner: u16,
    copy: bool,
}

const SEALED_KEY: u32 = 1 << 30;
const SEALED_SET: u32 = 2 << 30;
const SEALED_INDEX: u32 = (1 << 30) - 1;

/// One repository's catalog.
pub struct RepoCatalog {
    /// The first upload of each id.
    chunks: HashMap<Prefix, Entry>,
    /// Copies beside a first upload, by id and owner: rare (several
    /// writers of one repository, or a quarantine).
    copies: HashMap<(Prefix, u16), Entry>,
    /// Data keys and owners, each stored once and named by index.
    keys: Vec<KeyId>,
    key_index: HashMap<KeyId, u32>,
    owners: Vec<Option<Scope>>,
    owner_index: HashMap<Option<Scope>, u16>,
    key_sets: Vec<Box<[KeyId]>>,
    /// Index segments already merged.
    merged: HashSet<SnapshotId>,
    /// Whether the newest segments were read in once.
    pub loaded: bool,
    /// When the committed snapshots were last looked at for segments this
    /// proxy has not merged (other proxies' commits).
    pub refreshed: u64,
}

impl Default for RepoCatalog {
    fn default() -> Self {
        Self {
            chunks: HashMap::new(),
            copies: HashMap::new(),
            keys: Vec::new(),
            key_index: HashMap::new(),
            owners: vec![None],
            owner_index: HashMap::from([(None, 0)]),
            key_sets: Vec::new(),
            merged: HashSet::new(),
            loaded: false,
            refreshed: 0,
        }
    }
}

impl RepoCatalog {
    /// The index of `owner`, added if new; `None` when the table is full
    /// (then nothing of that owner is recorded: the store is asked).
    fn owner_ix(&mut self, owner: Option<Scope>) -> Option<u16> {
        if let Some(&i) = self.owner_index.get(&owner) {
            return Some(i);
        }
        let i = u16::try_from(self.owners.len()).ok()?;
        self.owners.push(owner);
        self.owner_index.insert(owner, i);
        Some(i)
    }

    fn owner_lookup(&self, owner: &Option<Scope>) -> Option<u16> {
        self.owner_index.get(owner).copied()
    }

    fn pack(&mut self, known: &Known) -> Option<Entry> {
        let sealed = match known.sealed_by {
            SealedBy::Unknown => 0,
            SealedBy::OneOf(i) if i <= SEALED_INDEX => SEALED_SET | i,
            SealedBy::OneOf(_) => 0,
            SealedBy::Key(k) => {
                let next = self.keys.len() as u32;
                let i = *self.key_index.entry(k).or_insert(next);
                if i == next {
                    self.keys.push(k);
                }
                if i <= SEALED_INDEX {
                    SEALED_KEY | i
                } else {
                    0
                }
            }
        };
        Some(Entry {
            size: known.size.min(u64::from(u32::MAX)) as u32,
            until: known.retain_until.min(u64::from(u32::MAX)) as u32,
            sealed,
            owner: self.owner_ix(known.owner)?,
            copy: known.copy,
        })
    }

    fn unpack(&self, e: &Entry) -> Known {
        let index = e.sealed & SEALED_INDEX;
        let sealed_by = match e.sealed & !SEALED_INDEX {
            SEALED_KEY => SealedBy::Key(self.keys[index as usize]),
            SEALED_SET => SealedBy::OneOf(index),
            _ => SealedBy::Unknown,
        };
        Known {
            size: u64::from(e.size),
            retain_until: u64::from(e.until),
            sealed_by,
            owner: self.owners[usize::from(e.owner)],
            copy: e.copy,
        }
    }

    /// The object of `id` that `who` may count on, if one is known and can
    /// be trusted at `now`: the first upload when it counts for `who`,
    /// else the copy of `who`'s scope.
    pub fn present(&self, id: &ChunkId, who: &Uploader, now: u64) -> Option<Known> {
        let p = prefix(id);
        let trusted = |k: &Known| k.retain_until >= now.saturating_add(TRUST_MARGIN_SECS);
        let first = self.chunks.get(&p).map(|e| self.unpack(e)).filter(|k| who.counts(k.owner) && trusted(k));
        first.or_else(|| {
            let owner = self.owner_lookup(&Some(who.scope))?;
            self.copies.get(&(p, owner)).map(|e| self.unpack(e)).filter(trusted)
        })
    }

    /// Who uploaded the first upload of `id`, if known (`Some(None)`: an
    /// upload from before scopes).
    pub fn first_owner(&self, id: &ChunkId, now: u64) -> Option<Option<Scope>> {
        let known = self.chunks.get(&prefix(id)).map(|e| self.unpack(e))?;
        (known.retain_until >= now.saturating_add(TRUST_MARGIN_SECS)).then_some(known.owner)
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
    /// exact key. An index segment only says whose scope used it, which is
    /// its owner or, for an upload from before scopes, narrower; so an
    /// owner from before scopes wins.
    pub fn record(&mut self, id: ChunkId, known: Known) {
        let Some(new) = self.pack(&known) else { return };
        let p = prefix(&id);
        let entry = match known.copy {
            true => self.copies.entry((p, new.owner)).or_insert(new),
            false => self.chunks.entry(p).or_insert(new),
        };
        // Two different owners, neither from before scopes: the object was
        // deleted (expiry, on another proxy) and uploaded again by the new
        // one. What was known of the old one says nothing of it.
        if entry.owner != new.owner && entry.owner != 0 && new.owner != 0 {
            *entry = new;
            return;
        }
        entry.until = entry.until.max(new.until);
        if entry.sealed & !SEALED_INDEX != SEALED_KEY {
            entry.sealed = new.sealed;
        }
        if new.owner == 0 {
            entry.owner = 0;
        }
    }

    /// What the store itself says of an object of `id` (a HEAD's answer,
    /// or an upload this proxy just created): it replaces whatever the
    /// catalog held, which may describe an object expiry deleted since (on
    /// another proxy) and another identity uploaded again.
    pub fn observe(&mut self, id: ChunkId, known: Known) {
        let Some(new) = self.pack(&known) else { return };
        let p = prefix(&id);
        match known.copy {
            true => self.copies.insert((p, new.owner), new),
            false => self.chunks.insert(p, new),
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
    pub fn record_index(&mut self, index: &IndexView<'_>, scopes_since: u64) {
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
        for e in index.entries() {
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
        let p = prefix(id);
        match copy {
            Some(scope) => {
                if let Some(owner) = self.owner_lookup(&Some(scope)) {
                    self.copies.remove(&(p, owner));
                }
            }
            None => {
                self.chunks.remove(&p);
            }
        }
    }

    /// Records that the lock of the first upload of `id`, or (`copy`) of
    /// that scope's copy, was extended to `until`, if the object is known.
    pub fn raise(&mut self, id: &ChunkId, copy: Option<Scope>, until: u64) {
        let p = prefix(id);
        let entry = match copy {
            Some(scope) => match self.owner_lookup(&Some(scope)) {
                Some(owner) => self.copies.get_mut(&(p, owner)),
                None => None,
            },
            None => self.chunks.get_mut(&p),
        };
        if let Some(e) = entry {
            e.until = e.until.max(until.min(u64::from(u32::MAX)) as u32);
        }
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
mod tests;
