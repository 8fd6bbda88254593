//! Snapshots: the commit, which checks everything a snapshot needs is
//! stored and locked long enough before its root is written, and listings.

use std::collections::BTreeSet;

use bytes::Bytes;
use coffer_proto::api::SnapshotInfo;
use coffer_proto::envelope::{self, Kind};
use coffer_proto::layout;
use coffer_proto::snapshot::{CommitView, IndexEntry, IndexRecords, IndexSegment, IndexView};
use coffer_proto::{ChunkId, KeyId, RepoName, Scope};
use http::StatusCode;

use super::chunks::head_in_scope;
use super::history::{fill_catalog, repo_history, snapshot_info};
use super::reply::{invalid, ApiError, Reply};
use crate::app::App;
use crate::audit::{Draft, Outcome};
use crate::catalog::Uploader;
use crate::store::{ObjectMeta, PutOutcome, StoreError};

/// Whole objects read at once by one call (index segments, which hold 44
/// bytes per chunk of a snapshot, and legacy chunks): a bound on memory,
/// not on round trips.
const BODIES_IN_FLIGHT: usize = 4;

pub async fn commit(
    app: &App,
    draft: &mut Draft,
    repo: &RepoName,
    who: &Uploader,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let scope = &who.scope;
    let req = CommitView::decode(&body).map_err(invalid)?;
    let (snapshot, stats) = (req.snapshot, req.stats);
    // The snapshot is named in the body, not the path: its event names it,
    // whatever the outcome.
    draft.object = Some(snapshot.to_string());
    let header = envelope::parse_header(req.root).map_err(invalid)?;
    if header.kind != Kind::SnapshotRoot {
        return Err(invalid("the root is not a snapshot root envelope"));
    }
    let root = Bytes::copy_from_slice(req.root);
    // Each chunk's index entry, encoded, in id order: a chunk listed
    // twice is next to its twin, the body (a commit may name millions) can
    // go at once, and the entries become the segment in place. Size and
    // lock are filled in below.
    let mut entries = IndexRecords::from_ids(req.chunks());
    drop(body);
    if let Err(twice) = entries.sort() {
        return Err(invalid(format!("chunk {twice} is listed twice")));
    }
    if !app.key_exists(repo, header.key_id).await? {
        return Err(ApiError::Conflict(format!("key {} is not stored in {repo}", header.key_id)));
    }
    let root_key = layout::snapshot(repo, &snapshot);
    if let Some(existing) = app.store.get(&root_key).await? {
        if existing == root {
            return snapshot_info(app, repo, snapshot).await.map(|i| Reply::json(StatusCode::OK, &i));
        }
        return Err(ApiError::Conflict(format!("snapshot {snapshot} already exists")));
    }

    let now = crate::unix_now();
    let (required, until) = app.retention_for(repo);
    let store = &app.store;
    let fan = app.fan_out;
    // What the catalog knows needs no store request; the rest is HEADed.
    // The keys that sealed the known ones are summed up at once.
    let catalog = app.catalogs.of(repo);
    let mut needed_keys = BTreeSet::from([header.key_id]);
    let mut maybe_keys = BTreeSet::new();
    let mut any_key = false;
    let mut unknown: Vec<usize> = Vec::new();
    {
        let mut cat = catalog.lock().await;
        fill_catalog(app, repo, &mut cat).await;
        for i in 0..entries.len() {
            let e = entries.get(i);
            let Some(k) = cat.present(&e.id, who, now) else {
                unknown.push(i);
                continue;
            };
            match cat.keys_of(&k).as_deref() {
                Some([exact]) => {
                    needed_keys.insert(*exact);
                }
                Some(set) => maybe_keys.extend(set.iter().copied()),
                None => any_key = true,
            }
            let size = k.size.min(u64::from(u32::MAX)) as u32;
            entries.set(i, &IndexEntry { size, retain_until: k.retain_until, copy: k.copy, ..e });
        }
    }
    // Each must be in the committer's scope: its own upload (or its copy),
    // or one from before scopes; never another identity's. The first one
    // missing stops the checks: a commit naming a million chunks that were
    // never stored costs a few store requests, not a million.
    let entries_ref = &entries;
    let metas = app
        .fan_out(fan, unknown.iter().copied(), |i| async move {
            let id = entries_ref.get(i).id;
            match head_in_scope(app, repo, id, who).await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(ApiError::Conflict(format!(
                    "referenced chunk {id} is not stored (the check stops at the first one missing); nothing was \
                     committed"
                ))),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
    // What the store said of the rest, by entry.
    let headed: Vec<(usize, ObjectMeta, Option<Scope>)> =
        unknown.into_iter().zip(metas).map(|(i, f)| (i, f.meta, f.copy)).collect();
    {
        let mut cat = catalog.lock().await;
        for (i, meta, copy) in &headed {
            let owner = if copy.is_some() { *copy } else { app.owner_of(meta) };
            cat.record_head(entries.get(*i).id, meta, *copy, owner);
        }
    }
    for (i, meta, copy) in &headed {
        let size = meta.size.min(u64::from(u32::MAX)) as u32;
        let e = IndexEntry {
            size,
            retain_until: meta.retain_until.unwrap_or(u64::MAX),
            copy: copy.is_some(),
            ..entries.get(*i)
        };
        entries.set(*i, &e);
    }
    // The chunks whose lock must grow to cover this snapshot (by entry:
    // their names are made as they are extended), and their entries
    // recording the grown lock.
    let mut referenced_bytes = 0u64;
    let mut chunks_to_extend: Vec<usize> = Vec::new();
    for i in 0..entries.len() {
        let e = entries.get(i);
        referenced_bytes = referenced_bytes.saturating_add(u64::from(e.size));
        if e.retain_until < required {
            chunks_to_extend.push(i);
            entries.set(i, &IndexEntry { retain_until: until, ..e });
        }
    }
    stats.check(entries.len() as u64, referenced_bytes).map_err(invalid)?;
    // Never less than what this proxy saw the committer store since its
    // last commit here (SPEC §8 "Commit stats").
    let seen = app.observed.seen(repo, scope).credited(entries.len() as u64, referenced_bytes);
    let stats = stats.at_least_seen(seen.chunks, seen.bytes, entries.len() as u64, referenced_bytes);
    let entries_ref = &entries;

    // The data keys that sealed the chunks (known to the catalog, recorded
    // beside each, or read from the envelope of a chunk stored before
    // keys were recorded), and the locks that must grow to cover this
    // snapshot (extended, never shortened).
    let sealed_by = app
        .fan_out(BODIES_IN_FLIGHT, 0..headed.len(), |i| {
            let (e, meta, copy) = &headed[i];
            sealing_key(app, layout::chunk_at(repo, &entries_ref.get(*e).id, copy.as_ref()), meta)
        })
        .await?;
    // Keys known exactly must be stored. A key the catalog only knows as
    // "one of that snapshot's" may be gone (expiry keeps every key that
    // sealed a surviving chunk, not the rest of the set): it is left out.
    needed_keys.extend(sealed_by);
    if any_key {
        // A chunk from a segment that did not record keys may need any.
        let prefix = layout::prefix(repo, layout::Kind::Keys);
        maybe_keys.extend(store.list(&prefix).await?.iter().filter_map(|k| k[prefix.len()..].parse::<KeyId>().ok()));
    }
    let maybe: Vec<KeyId> = maybe_keys.difference(&needed_keys).copied().collect();
    let maybe_metas =
        app.fan_out(fan, maybe.iter().copied(), |k| async move { store.head(&layout::key(repo, &k)).await }).await?;
    needed_keys.extend(maybe.iter().zip(&maybe_metas).filter(|(_, m)| m.is_some()).map(|(k, _)| *k));
    // What the snapshot needs besides its chunks: the data keys that sealed
    // them and its root, which must still exist (expiry may have removed a
    // key no snapshot used), and the config and chunk-id key epochs, which
    // every snapshot of the repository may need.
    let mut others_to_extend: Vec<String> = Vec::new();
    let key_names: Vec<(KeyId, String)> = needed_keys.iter().map(|k| (*k, layout::key(repo, k))).collect();
    let key_metas = app.fan_out(fan, 0..key_names.len(), |i| store.head(&key_names[i].1)).await?;
    for ((key_id, key), meta) in key_names.iter().zip(&key_metas) {
        let meta = meta.as_ref().ok_or_else(|| {
            ApiError::Conflict(format!("key {key_id} is not stored in {repo}; nothing was committed"))
        })?;
        if meta.retain_until.is_some_and(|t| t < required) {
            others_to_extend.push(key.clone());
        }
    }
    let mut dependencies = vec![layout::config(repo)];
    dependencies.extend(app.store.list(&layout::prefix(repo, layout::Kind::Epochs)).await?);
    let dependency_metas = app.fan_out(fan, 0..dependencies.len(), |i| store.head(&dependencies[i])).await?;
    for (key, meta) in dependencies.iter().zip(&dependency_metas) {
        if meta.as_ref().is_some_and(|m| m.retain_until.is_some_and(|t| t < required)) {
            others_to_extend.push(key.clone());
        }
    }
    // Every extension is tried, and those made are audited even if one
    // failed: a lock that grew is never left unrecorded. A commit cut short
    // (its caller stopped waiting) records none, and its retry skips those
    // made: so the intent is audited first.
    let to_extend = chunks_to_extend.len() + others_to_extend.len();
    if to_extend > 0 {
        let event = Draft {
            action: "extend-locks",
            bytes: to_extend as u64,
            reason: Some(format!("{to_extend} objects to be locked until {until} for this snapshot")),
            ..draft.clone()
        };
        app.audit.record(event, true).await.map_err(|_| ApiError::Audit)?;
    }
    let (chunks_to_extend, others_to_extend, cat) = (&chunks_to_extend, &others_to_extend, &catalog);
    let tried = app
        .fan_out(fan, 0..to_extend, |i| async move {
            let Some(e) = chunks_to_extend.get(i).map(|e| entries_ref.get(*e)) else {
                let key = &others_to_extend[i - chunks_to_extend.len()];
                return Ok::<_, std::convert::Infallible>(store.extend_retention(key, until).await);
            };
            let done = store.extend_retention(&layout::chunk_at(repo, &e.id, e.copy.then_some(scope)), until).await;
            if done.is_ok() {
                // Known at once: a commit cut short (its caller gave up
                // waiting) and tried again does not extend it again.
                cat.lock().await.raise(&e.id, e.copy.then_some(*scope), until);
            }
            Ok(done)
        })
        .await
        .unwrap_or_else(|never| match never {});
    let extended = tried.iter().filter(|r| r.is_ok()).count() as u64;
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
    if let Some(Err(e)) = tried.into_iter().find(|r| r.is_err()) {
        return Err(e.into());
    }
    let head = IndexSegment {
        snapshot,
        committed: now,
        retain_until: until,
        stats,
        keys: Some(needed_keys.into_iter().collect()),
        scope: Some(*scope),
        chunks: Vec::new(),
    };
    let encoded = Bytes::from(entries.into_segment(&head));
    let referenced = IndexView::decode(&encoded).map_err(|e| ApiError::Conflict(e.to_string()))?;
    // A crash between these two writes leaves an index without a root: no
    // snapshot. A retried commit of the same id finds the index and goes on.
    let index_key = layout::index(repo, &snapshot);
    if app.store.put_new(&index_key, encoded.clone(), until).await? == PutOutcome::Exists {
        // Left by an attempt that stopped before its root: it must describe
        // these very chunks, or the root would be paired with another
        // snapshot's locks and keys.
        let stored = app.store.get(&index_key).await?.ok_or_else(|| StoreError::NotFound(index_key.clone()))?;
        let stored = IndexView::decode(&stored).map_err(|e| ApiError::Conflict(format!("index of {snapshot}: {e}")))?;
        if !same_chunks(&stored, &referenced) {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot} has an index segment for other chunks; choose another id"
            )));
        }
    }
    match app.store.put_new(&root_key, root, until).await? {
        PutOutcome::Created => {}
        PutOutcome::Exists => return Err(ApiError::Conflict(format!("snapshot {snapshot} already exists"))),
    }
    app.observed.committed(repo, scope, seen);
    catalog.lock().await.record_index(&referenced, app.scopes_since());
    let referenced = referenced.len() as u64;
    drop(encoded);
    app.catalogs.trim();
    let info = SnapshotInfo { id: snapshot, committed: now, retain_until: until, stats, root: None };
    app.snapshot_infos.lock().expect("not poisoned").insert((repo.clone(), snapshot), info.clone());
    let m = &app.metrics;
    let label = |kind: &str| crate::monitor::metrics::KindLabel { kind: kind.to_string() };
    m.chunks.get_or_create(&label("new")).inc_by(stats.chunks_new);
    // Distinct chunks the snapshot references that it did not upload.
    m.chunks.get_or_create(&label("dedup")).inc_by(referenced.saturating_sub(stats.chunks_new));
    m.lock_extensions.inc_by(extended);
    let repo_label = crate::monitor::metrics::RepoLabel { repo: repo.to_string() };
    m.last_snapshot.get_or_create(&repo_label).set(now as f64);
    m.snapshots.get_or_create(&repo_label).inc();
    match repo_history(app, repo, snapshot).await {
        Ok(history) => app.watch.committed(repo, &history, &stats, now).await,
        // The snapshot is committed; but the detector cannot judge it, and
        // a detector switched off without a word is what an attacker wants.
        Err(e) => {
            let msg =
                format!("snapshot {snapshot} was committed unjudged: its repository's history cannot be read: {e}");
            tracing::error!(%repo, "{msg}");
            let dedup = Some((format!("history:{repo}"), crate::monitor::detect::QUIET_SECS));
            app.watch
                .alerts
                .raise(
                    "detector-blind",
                    crate::monitor::alerts::Severity::High,
                    Some(repo.to_string()),
                    None,
                    msg,
                    dedup,
                )
                .await;
        }
    }
    Ok(Reply::json(StatusCode::CREATED, &info))
}

