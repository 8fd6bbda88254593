//! Deleting what retention no longer protects.
//!
//! [`expiry_plan`] decides, from the store alone, what may go; the admin
//! call `expire` deletes it.

use std::collections::BTreeSet;

use coffer_proto::layout;
use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{KeyId, RepoName, SnapshotId};
use serde::Serialize;

use crate::access::switches::{hold_prefix, read_switch};
use crate::store::{ObjectStore, StoreError};

/// One object expiry deletes (or, in a dry run, would), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub key: String,
    pub reason: String,
}

/// What expiry would delete in `repo` at `now`, in the order to delete it:
/// roots and indexes of snapshots whose retention ended and that are not
/// held, index segments left by commits that never completed, then chunks
/// no remaining snapshot references whose own lock has ended and that are
/// not held, then data key records that neither a remaining snapshot nor a
/// remaining chunk was sealed with, whose lock has ended and that are not
/// held. The config and the key epochs stay while the repository exists.
pub async fn expiry_plan(
    store: &dyn ObjectStore,
    repo: &RepoName,
    now: u64,
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
    for index_key in store.list(&layout::prefix(repo, layout::Kind::Index)).await? {
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
        let has_root = roots.contains(&root);
        let ended = index.retain_until <= now;
        let switch_on = read_switch(store, &hold_prefix(repo, &id)).await? == Some(true);
        let root_held = has_root && store.head(&root).await?.is_some_and(|m| m.legal_hold);
        if ended && (switch_on || root_held) {
            held.push(id.to_string());
        }
        if ended && !switch_on && !root_held {
            let why = if has_root {
                format!("snapshot {id}: retention ended at {}", index.retain_until)
            } else {
                format!("index of a commit that never completed, retention ended at {}", index.retain_until)
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
    for key in store.list(&layout::prefix(repo, layout::Kind::Chunks)).await? {
        // The first upload of an id and every scope's copy beside it go
        // together: all are kept while a snapshot references the id.
        let Some((id, _)) = layout::chunk_of(&key) else { continue };
        if live.contains(&id) {
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

        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert_eq!(doomed_keys(&doomed), [layout::key(&repo, &key_id(3))]);

        // A segment from before key ids were recorded may need any key.
        segment(&store, &repo, 2, None, live).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }

    #[tokio::test]
    async fn a_surviving_chunk_of_unknown_key_keeps_every_key_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        put(&store, &layout::chunk(&repo, &ChunkId::from_bytes([2; 32])), vec![2], NOW + 10, None).await;
        put(&store, &layout::key(&repo, &key_id(3)), vec![3], NOW - 10, None).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }
}
