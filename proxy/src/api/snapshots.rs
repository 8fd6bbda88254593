//! Snapshots: the commit, which checks everything a snapshot needs is
//! stored and locked long enough before its root is written, and listings.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use coffer_proto::api::SnapshotInfo;
use coffer_proto::envelope::{self, Kind};
use coffer_proto::layout;
use coffer_proto::snapshot::{CommitRequest, IndexEntry, IndexSegment, SnapshotStats};
use coffer_proto::{ChunkId, KeyId, RepoName, SnapshotId};
use http::StatusCode;

use super::reply::{invalid, ApiError, Reply};
use crate::app::App;
use crate::audit::{Draft, Outcome};
use crate::store::{fan_out, ObjectMeta, PutOutcome, StoreError};

/// How many missing chunk ids a refused commit names.
const MISSING_SHOWN: usize = 5;

pub async fn commit(app: &App, draft: &mut Draft, repo: &RepoName, body: &[u8]) -> Result<Reply, ApiError> {
    let req = CommitRequest::decode(body).map_err(invalid)?;
    // The snapshot is named in the body, not the path: its event names it,
    // whatever the outcome.
    draft.object = Some(req.snapshot.to_string());
    let header = envelope::parse_header(&req.root).map_err(invalid)?;
    if header.kind != Kind::SnapshotRoot {
        return Err(invalid("the root is not a snapshot root envelope"));
    }
    if !app.key_exists(repo, header.key_id).await? {
        return Err(ApiError::Conflict(format!("key {} is not stored in {repo}", header.key_id)));
    }
    let root_key = layout::snapshot(repo, &req.snapshot);
    if let Some(existing) = app.store.get(&root_key).await? {
        if existing.as_ref() == req.root.as_slice() {
            return snapshot_info(app, repo, req.snapshot).await.map(|i| Reply::json(StatusCode::OK, &i));
        }
        return Err(ApiError::Conflict(format!("snapshot {} already exists", req.snapshot)));
    }

    let now = crate::unix_now();
    let (required, until) = app.retention_for(repo);
    let mut seen = HashSet::with_capacity(req.chunks.len());
    if let Some(id) = req.chunks.iter().find(|id| !seen.insert(**id)) {
        return Err(invalid(format!("chunk {id} is listed twice")));
    }
    let store = &app.store;
    let fan = app.fan_out;
    let metas =
        fan_out(fan, req.chunks.iter().copied(), |id| async move { store.head(&layout::chunk(repo, &id)).await })
            .await?;
    let absent: Vec<&ChunkId> = req.chunks.iter().zip(&metas).filter(|(_, m)| m.is_none()).map(|(id, _)| id).collect();
    if !absent.is_empty() {
        let shown: Vec<String> = absent.iter().take(MISSING_SHOWN).map(ToString::to_string).collect();
        return Err(ApiError::Conflict(format!(
            "{} referenced chunks are not stored (first: {}); nothing was committed",
            absent.len(),
            shown.join(", ")
        )));
    }
    let present: Vec<(ChunkId, ObjectMeta)> = req.chunks.iter().copied().zip(metas.into_iter().flatten()).collect();
    let referenced_bytes = present.iter().fold(0u64, |sum, (_, meta)| sum.saturating_add(meta.size));
    let referenced = present.len() as u64;
    req.stats.check(referenced, referenced_bytes).map_err(invalid)?;

    // The data keys that sealed the chunks (recorded beside each; read from
    // the envelope for chunks stored before that), and the locks that must
    // grow to cover this snapshot (extended, never shortened).
    let sealed_by = fan_out(fan, 0..present.len(), |i| sealing_key(app, repo, &present[i].0, &present[i].1)).await?;
    let mut needed_keys = BTreeSet::from([header.key_id]);
    needed_keys.extend(sealed_by);
    let short: Vec<ChunkId> =
        present.iter().filter(|(_, m)| m.retain_until.unwrap_or(u64::MAX) < required).map(|(id, _)| *id).collect();
    fan_out(
        fan,
        short.iter().copied(),
        |id| async move { store.extend_retention(&layout::chunk(repo, &id), until).await },
    )
    .await?;
    let mut extended = short.len() as u64;
    let entries: Vec<IndexEntry> = present
        .iter()
        .map(|(id, meta)| {
            let locked = meta.retain_until.unwrap_or(u64::MAX);
            let retain_until = if locked < required { until } else { locked };
            IndexEntry { id: *id, size: meta.size.min(u64::from(u32::MAX)) as u32, retain_until }
        })
        .collect();
    // What the snapshot needs besides its chunks: the data keys that sealed
    // them and its root, which must still exist (expiry may have removed a
    // key no snapshot used), and the config and chunk-id key epochs, which
    // every snapshot of the repository may need.
    let key_names: Vec<(KeyId, String)> = needed_keys.iter().map(|k| (*k, layout::key(repo, k))).collect();
    let key_metas = fan_out(fan, 0..key_names.len(), |i| store.head(&key_names[i].1)).await?;
    let mut to_extend = Vec::new();
    for ((key_id, key), meta) in key_names.iter().zip(&key_metas) {
        let meta = meta.as_ref().ok_or_else(|| {
            ApiError::Conflict(format!("key {key_id} is not stored in {repo}; nothing was committed"))
        })?;
        if meta.retain_until.is_some_and(|t| t < required) {
            to_extend.push(key.clone());
        }
    }
    let mut dependencies = vec![layout::config(repo)];
    dependencies.extend(app.store.list(&layout::prefix(repo, layout::Kind::Epochs)).await?);
    let dependency_metas = fan_out(fan, 0..dependencies.len(), |i| store.head(&dependencies[i])).await?;
    for (key, meta) in dependencies.iter().zip(&dependency_metas) {
        if meta.as_ref().is_some_and(|m| m.retain_until.is_some_and(|t| t < required)) {
            to_extend.push(key.clone());
        }
    }
    fan_out(fan, 0..to_extend.len(), |i| store.extend_retention(&to_extend[i], until)).await?;
    extended += to_extend.len() as u64;

    if extended > 0 {
        let event = Draft {
            action: "extend-locks",
            bytes: extended,
            outcome: Some(Outcome::Ok),
            reason: Some(format!("{extended} objects locked until {until} for this snapshot")),
            ..draft.clone()
        };
        app.audit.record(event, true).await.map_err(|_| ApiError::Audit)?;
    }
    let index = IndexSegment {
        snapshot: req.snapshot,
        committed: now,
        retain_until: until,
        stats: req.stats,
        keys: Some(needed_keys.into_iter().collect()),
        chunks: entries,
    };
    // A crash between these two writes leaves an index without a root: no
    // snapshot. A retried commit of the same id finds the index and goes on.
    app.store.put_new(&layout::index(repo, &req.snapshot), index.encode().into(), until).await?;
    match app.store.put_new(&root_key, Bytes::copy_from_slice(&req.root), until).await? {
        PutOutcome::Created => {}
        PutOutcome::Exists => return Err(ApiError::Conflict(format!("snapshot {} already exists", req.snapshot))),
    }
    let m = &app.metrics;
    let label = |kind: &str| crate::monitor::metrics::KindLabel { kind: kind.to_string() };
    m.chunks.get_or_create(&label("new")).inc_by(req.stats.chunks_new);
    // Distinct chunks the snapshot references that it did not upload.
    m.chunks.get_or_create(&label("dedup")).inc_by(referenced.saturating_sub(req.stats.chunks_new));
    m.lock_extensions.inc_by(extended);
    m.last_snapshot.get_or_create(&crate::monitor::metrics::RepoLabel { repo: repo.to_string() }).set(now as f64);
    let history = repo_history(app, repo, req.snapshot).await.unwrap_or_default();
    app.watch.committed(repo, &history, &req.stats, now).await;
    let info = SnapshotInfo { id: req.snapshot, committed: now, retain_until: until, stats: req.stats };
    Ok(Reply::json(StatusCode::CREATED, &info))
}

