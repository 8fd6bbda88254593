//! Listing packs (SPEC §7 "Listing packs"): a listing reads what packs hold
//! instead of each snapshot's index header, root and root key; behind a
//! listing that found many snapshots no pack holds, the proxy packs them.
//!
//! A pack holds copies of data key records, and expiry deletes those
//! records to make an expired snapshot unreadable. So a pack is locked only
//! until the earliest retain-until of its snapshots, holds none whose lock
//! ends within [`PACK_LIFE_MIN_SECS`], and expiry deletes every pack whose
//! lock has ended before it deletes anything else: no pack outlives the
//! keys it copies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use coffer_proto::api::SnapshotInfo;
use coffer_proto::envelope;
use coffer_proto::layout;
use coffer_proto::snapshot::pack::{self, PackEntry, PACK_BYTES_MAX, PACK_SNAPSHOTS_MAX};
use coffer_proto::{KeyId, RepoName, SnapshotId};

use crate::app::App;
use crate::store::PutOutcome;

/// Snapshots a listing must find outside every pack before the proxy packs
/// them.
pub const PACK_MIN: usize = 32;
/// A snapshot whose lock ends sooner than this stays out of new packs, so
/// no pack is locked past a snapshot that expiry may delete.
pub const PACK_LIFE_MIN_SECS: u64 = 86_400;
/// How far apart the retain-until dates of one pack's snapshots may be: a
/// pack goes when its first snapshot may, so its snapshots should go
/// together.
pub const PACK_SPAN_SECS: u64 = 7 * 86_400;
/// Bytes of root copies one listing carries at most; past them the caller
/// fetches roots itself.
pub const LISTING_ROOTS_MAX: usize = 16 * 1024 * 1024;
/// Bytes of packs a proxy keeps in memory, over all repositories.
const CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Packs read (they are written once, so each is read once per proxy), and
/// the repositories this proxy is packing now.
#[derive(Default)]
pub struct Packs {
    /// Each pack's entries and size in bytes, by key.
    read: Mutex<HashMap<String, ReadPack>>,
    packing: Mutex<HashSet<RepoName>>,
}

/// A pack's entries, and its size in bytes.
type ReadPack = (Arc<[PackEntry]>, usize);

/// What the packs of a repository hold, by snapshot.
pub(crate) type Packed = HashMap<SnapshotId, (Arc<[PackEntry]>, usize)>;

