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

use std::collections::HashMap;
use std::sync::Arc;

use coffer_proto::api::SnapshotInfo;
use coffer_proto::envelope;
use coffer_proto::layout;
use coffer_proto::snapshot::pack::{self, PackEntry, PACK_BYTES_MAX, PACK_SNAPSHOTS_MAX};
use coffer_proto::{RepoName, SnapshotId};

use crate::app::App;
use crate::packcache::ReadPack;
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
pub const LISTING_ROOTS_MAX: usize = 8 * 1024 * 1024;
/// Bytes of packs a proxy keeps in memory, over all repositories, and
/// reads for one listing at most.
const CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Snapshots one packing takes at most (the newest).
pub const PACKED_PER_RUN: usize = 4 * PACK_SNAPSHOTS_MAX;
/// A root or key record larger than these stays out of packs: a pack is for
/// the many small roots of a listing, not for roots of huge streams.
pub const PACK_ROOT_MAX: usize = 16 * 1024;
pub const PACK_KEY_MAX: usize = 4 * 1024;
/// Packs found unreadable that a proxy remembers at most.
const REFUSED_MAX: usize = 4096;
/// Snapshots left out of packs for good that a proxy remembers at most.
const UNPACKABLE_MAX: usize = 100_000;

/// What the packs of a repository hold, by snapshot.
pub(crate) type Packed = HashMap<SnapshotId, (Arc<[PackEntry]>, usize)>;

/// What a listing learned from the packs of a repository.
pub(crate) struct PackRead {
    pub packed: Packed,
    /// Whether every listed pack was read or refused (none left unread
    /// for the store's failure or the call's byte budget): only then may
    /// the snapshots no pack holds be packed.
    pub whole: bool,
}

/// Reads the packs named by `keys` (from the listing of `<repo>/index/`):
/// those not read before, at most [`CACHE_BYTES_MAX`] bytes of them per
/// call, and over all calls at most four fetched at once. A pack only
/// spares requests: one the store cannot give, or that fails its checks
/// (its name is not its BLAKE3, an entry is not what it copies), is left
/// out, and its snapshots are read one by one.
pub(crate) async fn read(app: &App, repo: &RepoName, keys: &[String]) -> PackRead {
    let (mut found, unread): (Vec<(String, ReadPack)>, Vec<String>) = {
        let (cache, refused) = (app.packs.read.lock().expect("not poisoned"), app.packs.refused.lock().expect("p"));
        let found = keys.iter().filter_map(|k| cache.get(k).map(|p| (k.clone(), p.clone()))).collect();
        let unread = keys.iter().filter(|k| !cache.contains_key(*k) && !refused.contains(*k)).cloned().collect();
        (found, unread)
    };
    let mut whole = true;
    // Bytes fetched, kept or refused, count against the call's budget.
    let mut budget = CACHE_BYTES_MAX;
    let (store, permits) = (&app.store, &app.packs.fetching);
    for key in unread {
        if budget < PACK_BYTES_MAX {
            tracing::warn!(%repo, "the listing packs exceed what one listing reads: the rest are read one by one");
            whole = false;
            break;
        }
        let got = {
            let _permit = permits.acquire().await.expect("never closed");
            store.get_head(&key, PACK_BYTES_MAX + 1).await
        };
        let checked = match got {
            Ok(Some(bytes)) => {
                budget = budget.saturating_sub(bytes.len());
                if layout::pack(repo, &pack::pack_id(&bytes)) != key {
                    Err(format!("its name is not the BLAKE3 of its {} bytes", bytes.len()))
                } else {
                    pack::decode(&bytes).map(|e| (e, bytes.len())).map_err(|e| e.to_string())
                }
            }
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("listing pack {key} could not be read: {e}");
                whole = false;
                continue;
            }
        };
        match checked {
            Ok((entries, len)) => found.push((key, (entries.into(), len))),
            Err(why) => {
                tracing::warn!("listing pack {key} is refused, and is not used: {why}");
                let mut refused = app.packs.refused.lock().expect("not poisoned");
                if refused.len() >= REFUSED_MAX {
                    // Room for one more, without forgetting the rest.
                    let old = refused.iter().next().cloned();
                    old.map(|k| refused.remove(&k));
                }
                refused.insert(key);
            }
        }
    }
    {
        let mut map = app.packs.read.lock().expect("not poisoned");
        // Packs of this repository no longer listed were deleted by expiry.
        let folder = layout::packs(repo);
        map.retain(|k, _| !k.starts_with(&folder) || keys.contains(k));
        for (key, pack) in &found {
            // Other repositories' packs make room first.
            while map.values().map(|(_, n)| n).sum::<usize>() + pack.1 > CACHE_BYTES_MAX {
                let Some(other) = map.keys().find(|k| !k.starts_with(&folder)).cloned() else { break };
                map.remove(&other);
            }
            map.insert(key.clone(), pack.clone());
        }
    }
    let mut packed = Packed::new();
    for (_, (entries, _)) in found {
        for (i, e) in entries.iter().enumerate() {
            packed.entry(e.snapshot).or_insert_with(|| (entries.clone(), i));
        }
    }
    PackRead { packed, whole }
}

/// The listing entry a pack gives for its snapshot.
pub(crate) fn info(e: &PackEntry) -> SnapshotInfo {
    SnapshotInfo { id: e.snapshot, committed: e.committed, retain_until: e.retain_until, stats: e.stats, root: None }
}

