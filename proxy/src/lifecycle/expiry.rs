//! Deleting what retention no longer protects.
//!
//! [`expiry_plan`] decides, from the store alone, what may go; the admin
//! call `expire` and the lifecycle pass delete it with [`delete_doomed`].

use std::collections::BTreeSet;

use coffer_proto::layout;
use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{KeyId, RepoName, SnapshotId};
use serde::Serialize;

use crate::access::switches::{hold_prefix, read_switch};
use crate::app::App;
use crate::store::{ObjectStore, StoreError};

/// One object expiry deletes (or, in a dry run, would), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub key: String,
    pub reason: String,
}

/// What expiry would delete in `repo` at `now`, in the order to delete it:
/// listing packs whose lock has ended, roots and indexes of snapshots whose root's lock ended (a schedule may
/// have extended it past the commit's date) and that are neither held nor
/// in `spare` (a schedule's keepers), index segments left by commits that
/// never completed, then chunks
/// no remaining snapshot references whose own lock has ended and that are
/// not held, then data key records that neither a remaining snapshot nor a
/// remaining chunk was sealed with, whose lock has ended and that are not
/// held. The config and the key epochs stay while the repository exists.
pub async fn expiry_plan(
    store: &dyn ObjectStore,
    repo: &RepoName,
    now: u64,
    spare: &BTreeSet<SnapshotId>,
) -> Result<(Vec<Doomed>, Vec<String>), StoreError> {
    let mut doomed = Vec::new();
    let mut held = Vec::new();
    let mut live: BTreeSet<coffer_proto::ChunkId> = BTreeSet::new();
    let mut live_keys: BTreeSet<KeyId> = BTreeSet::new();
    // Why every key record must stay, if one must: something that survives
    // does not say which keys it needs.
    let mut keep_all_keys: Option<String> = None;
    let roots: BTreeSet<String> =
        store.list(&layout::prefix(repo, layout::Kind::Snapshots)).await?.into_iter().collect();
    let (pack_keys, index_keys): (Vec<String>, Vec<String>) =
        store.list(&layout::prefix(repo, layout::Kind::Index)).await?.into_iter().partition(|k| layout::is_pack(k));
    // Listing packs first: each is locked only until its first snapshot's
    // lock ends, so one that is unlocked goes before anything else; one
    // still locked keeps the key records it copies (SPEC §7 "Listing packs").
    for key in pack_keys {
        let Some(meta) = store.head(&key).await? else { continue };
        if meta.deletable(&key, now).is_ok() {
            doomed.push(Doomed { key, reason: "a listing pack whose lock has ended".into() });
            continue;
        }
        let bound = coffer_proto::snapshot::pack::PACK_BYTES_MAX + 1;
        match store.get_head(&key, bound).await?.map(|b| coffer_proto::snapshot::pack::decode(&b)) {
            None => {}
            Some(Ok(entries)) => {
                for e in entries {
                    match coffer_proto::envelope::parse_header(&e.root) {
                        Ok(h) => live_keys.insert(h.key_id),
                        Err(_) => continue,
                    };
                }
            }
            Some(Err(e)) => keep_all_keys = Some(format!("listing pack {key} is unreadable ({e})")),
        }
    }
    for index_key in index_keys {
        let Some(id) = index_key.rsplit('/').next().and_then(|s| s.parse::<SnapshotId>().ok()) else { continue };
        let Some(bytes) = store.get(&index_key).await? else { continue };
        let Ok(index) = IndexSegment::decode(&bytes) else {
            // Unreadable: keep it and everything, rather than guess.
            return Err(StoreError::Backend {
                key: index_key,
                message: "unreadable index segment".into(),
                retryable: false,
            });
        };
        let root = layout::snapshot(repo, &id);
        let root_meta = if roots.contains(&root) { store.head(&root).await? } else { None };
        let has_root = root_meta.is_some();
        let locked_until = match &root_meta {
            Some(m) => m.retain_until.unwrap_or(u64::MAX),
            None => index.retain_until,
        };
        let ended = locked_until <= now && !spare.contains(&id);
        let switch_on = read_switch(store, &hold_prefix(repo, &id)).await? == Some(true);
        let root_held = root_meta.is_some_and(|m| m.legal_hold);
        if ended && (switch_on || root_held) {
            held.push(id.to_string());
        }
        if ended && !switch_on && !root_held {
            let why = if has_root {
                format!("snapshot {id}: retention ended at {locked_until}")
            } else {
                format!("index of a commit that never completed, retention ended at {locked_until}")
            };
            if has_root {
                doomed.push(Doomed { key: root, reason: why.clone() });
            }
            doomed.push(Doomed { key: index_key, reason: why });
        } else {
            live.extend(index.chunks.iter().map(|e| e.id));
            match &index.keys {
                Some(ids) => live_keys.extend(ids),
                None => keep_all_keys = Some(format!("index segment {id} is from before key ids were recorded")),
            }
        }
    }
    let chunk_keys = store.list(&layout::prefix(repo, layout::Kind::Chunks)).await?;
    // Ids stored more than once (a first upload and copies beside it).
    let copied: BTreeSet<coffer_proto::ChunkId> =
        chunk_keys.iter().filter_map(|k| layout::chunk_of(k)).filter(|(_, c)| c.is_some()).map(|(id, _)| id).collect();
    for key in chunk_keys {
        // The first upload of an id and every scope's copy beside it go
        // together: all are kept while a snapshot references the id. A
        // reader may need any of them (the one its snapshot names may be a
        // plant that only a copy replaces), so the key of each stays too.
        let Some((id, _)) = layout::chunk_of(&key) else { continue };
        if live.contains(&id) {
            if copied.contains(&id) {
                match store.head(&key).await?.and_then(|m| m.sealed_by) {
                    Some(k) => {
                        live_keys.insert(k);
                    }
                    None => keep_all_keys = Some(format!("{key} is from before key ids were recorded")),
                }
            }
            continue;
        }
        let Some(meta) = store.head(&key).await? else { continue };
        if meta.deletable(&key, now).is_ok() {
            doomed.push(Doomed { key, reason: "no remaining snapshot references it, and its lock has ended".into() });
        } else {
            match meta.sealed_by {
                Some(k) => {
                    live_keys.insert(k);
                }
                None => keep_all_keys = Some(format!("chunk {id} is from before key ids were recorded")),
            }
        }
    }
    if let Some(why) = keep_all_keys {
        tracing::info!(%repo, "expiry keeps every key record: {why}");
        return Ok((doomed, held));
    }
    let prefix = layout::prefix(repo, layout::Kind::Keys);
    for key in store.list(&prefix).await? {
        let Ok(id) = key[prefix.len()..].parse::<KeyId>() else { continue };
        if live_keys.contains(&id) {
            continue;
        }
        let Some(meta) = store.head(&key).await? else { continue };
        if meta.deletable(&key, now).is_ok() {
            doomed.push(Doomed {
                key,
                reason: "no remaining snapshot or chunk was sealed with this data key, and its lock has ended".into(),
            });
        }
    }
    Ok((doomed, held))
}