/// Reads the packs named by `keys` (from the listing of `<repo>/index/`).
/// A pack only spares requests: one the store cannot give, or that fails
/// its checks, is left out (its snapshots are read one by one).
pub(crate) async fn read(app: &App, repo: &RepoName, keys: &[String]) -> Packed {
    let unread: Vec<String> = {
        let cache = app.packs.read.lock().expect("not poisoned");
        keys.iter().filter(|k| !cache.contains_key(*k)).cloned().collect()
    };
    let store = &app.store;
    let fetched = app
        .fan_out(app.fan_out, unread, |key| async move {
            Ok::<_, std::convert::Infallible>(match store.get(&key).await {
                Ok(Some(bytes)) => match pack::decode(&bytes) {
                    Ok(entries) => Some((key, entries, bytes.len())),
                    Err(e) => {
                        tracing::warn!("listing pack {key} is unreadable, and is not used: {e}");
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!("listing pack {key} could not be read: {e}");
                    None
                }
            })
        })
        .await
        .unwrap_or_else(|never| match never {});
    let mut map = app.packs.read.lock().expect("not poisoned");
    // Packs of this repository no longer listed were deleted by expiry.
    let folder = layout::packs(repo);
    map.retain(|k, _| !k.starts_with(&folder) || keys.contains(k));
    for (key, entries, len) in fetched.into_iter().flatten() {
        if map.values().map(|(_, n)| n).sum::<usize>() + len > CACHE_BYTES_MAX {
            map.clear();
        }
        map.insert(key, (entries.into(), len));
    }
    let mut out = Packed::new();
    for key in keys {
        if let Some((entries, _)) = map.get(key) {
            for (i, e) in entries.iter().enumerate() {
                out.entry(e.snapshot).or_insert_with(|| (entries.clone(), i));
            }
        }
    }
    out
}

/// The listing entry a pack gives for its snapshot.
pub(crate) fn info(e: &PackEntry) -> SnapshotInfo {
    SnapshotInfo { id: e.snapshot, committed: e.committed, retain_until: e.retain_until, stats: e.stats, root: None }
}

/// Adds the root copies `packed` holds to `infos`, up to
/// [`LISTING_ROOTS_MAX`] bytes.
pub(crate) fn attach_roots(infos: &mut [SnapshotInfo], packed: &Packed) {
    let mut budget = LISTING_ROOTS_MAX;
    for info in infos {
        let Some((entries, i)) = packed.get(&info.id) else { continue };
        let e = &entries[*i];
        let Some(left) = budget.checked_sub(e.root.len() + e.key.len()) else { break };
        budget = left;
        info.root = Some(coffer_proto::api::RootCopy { envelope: e.root.clone(), key: e.key.clone() });
    }
}

/// Packs, behind the listing that called it, the snapshots of `infos` no
/// pack holds and that stay locked long enough, once there are
/// [`PACK_MIN`] of them. One packing per repository at a time.
pub(crate) fn pack_behind(app: &Arc<App>, repo: &RepoName, infos: &[SnapshotInfo], packed: &Packed) {
    let now = crate::unix_now();
    let mut loose: Vec<SnapshotInfo> = infos
        .iter()
        .filter(|i| !packed.contains_key(&i.id) && i.retain_until >= now.saturating_add(PACK_LIFE_MIN_SECS))
        .map(|i| SnapshotInfo { root: None, ..i.clone() })
        .collect();
    if loose.len() < PACK_MIN || !app.packs.packing.lock().expect("not poisoned").insert(repo.clone()) {
        return;
    }
    loose.sort_by_key(|i| (i.retain_until, i.id));
    let (app, repo) = (app.clone(), repo.clone());
    tokio::spawn(async move {
        match write(&app, &repo, loose).await {
            Ok(written) if written > 0 => tracing::info!(%repo, "wrote {written} listing packs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(%repo, "listing packs could not be written (the next listing tries again): {e}"),
        }
        app.packs.packing.lock().expect("not poisoned").remove(&repo);
    });
}

/// Writes packs of `loose` (in retain-until order): each of consecutive
/// snapshots whose retain-until dates lie within [`PACK_SPAN_SECS`], locked
/// until the first of them. Returns how many were written.
async fn write(app: &App, repo: &RepoName, loose: Vec<SnapshotInfo>) -> Result<usize, crate::store::StoreError> {
    let store = &app.store;
    let entries = app
        .fan_out(app.fan_out, loose, |info| async move {
            let Some(root) = store.get(&layout::snapshot(repo, &info.id)).await? else { return Ok(None) };
            let Ok(header) = envelope::parse_header(&root) else { return Ok(None) };
            let key_id: KeyId = header.key_id;
            let Some(key) = store.get(&layout::key(repo, &key_id)).await? else { return Ok(None) };
            let entry = PackEntry {
                snapshot: info.id,
                committed: info.committed,
                retain_until: info.retain_until,
                stats: info.stats,
                root: root.to_vec(),
                key: key.to_vec(),
            };
            // What a reader would refuse is left for it to find loose.
            Ok(entry.check().is_ok().then_some(entry))
        })
        .await?;
    let mut groups: Vec<Vec<PackEntry>> = Vec::new();
    let mut bytes = 0;
    for e in entries.into_iter().flatten() {
        let len = pack::entry_len(&e);
        let fits = groups.last().is_some_and(|g| {
            e.retain_until - g[0].retain_until <= PACK_SPAN_SECS
                && g.len() < PACK_SNAPSHOTS_MAX
                && bytes + len <= PACK_BYTES_MAX
        });
        if !fits {
            groups.push(Vec::new());
            bytes = 8;
        }
        bytes += len;
        groups.last_mut().expect("just pushed").push(e);
    }
    let mut written = 0;
    for group in groups {
        written += usize::from(put(app, repo, group).await?);
    }
    Ok(written)
}

/// Stores one pack; whether it was new.
async fn put(app: &App, repo: &RepoName, mut group: Vec<PackEntry>) -> Result<bool, crate::store::StoreError> {
    let until = group.iter().map(|e| e.retain_until).min().expect("a pack is never empty");
    group.sort_by_key(|e| e.snapshot);
    let bytes = pack::encode(&group);
    let key = layout::pack(repo, &pack::pack_id(&bytes));
    Ok(app.store.put_new(&key, bytes.into(), until).await? == PutOutcome::Created)
}

#[cfg(test)]
mod tests;