/// The data key that sealed a stored chunk: recorded beside it at upload,
/// or, for a chunk stored before keys were recorded, read from its header.
async fn sealing_key(app: &App, repo: &RepoName, id: &ChunkId, meta: &ObjectMeta) -> Result<KeyId, StoreError> {
    if let Some(k) = meta.sealed_by {
        return Ok(k);
    }
    let key = layout::chunk(repo, id);
    let body = app.store.get(&key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let header = envelope::parse_header(&body).map_err(|e| StoreError::Backend {
        key,
        message: format!("not a chunk envelope: {e}"),
        retryable: false,
    })?;
    Ok(header.key_id)
}

/// The stats of a repository's committed snapshots, oldest first, except
/// `skip` (the one being judged).
pub async fn repo_history(app: &App, repo: &RepoName, skip: SnapshotId) -> Result<Vec<SnapshotStats>, ApiError> {
    let (infos, _) = committed(app, repo).await?;
    Ok(infos.into_iter().filter(|i| i.id != skip).map(|i| i.stats).collect())
}

pub async fn snapshot_info(app: &App, repo: &RepoName, id: SnapshotId) -> Result<SnapshotInfo, ApiError> {
    let bytes = app
        .store
        .get(&layout::index(repo, &id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("snapshot {id} has no index segment")))?;
    let index = IndexSegment::decode(&bytes).map_err(|e| ApiError::Conflict(format!("index of {id}: {e}")))?;
    Ok(SnapshotInfo { id, committed: index.committed, retain_until: index.retain_until, stats: index.stats })
}

/// Every committed snapshot of `repo` (a root in the store), oldest first,
/// and why any was left out. One LIST, then only the index segments not
/// read before, concurrently: they are written once, so what was read is
/// kept (and forgotten once its root is gone).
async fn committed(app: &App, repo: &RepoName) -> Result<(Vec<SnapshotInfo>, Vec<String>), ApiError> {
    // Only direct children with a well-formed id are snapshots. The index
    // segments are listed too, so one deleted behind the proxy's back is
    // noticed at once, remembered or not.
    let listed = |kind| async move {
        let prefix = layout::prefix(repo, kind);
        let keys = app.store.list(&prefix).await?;
        Ok::<HashSet<SnapshotId>, StoreError>(keys.iter().filter_map(|key| key[prefix.len()..].parse().ok()).collect())
    };
    let (roots, indexes) = tokio::try_join!(listed(layout::Kind::Snapshots), listed(layout::Kind::Index))?;
    let mut ids: Vec<SnapshotId> = roots.iter().copied().collect();
    ids.sort();
    let (mut out, unread) = {
        let cache = app.snapshot_infos.lock().expect("not poisoned");
        let mut known = Vec::new();
        let mut unread = Vec::new();
        for id in &ids {
            match cache.get(&(repo.clone(), *id)) {
                Some(info) if indexes.contains(id) => known.push(info.clone()),
                _ => unread.push(*id),
            }
        }
        (known, unread)
    };
    let read = fan_out(app.fan_out, unread.iter().copied(), |id| async move {
        match snapshot_info(app, repo, id).await {
            Ok(info) => Ok(Ok(info)),
            Err(e @ (ApiError::NotFound(_) | ApiError::Conflict(_))) => Ok(Err(e.to_string())),
            Err(ApiError::Store(e)) => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    })
    .await?;
    let mut damaged = Vec::new();
    {
        let mut cache = app.snapshot_infos.lock().expect("not poisoned");
        if cache.len() + read.len() > crate::app::INFO_CACHE_MAX {
            cache.clear();
        }
        cache.retain(|(r, id), _| r != repo || (roots.contains(id) && indexes.contains(id)));
        for info in read {
            match info {
                Ok(info) => {
                    cache.insert((repo.clone(), info.id), info.clone());
                    out.push(info);
                }
                Err(why) => damaged.push(why),
            }
        }
    }
    out.sort_by_key(|s| (s.committed, s.id));
    Ok((out, damaged))
}

/// Every committed snapshot's id and stats, oldest first. One whose index
/// segment is missing or unreadable (damage in the store) is left out, not
/// allowed to hide the rest, and raises an alert.
pub async fn list_snapshots(app: &App, repo: &RepoName) -> Result<Reply, ApiError> {
    let (out, damaged) = committed(app, repo).await?;
    if !damaged.is_empty() {
        let msg = format!(
            "{} snapshots of {repo} have a root but no readable index segment, and are left out of listings: {}",
            damaged.len(),
            damaged.join("; ")
        );
        tracing::error!("{msg}");
        let dedup = Some((format!("damaged:{repo}"), crate::monitor::detect::QUIET_SECS));
        app.watch
            .alerts
            .raise("damaged-snapshot", crate::monitor::alerts::Severity::High, Some(repo.to_string()), None, msg, dedup)
            .await;
    }
    Ok(Reply::json(StatusCode::OK, &out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, draft, staged};

    #[tokio::test]
    async fn a_commit_locks_what_it_needs_and_is_listed_once() {
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let req = staged(&t, &repo, 3).await;
        let reply = commit(&t.app, &mut draft("commit"), &repo, &req.encode()).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        let info: SnapshotInfo = serde_json::from_slice(&reply.body).unwrap();
        let index = t.app.store.get(&layout::index(&repo, &req.snapshot)).await.unwrap().unwrap();
        let index = IndexSegment::decode(&index).unwrap();
        assert_eq!(index.chunks.iter().map(|e| e.id).collect::<Vec<_>>(), req.chunks);
        assert_eq!(index.keys.as_ref().map(Vec::len), Some(1), "the one data key that sealed them");
        for id in &req.chunks {
            let meta = t.app.store.head(&layout::chunk(&repo, id)).await.unwrap().unwrap();
            assert!(meta.retain_until.unwrap() >= info.retain_until - 1, "each chunk locked as long as the snapshot");
        }
        // The same commit again (a retry) is answered, not doubled.
        let again = commit(&t.app, &mut draft("commit"), &repo, &req.encode()).await.unwrap();
        assert_eq!(again.status, StatusCode::OK);
        let listed = list_snapshots(&t.app, &repo).await.unwrap();
        let listed: Vec<SnapshotInfo> = serde_json::from_slice(&listed.body).unwrap();
        assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![req.snapshot]);
        // Another root under the same id is refused.
        let mut other = req;
        let last = other.root.len() - 1;
        other.root[last] ^= 1;
        let err = commit(&t.app, &mut draft("commit"), &repo, &other.encode()).await.unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)), "{err}");
    }

    #[tokio::test]
    async fn a_commit_of_what_is_not_stored_or_with_lying_stats_commits_nothing() {
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let mut req = staged(&t, &repo, 2).await;
        req.chunks.push(ChunkId::from_bytes([7; 32]));
        let err = commit(&t.app, &mut draft("commit"), &repo, &req.encode()).await.unwrap_err();
        assert!(matches!(err, ApiError::Conflict(ref m) if m.contains("not stored")), "{err}");
        req.chunks.pop();
        let twice = CommitRequest { chunks: vec![req.chunks[0], req.chunks[0]], ..req.clone() };
        let err = commit(&t.app, &mut draft("commit"), &repo, &twice.encode()).await.unwrap_err();
        assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("twice")), "{err}");
        let lying = CommitRequest { stats: SnapshotStats { chunks_new: 50, ..req.stats }, ..req.clone() };
        let err = commit(&t.app, &mut draft("commit"), &repo, &lying.encode()).await.unwrap_err();
        assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("contradict")), "{err}");
        assert!(t.app.store.list(&layout::prefix(&repo, layout::Kind::Snapshots)).await.unwrap().is_empty());
        assert!(t.app.store.list(&layout::prefix(&repo, layout::Kind::Index)).await.unwrap().is_empty());
        // And the honest commit of the same chunks still goes through.
        commit(&t.app, &mut draft("commit"), &repo, &req.encode()).await.unwrap();
    }
}