/// What deleting a plan's objects did.
#[derive(Debug, Default, Serialize)]
pub struct Deleted {
    pub deleted: Vec<Doomed>,
    /// Objects that could not be deleted (they stay; expiry can run again).
    pub failed: Vec<Doomed>,
}

/// Deletes `doomed` in plan order (roots first, so snapshots disappear
/// before anything they need; key records last, and none once anything
/// failed), forgetting what this proxy remembered of each.
pub async fn delete_doomed(app: &App, repo: &RepoName, doomed: Vec<Doomed>, now: u64) -> Deleted {
    let mut out = Deleted::default();
    let key_prefix = layout::prefix(repo, layout::Kind::Keys);
    let chunk_prefix = layout::prefix(repo, layout::Kind::Chunks);
    let root_prefix = layout::prefix(repo, layout::Kind::Snapshots);
    // Snapshots whose root stays (held since the plan, or its delete
    // failed): their index segment stays with it, and no chunk is deleted
    // in this run, since the plan counted them as going.
    let mut kept_roots: Vec<SnapshotId> = Vec::new();
    // The keys the packs stored now copy, read before the first key record
    // goes: a pack written since the plan was made keeps its keys too.
    let mut copied: Option<PackCopies> = None;
    let mut kept_for_packs = 0;
    for d in doomed {
        let root = d.key.strip_prefix(&root_prefix).and_then(|n| n.parse::<SnapshotId>().ok());
        let index = layout::id_of::<SnapshotId>(&d.key).filter(|_| d.key.contains("/index/"));
        let key_id = d.key.strip_prefix(&key_prefix).and_then(|k| k.parse::<KeyId>().ok());
        let skip = if index.is_some_and(|id| kept_roots.contains(&id)) {
            Some("kept: its snapshot's root stays".to_string())
        } else if (d.key.starts_with(&chunk_prefix) || key_id.is_some()) && !kept_roots.is_empty() {
            Some("kept: a snapshot could not be deleted; run expire again".to_string())
        } else if key_id.is_some() && out.failed.len() > kept_for_packs {
            // A chunk that stays may have been sealed with this key: keep
            // it, so the chunk stays readable, until a run deletes both.
            Some("kept: other objects could not be deleted; run expire again".to_string())
        } else if let Some(id) = root {
            held_since(app, repo, &id, &d.key).await
        } else if let Some(id) = key_id {
            if copied.is_none() {
                copied = Some(keys_packs_copy(&*app.store, repo).await);
            }
            match copied.as_ref().expect("just read") {
                PackCopies::Keys(ids) if ids.contains(&id) => {
                    // Not a failure: the other keys may still go.
                    kept_for_packs += 1;
                    Some("kept: a listing pack copies it".to_string())
                }
                PackCopies::Keys(_) => None,
                PackCopies::Unknown(why) => Some(format!("kept: {why}")),
            }
        } else {
            None
        };
        if let Some(reason) = skip {
            kept_roots.extend(root);
            out.failed.push(Doomed { key: d.key, reason });
            continue;
        }
        match app.store.delete(&d.key, now).await {
            Ok(()) => {
                if let Some(id) = key_id {
                    app.forget_key(repo, id);
                }
                if let Some(id) = root {
                    app.snapshot_infos.lock().expect("not poisoned").remove(&(repo.clone(), id));
                }
                if d.key.starts_with(&chunk_prefix) {
                    if let Some((id, copy)) = layout::chunk_of(&d.key) {
                        app.catalogs.forget(repo, &id, copy).await;
                    }
                }
                out.deleted.push(d);
            }
            Err(e) => {
                kept_roots.extend(root);
                out.failed.push(Doomed { key: d.key, reason: e.to_string() });
            }
        }
    }
    out
}