/// Adds the root copies `packed` holds to `infos`, up to
/// [`LISTING_ROOTS_MAX`] bytes; how many it added.
pub(crate) fn attach_roots(infos: &mut [SnapshotInfo], packed: &Packed) -> usize {
    let (mut budget, mut added) = (LISTING_ROOTS_MAX, 0);
    for info in infos {
        let Some((entries, i)) = packed.get(&info.id) else { continue };
        let e = &entries[*i];
        let Some(left) = budget.checked_sub(e.root.len() + e.key.len()) else { break };
        budget = left;
        added += 1;
        info.root = Some(coffer_proto::api::RootCopy { envelope: e.root.clone(), key: e.key.clone() });
    }
    added
}

/// Packs, behind the listing that called it, the snapshots of `infos` no
/// pack holds, once there are [`PACK_MIN`] of them that a pack could take:
/// at most [`PACKED_PER_RUN`] a time (the newest), one packing per
/// repository at a time.
pub(crate) fn pack_behind(app: &Arc<App>, repo: &RepoName, infos: &[SnapshotInfo], packs: &PackRead) {
    if !app.packs_enabled || !packs.whole {
        return;
    }
    // A root's lock is never before its index's date, so one dated too
    // soon would be left out anyway; so would one a packing left out.
    let soon = crate::unix_now().saturating_add(PACK_LIFE_MIN_SECS);
    let loose: Vec<SnapshotInfo> = {
        let unpackable = app.packs.unpackable.lock().expect("not poisoned");
        infos
            .iter()
            .rev()
            .filter(|i| !packs.packed.contains_key(&i.id) && i.retain_until >= soon)
            .filter(|i| !unpackable.contains(&(repo.clone(), i.id)))
            .take(PACKED_PER_RUN)
            .map(|i| SnapshotInfo { root: None, ..i.clone() })
            .collect()
    };
    if loose.len() < PACK_MIN || !app.packs.packing.lock().expect("not poisoned").insert(repo.clone()) {
        return;
    }
    let (app, repo) = (app.clone(), repo.clone());
    tokio::spawn(async move {
        // The flag goes with the task, even if it panics.
        struct Done(Arc<App>, RepoName);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.packs.packing.lock().expect("not poisoned").remove(&self.1);
            }
        }
        let _done = Done(app.clone(), repo.clone());
        match write(&app, &repo, loose).await {
            Ok(written) if written > 0 => tracing::info!(%repo, "wrote {written} listing packs"),
            Ok(_) => {}
            Err(e) => tracing::warn!(%repo, "listing packs could not be written (the next listing tries again): {e}"),
        }
    });
}

/// Writes packs of `loose`: each of snapshots whose roots' locks end
/// within [`PACK_SPAN_SECS`] of each other, locked until the first of
/// those ends (as the store says, read now: a pack is never locked past a
/// root it copies). A snapshot whose root's lock ends within
/// [`PACK_LIFE_MIN_SECS`], or whose root or key record is larger than a
/// pack takes, stays out. Returns how many packs were written.
async fn write(app: &App, repo: &RepoName, loose: Vec<SnapshotInfo>) -> Result<usize, crate::store::StoreError> {
    let store = &app.store;
    let soon = crate::unix_now().saturating_add(PACK_LIFE_MIN_SECS);
    // Each snapshot: its entry, or whether it is left out for good.
    let tried = app
        .fan_out(app.fan_out, loose, |info| async move {
            let root_key = layout::snapshot(repo, &info.id);
            let Some(lock) = store.head(&root_key).await?.and_then(|m| m.retain_until) else {
                return Ok(Err((info.id, false)));
            };
            if lock < soon {
                return Ok(Err((info.id, true)));
            }
            let Some(root) = store.get_head(&root_key, PACK_ROOT_MAX + 1).await? else {
                return Ok(Err((info.id, false)));
            };
            let header = envelope::parse_header(&root).ok().filter(|_| root.len() <= PACK_ROOT_MAX);
            let Some(key_id) = header.map(|h| h.key_id) else { return Ok(Err((info.id, true))) };
            let Some(key) = store.get_head(&layout::key(repo, &key_id), PACK_KEY_MAX + 1).await? else {
                return Ok(Err((info.id, false)));
            };
            let entry = PackEntry {
                snapshot: info.id,
                committed: info.committed,
                retain_until: lock,
                stats: info.stats,
                root: root.to_vec(),
                key: key.to_vec(),
            };
            // What a reader would refuse is left for it to find loose.
            match key.len() <= PACK_KEY_MAX && entry.check().is_ok() {
                true => Ok(Ok(entry)),
                false => Ok(Err((info.id, true))),
            }
        })
        .await?;
    let mut entries: Vec<PackEntry> = Vec::new();
    {
        let mut unpackable = app.packs.unpackable.lock().expect("not poisoned");
        for t in tried {
            match t {
                Ok(entry) => entries.push(entry),
                Err((id, true)) => {
                    if unpackable.len() >= UNPACKABLE_MAX {
                        unpackable.clear();
                    }
                    unpackable.insert((repo.clone(), id));
                }
                Err((_, false)) => {}
            }
        }
    }
    entries.sort_by_key(|e| (e.retain_until, e.snapshot));
    let mut groups: Vec<Vec<PackEntry>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
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
    // Never a pack that a listing would refuse while it stays locked.
    if let Err(e) = pack::decode(&bytes) {
        tracing::warn!(%repo, "a listing pack was not written: it would not read back: {e}");
        return Ok(false);
    }
    let key = layout::pack(repo, &pack::pack_id(&bytes));
    Ok(app.store.put_new(&key, bytes.into(), until).await? == PutOutcome::Created)
}

#[cfg(test)]
mod tests;