/// Whether two segments record the same chunks of the same scope, in any
/// order (a segment from before entries were sorted is in the commit's).
fn same_chunks(a: &IndexView<'_>, b: &IndexView<'_>) -> bool {
    if a.scope != b.scope || a.len() != b.len() {
        return false;
    }
    let in_order = |v: &IndexView<'_>| v.entries().is_sorted_by_key(|e| e.id);
    if in_order(a) && in_order(b) {
        return a.entries().zip(b.entries()).all(|(x, y)| (x.id, x.copy) == (y.id, y.copy));
    }
    let sorted = |v: &IndexView<'_>| {
        let mut ids: Vec<(ChunkId, bool)> = v.entries().map(|e| (e.id, e.copy)).collect();
        ids.sort_unstable();
        ids
    };
    sorted(a) == sorted(b)
}

/// The data key that sealed the chunk stored at `key`: recorded beside it
/// at upload, or, for a chunk stored before keys were recorded, read from
/// its header.
async fn sealing_key(app: &App, key: String, meta: &ObjectMeta) -> Result<KeyId, StoreError> {
    if let Some(k) = meta.sealed_by {
        return Ok(k);
    }
    let body = app.store.get(&key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let header = envelope::parse_header(&body).map_err(|e| StoreError::Backend {
        key,
        message: format!("not a chunk envelope: {e}"),
        retryable: false,
    })?;
    Ok(header.key_id)
}

#[cfg(test)]
mod tests;