/// What the listing packs stored now copy of a repository's key records.
enum PackCopies {
    /// The keys of their roots.
    Keys(BTreeSet<KeyId>),
    /// Why that is unknown (every key record then stays).
    Unknown(String),
}

async fn keys_packs_copy(store: &dyn ObjectStore, repo: &RepoName) -> PackCopies {
    let mut out = BTreeSet::new();
    let packs = match store.list(&layout::packs(repo)).await {
        Ok(packs) => packs,
        Err(e) => return PackCopies::Unknown(format!("the listing packs could not be listed: {e}")),
    };
    for key in packs.iter().filter(|k| layout::is_pack(k)) {
        let bytes = match store.get_head(key, coffer_proto::snapshot::pack::PACK_BYTES_MAX + 1).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => continue,
            Err(e) => return PackCopies::Unknown(format!("listing pack {key} could not be read: {e}")),
        };
        match coffer_proto::snapshot::pack::decode(&bytes) {
            Ok(entries) => out.extend(
                entries.iter().filter_map(|e| coffer_proto::envelope::parse_header(&e.root).ok()).map(|h| h.key_id),
            ),
            Err(e) => return PackCopies::Unknown(format!("listing pack {key} is unreadable: {e}")),
        }
    }
    PackCopies::Keys(out)
}

