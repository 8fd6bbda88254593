//! What is committed: listings, the anomaly detector's history, and the
//! chunk catalog's filling, all from index segments read once per proxy.

use std::collections::HashSet;
use std::sync::Arc;

use coffer_proto::api::SnapshotInfo;
use coffer_proto::layout;
use coffer_proto::snapshot::{IndexHeader, IndexView, SnapshotStats};
use coffer_proto::{RepoName, SnapshotId};
use http::StatusCode;

use super::packs;
use super::reply::{ApiError, Reply};
use crate::app::App;
use crate::catalog::{RepoCatalog, LOAD_SEGMENTS, REFRESH_SECS};
use crate::store::StoreError;

/// Whole index segments read at once by one call (44 bytes per chunk of a
/// snapshot): a bound on memory, not on round trips.
const SEGMENTS_IN_FLIGHT: usize = 4;

/// The stats of a repository's committed snapshots, oldest first, except
/// `skip` (the one being judged).
pub async fn repo_history(app: &App, repo: &RepoName, skip: SnapshotId) -> Result<Vec<SnapshotStats>, ApiError> {
    let infos = committed(app, repo, true).await?.infos;
    Ok(infos.into_iter().filter(|i| i.id != skip).map(|i| i.stats).collect())
}

/// A snapshot's listing entry, from the header of its index segment only
/// (a ranged read: a segment holds 45 bytes per chunk, its header 76).
pub async fn snapshot_info(app: &App, repo: &RepoName, id: SnapshotId) -> Result<SnapshotInfo, ApiError> {
    let bytes = app
        .store
        .get_head(&layout::index(repo, &id), IndexHeader::LEN)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("snapshot {id} has no index segment")))?;
    let h = IndexHeader::decode(&bytes).map_err(|e| ApiError::Conflict(format!("index of {id}: {e}")))?;
    if h.snapshot != id {
        return Err(ApiError::Conflict(format!("index of {id}: it names snapshot {}", h.snapshot)));
    }
    Ok(SnapshotInfo { id, committed: h.committed, retain_until: h.retain_until, stats: h.stats, root: None })
}

/// A repository's committed snapshots as a listing finds them.
pub(crate) struct Committed {
    /// Oldest first.
    pub infos: Vec<SnapshotInfo>,
    /// Why any was left out.
    pub damaged: Vec<String>,
    /// What listing packs hold.
    pub packs: packs::PackRead,
}

