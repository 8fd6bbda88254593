use coffer_proto::snapshot::{IndexEntry, IndexSegment, SnapshotStats};

use super::*;

const NOW: u64 = 1_000_000_000;

fn id(n: u8) -> ChunkId {
    ChunkId::from_bytes([n; 32])
}

/// Records a segment as a proxy reads it: encoded, then viewed in place.
fn record(c: &mut RepoCatalog, index: &IndexSegment, scopes_since: u64) {
    let bytes = index.encode();
    c.record_index(&IndexView::decode(&bytes).unwrap(), scopes_since);
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
    assert_eq!(c.present(&id(1), &who(1), NOW).unwrap().key(&repo, &id(1)), coffer_proto::layout::chunk(&repo, &id(1)));
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
    record(&mut c, &index, u64::MAX);
    record(&mut c, &index, u64::MAX);
    let known = c.present(&id(1), &who(1), NOW).unwrap();
    assert_eq!(c.keys_of(&known), Some(keys));
    assert_eq!(c.key_sets.len(), 1, "a segment is merged once");
    assert!(c.merged(&index.snapshot));
    assert!(c.present(&id(1), &who(2), NOW).is_none(), "another scope's snapshot");
    assert!(c.present(&id(2), &who(1), NOW).unwrap().copy);
    assert_eq!(c.first_owner(&id(2), NOW), None, "a copy says nothing of the first upload");
    // A segment from before scopes: its uploads answer for everyone.
    let old =
        IndexSegment { snapshot: SnapshotId::from_bytes([8; 16]), scope: None, chunks: vec![entry(3, false)], ..index };
    record(&mut c, &old, NOW + 1);
    assert!(c.present(&id(3), &who(2), NOW).is_some());
    // ... except for an identity whose uploads were quarantined.
    assert!(c.present(&id(3), &Uploader { scope: scope(2), legacy: false }, NOW).is_none());
    // One an old proxy wrote after scopes began counts for no one.
    let late = IndexSegment { snapshot: SnapshotId::from_bytes([9; 16]), chunks: vec![entry(4, false)], ..old };
    record(&mut c, &late, NOW);
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

/// A segment that says another scope used an id's first upload means the
/// object was uploaded again (expiry deleted the old one, on another
/// proxy): the old owner's entry, and its lock, are not carried over.
#[test]
fn a_new_owner_replaces_a_stale_entry_instead_of_refreshing_it() {
    let mut c = RepoCatalog::default();
    c.record(id(1), known(NOW + 60, SealedBy::Unknown, Some(scope(1)), false));
    c.record(id(1), known(NOW * 2, SealedBy::Unknown, Some(scope(2)), false));
    assert!(c.present(&id(1), &who(1), NOW).is_none(), "the old owner's entry is not revived");
    assert!(c.present(&id(1), &who(2), NOW).is_some());
}