/// Why a root must stay after all: a legal hold put on its snapshot since
/// the plan was made (its switch, or the hold on the root itself).
async fn held_since(app: &App, repo: &RepoName, id: &SnapshotId, root: &str) -> Option<String> {
    let switch = read_switch(&*app.store, &hold_prefix(repo, id)).await;
    let on_root = app.store.head(root).await.map(|m| m.is_some_and(|m| m.legal_hold));
    match (switch, on_root) {
        (Ok(Some(true)), _) | (_, Ok(true)) => Some("kept: a legal hold was put on it".into()),
        (Err(e), _) | (_, Err(e)) => Some(format!("kept: its hold could not be read: {e}")),
        _ => None,
    }
}

/// Every object a snapshot needs: its root and index, its chunks (the
/// objects it names, and every other object of the same ids: first
/// uploads and copies), the data keys that sealed them (all of the
/// repository's for a segment from before key ids were recorded), the
/// config and the chunk-id key epochs. `None` when it has no index segment.
pub async fn objects_of(
    store: &dyn ObjectStore,
    repo: &RepoName,
    snapshot: SnapshotId,
) -> Result<Option<BTreeSet<String>>, StoreError> {
    let index_key = layout::index(repo, &snapshot);
    let Some(index) = store.get(&index_key).await? else { return Ok(None) };
    let index = IndexSegment::decode(&index).map_err(|e| StoreError::Backend {
        key: index_key.clone(),
        message: format!("unreadable index segment: {e}"),
        retryable: false,
    })?;
    let copy = |e: &coffer_proto::snapshot::IndexEntry| index.scope.filter(|_| e.copy);
    let mut out: BTreeSet<String> =
        index.chunks.iter().map(|e| layout::chunk_at(repo, &e.id, copy(e).as_ref())).collect();
    // Every other object of its ids too: the first uploads and the copies
    // beside them, one of which may be what a reader of it needs.
    let ids: BTreeSet<coffer_proto::ChunkId> = index.chunks.iter().map(|e| e.id).collect();
    // Only what is listed: a copy may outlive its id's first upload.
    let listed = store.list(&layout::prefix(repo, layout::Kind::Chunks)).await?;
    let copied: BTreeSet<coffer_proto::ChunkId> = listed
        .iter()
        .filter_map(|k| layout::chunk_of(k))
        .filter(|(id, copy)| copy.is_some() && ids.contains(id))
        .map(|(id, _)| id)
        .collect();
    let others: BTreeSet<String> =
        listed.into_iter().filter(|k| layout::chunk_of(k).is_some_and(|(id, _)| copied.contains(&id))).collect();
    for key in &others {
        if let Some(k) = store.head(key).await?.and_then(|m| m.sealed_by) {
            out.insert(layout::key(repo, &k));
        }
    }
    out.extend(others);
    out.insert(index_key);
    out.insert(layout::snapshot(repo, &snapshot));
    out.insert(layout::config(repo));
    out.extend(store.list(&layout::prefix(repo, layout::Kind::Epochs)).await?);
    match &index.keys {
        Some(ids) => out.extend(ids.iter().map(|k| layout::key(repo, k))),
        None => out.extend(store.list(&layout::prefix(repo, layout::Kind::Keys)).await?),
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use coffer_proto::snapshot::{IndexEntry, SnapshotStats};
    use coffer_proto::ChunkId;

    use super::*;
    use crate::store::{FsStore, Recorded};

    const NOW: u64 = 1_000_000;

    fn key_id(n: u8) -> KeyId {
        KeyId::from_bytes([n; 16])
    }

    async fn put(store: &FsStore, key: &str, body: Vec<u8>, until: u64, sealed_by: Option<KeyId>) {
        let recorded = Recorded { digest: *blake3::hash(&body).as_bytes(), sealed_by, scope: None };
        store.put_object(key, Bytes::from(body), until, recorded).await.unwrap();
    }

    async fn segment(store: &FsStore, repo: &RepoName, n: u8, keys: Option<Vec<KeyId>>, chunk: ChunkId) {
        let id = SnapshotId::from_bytes([n; 16]);
        let index = IndexSegment {
            snapshot: id,
            committed: 1,
            retain_until: NOW + 10,
            stats: SnapshotStats::default(),
            keys,
            scope: None,
            chunks: vec![IndexEntry { id: chunk, size: 1, retain_until: NOW + 10, copy: false }],
        };
        put(store, &layout::index(repo, &id), index.encode(), NOW + 10, None).await;
        put(store, &layout::snapshot(repo, &id), vec![n], NOW + 10, None).await;
    }

    fn doomed_keys(doomed: &[Doomed]) -> Vec<&str> {
        doomed.iter().map(|d| d.key.as_str()).filter(|k| k.contains("/keys/")).collect()
    }

    #[tokio::test]
    async fn key_records_go_once_nothing_that_stays_was_sealed_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        // Key 1 seals a live snapshot's chunk; key 2 an unreferenced chunk
        // still locked; key 3 nothing that stays; key 4 nothing, but it is
        // still locked itself. Every key record's own lock has ended but 4's.
        let (live, orphan) = (ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32]));
        put(&store, &layout::chunk(&repo, &live), vec![1], NOW + 10, Some(key_id(1))).await;
        put(&store, &layout::chunk(&repo, &orphan), vec![2], NOW + 10, Some(key_id(2))).await;
        for n in 1..=4 {
            let until = if n == 4 { NOW + 10 } else { NOW - 10 };
            put(&store, &layout::key(&repo, &key_id(n)), vec![n], until, None).await;
        }
        segment(&store, &repo, 1, Some(vec![key_id(1)]), live).await;

        let (doomed, _) = expiry_plan(&store, &repo, NOW, &BTreeSet::new()).await.unwrap();
        assert_eq!(doomed_keys(&doomed), [layout::key(&repo, &key_id(3))]);

        // A segment from before key ids were recorded may need any key.
        segment(&store, &repo, 2, None, live).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW, &BTreeSet::new()).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }

    #[tokio::test]
    async fn a_surviving_chunk_of_unknown_key_keeps_every_key_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        put(&store, &layout::chunk(&repo, &ChunkId::from_bytes([2; 32])), vec![2], NOW + 10, None).await;
        put(&store, &layout::key(&repo, &key_id(3)), vec![3], NOW - 10, None).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW, &BTreeSet::new()).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }

    /// A live snapshot names an id whose first upload is a plant and whose
    /// good content is a copy beside it, sealed with a key only a snapshot
    /// that expired used: the copy and its key stay, so the live snapshot
    /// keeps restoring.
    #[tokio::test]
    async fn the_keys_of_every_copy_of_a_live_id_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        let id = ChunkId::from_bytes([5; 32]);
        let scope = coffer_proto::Scope::from_bytes([6; 8]);
        put(&store, &layout::chunk(&repo, &id), vec![1], NOW + 10, Some(key_id(1))).await;
        put(&store, &layout::chunk_copy(&repo, &id, &scope), vec![2], NOW - 10, Some(key_id(2))).await;
        for n in 1..=2 {
            put(&store, &layout::key(&repo, &key_id(n)), vec![n], NOW - 10, None).await;
        }
        segment(&store, &repo, 1, Some(vec![key_id(1)]), id).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW, &BTreeSet::new()).await.unwrap();
        assert!(doomed.is_empty(), "{doomed:?}");
    }
}