/// Every committed snapshot of `repo` (a root in the store), oldest first,
/// and why any was left out. Two LISTs, the listing packs not read before,
/// then only the index segments neither read before nor packed,
/// concurrently: they are written once, so what was read is kept (and
/// forgotten once its root is gone).
/// With `lenient`, a snapshot whose segment the store fails to give is
/// left out rather than failing the whole answer (the detector's history
/// is better with one snapshot missing than empty).
async fn committed(app: &App, repo: &RepoName, lenient: bool) -> Result<Committed, ApiError> {
    // Only direct children with a well-formed id are snapshots. The index
    // segments are listed too, so one deleted behind the proxy's back is
    // noticed at once, remembered or not; the packs are listed with them.
    let listed = |kind| async move {
        let prefix = layout::prefix(repo, kind);
        let keys = app.store.list(&prefix).await?;
        let ids = keys.iter().filter_map(|key| key[prefix.len()..].parse().ok()).collect();
        let packs: Vec<String> = keys.into_iter().filter(|k| layout::is_pack(k)).collect();
        Ok::<(HashSet<SnapshotId>, Vec<String>), StoreError>((ids, packs))
    };
    let ((roots, _), (indexes, pack_keys)) =
        tokio::try_join!(listed(layout::Kind::Snapshots), listed(layout::Kind::Index))?;
    let packs = packs::read(app, repo, &pack_keys).await;
    let mut ids: Vec<SnapshotId> = roots.iter().copied().collect();
    ids.sort();
    let (mut out, unread) = {
        let cache = app.snapshot_infos.lock().expect("not poisoned");
        let mut known = Vec::new();
        let mut unread = Vec::new();
        for id in ids.iter().filter(|id| indexes.contains(id)) {
            // A pack's word is not cached: it must not outlive the pack.
            match (cache.get(&(repo.clone(), *id)), packs.packed.get(id)) {
                (Some(info), _) => known.push(info.clone()),
                (None, Some((entries, i))) => known.push(packs::info(&entries[*i])),
                (None, None) => unread.push(*id),
            }
        }
        // A root without an index segment is read, to be reported.
        unread.extend(ids.iter().filter(|id| !indexes.contains(id)));
        (known, unread)
    };
    let read = app
        .fan_out(app.fan_out, unread.iter().copied(), |id| async move {
            match snapshot_info(app, repo, id).await {
                Ok(info) => Ok(Ok(info)),
                Err(e @ (ApiError::NotFound(_) | ApiError::Conflict(_))) => Ok(Err(e.to_string())),
                Err(ApiError::Store(e)) if !lenient => Err(e),
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
    Ok(Committed { infos: out, damaged, packs })
}

/// Fills `cat` from the newest committed snapshots' index segments: once,
/// then every [`REFRESH_SECS`] with the segments this proxy has not merged
/// yet (what other proxies committed).
///
/// A catalog only spares requests: when the store cannot give what fills
/// it, the call goes on without it (asking the store), and tries again at
/// the next refresh.
pub(crate) async fn fill_catalog(app: &App, repo: &RepoName, cat: &mut RepoCatalog) {
    let now = crate::unix_now();
    if cat.loaded && now < cat.refreshed.saturating_add(REFRESH_SECS) {
        return;
    }
    if let Err(e) = read_newest_segments(app, repo, cat).await {
        tracing::warn!(%repo, "the chunk catalog could not be filled (the store is asked instead): {e}");
    }
    cat.loaded = true;
    cat.refreshed = now;
}

async fn read_newest_segments(app: &App, repo: &RepoName, cat: &mut RepoCatalog) -> Result<(), ApiError> {
    let infos = committed(app, repo, true).await?.infos;
    let newest: Vec<SnapshotId> =
        infos.iter().rev().filter(|i| !cat.merged(&i.id)).take(LOAD_SEGMENTS).map(|i| i.id).collect();
    let store = &app.store;
    let segments =
        app.fan_out(SEGMENTS_IN_FLIGHT, newest.iter().copied(), |id| async move {
            store.get(&layout::index(repo, &id)).await
        })
        .await?;
    for bytes in segments.into_iter().flatten() {
        if let Ok(index) = IndexView::decode(&bytes) {
            cat.record_index(&index, app.scopes_since());
        }
    }
    Ok(())
}

/// Every committed snapshot's id and stats, oldest first. One whose index
/// segment is missing or unreadable (damage in the store) is left out, not
/// allowed to hide the rest, and raises an alert. A caller that asks for
/// root copies and may read roots and key records (`with_roots`) gets the
/// copies listing packs hold, and the audit event says how many; when many
/// snapshots are in no pack, this proxy packs them after answering.
pub async fn list_snapshots(
    app: &Arc<App>,
    draft: &mut crate::audit::Draft,
    repo: &RepoName,
    with_roots: bool,
) -> Result<Reply, ApiError> {
    let Committed { mut infos, damaged, packs } = committed(app, repo, false).await?;
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
    packs::pack_behind(app, repo, &infos, &packs);
    if with_roots {
        let copied = packs::attach_roots(&mut infos, &packs.packed);
        if copied > 0 {
            draft.reason = Some(format!("{copied} roots and their key records copied from listing packs"));
        }
    }
    Ok(Reply::json(StatusCode::OK, &infos))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testkit::{self, draft, staged, Faulty};

    #[tokio::test]
    async fn a_commit_whose_history_cannot_be_read_is_committed_and_alerted_not_silently_unjudged() {
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let req = staged(&t, &repo, 2).await;
        let store = Arc::new(Faulty::new(t.app.store.clone()));
        *store.list_fails_for.lock().unwrap() = Some("/snapshots/".into());
        let app = testkit::app_with_store(&t, store);
        let reply =
            crate::api::snapshots::commit(&app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into())
                .await
                .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "the snapshot itself is fine");
        testkit::wait_for_audit(&t, "detector-blind").await;
    }
}
