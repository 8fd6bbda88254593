//! The lifecycle pass (docs/lifecycle.md): it runs by itself in the proxy,
//! every `lifecycle.interval_secs`, once per interval over all the proxies
//! of a store (whichever creates that interval's lease object runs it).
//! For each repository whose policy has a `keep` schedule it extends the
//! locks of every object each keeper needs to the end of its rule's reach
//! (extended, never shortened), then deletes what expiry may: snapshots no
//! rule keeps once their locks have ended and they are not held, and what
//! no remaining snapshot references. It never deletes a repository's newest
//! snapshot, and deletes nothing when the proxy's clock and the store's
//! disagree (then it runs no pass at all), after the wall clock jumped, or
//! in a repository whose newest snapshot lies in the pass's future: a
//! clock far off must not expire everything.

use std::collections::BTreeSet;

use coffer_proto::{layout, RepoName, SnapshotId, REPO_SEGMENTS_MAX};
use serde::Serialize;

use super::expiry::{delete_doomed, expiry_plan, objects_of, Doomed};
use super::plan::{plan, spared};
use crate::app::App;
use crate::keep::KeepRules;
use crate::store::{ObjectStore, PutOutcome, StoreError};

/// How far the proxy's clock may be from the store's, and the newest
/// snapshot ahead of the pass, before a pass does nothing.
pub const CLOCK_TOLERANCE_SECS: u64 = 600;
/// Lease objects: `admin/lifecycle/<interval number>`, one per interval.
pub const LEASES: &str = "admin/lifecycle/";
/// How long a lease or clock probe is locked. They are small and kept
/// (about 24 a day per proxy); `admin expire` does not look at them.
const LEASE_LOCK_SECS: u64 = 7 * 86_400;
/// Lock extensions in flight at once.
const EXTENSIONS_IN_FLIGHT: usize = 32;

/// A keeper whose locks the pass extended.
#[derive(Debug, Clone, Serialize)]
pub struct Promoted {
    pub snapshot: SnapshotId,
    pub until: u64,
    pub reasons: Vec<String>,
    /// Objects whose lock was extended.
    pub objects: u64,
}

/// What one repository's pass did.
#[derive(Debug, Default, Serialize)]
pub struct RepoPass {
    pub repo: String,
    pub promoted: Vec<Promoted>,
    pub deleted: Vec<Doomed>,
    pub failed: Vec<Doomed>,
    /// Why nothing was done, if so.
    pub skipped: Option<String>,
    /// Why the pass of this repository stopped half way (the next pass
    /// does the rest).
    pub error: Option<String>,
}

/// Every repository in the store: the folders holding a `config`, found
/// without listing any repository's objects.
pub async fn repositories(store: &dyn ObjectStore) -> Result<Vec<RepoName>, StoreError> {
    let mut out = Vec::new();
    let mut queue = vec![(String::new(), 0usize)];
    while let Some((prefix, depth)) = queue.pop() {
        for folder in store.folders(&prefix).await? {
            // The admin and audit trees are not repositories; a repository
            // name's segments are never a kind's name, so a repository's own
            // folders end the walk there.
            if depth == 0 && matches!(folder.as_str(), "admin/" | "audit/") {
                continue;
            }
            let Ok(repo) = folder.trim_end_matches('/').parse::<RepoName>() else { continue };
            if store.head(&layout::config(&repo)).await?.is_some() {
                out.push(repo);
            }
            if depth + 1 < REPO_SEGMENTS_MAX {
                queue.push((folder, depth + 1));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What expiry spares in `repo` now: nothing without a schedule; with one,
/// its keepers and the newest snapshot (so `admin expire` never deletes
/// what the schedule keeps).
pub async fn keepers(app: &App, repo: &RepoName) -> Result<BTreeSet<SnapshotId>, StoreError> {
    match app.repo_policies().keep_rules(repo) {
        None => Ok(BTreeSet::new()),
        Some(rules) => Ok(spared(&plan(&*app.store, repo, &rules).await?)),
    }
}

/// Checks the store's clock against `now` (a small probe object, written
/// and read back: S3 stamps it with its own time), then takes the lease of
/// the interval holding `now`, which only one proxy creates. A proxy whose
/// clock is off takes no lease, so it cannot take an interval from the
/// others.
pub async fn take_lease(store: &dyn ObjectStore, interval_secs: u64, now: u64) -> Result<Lease, StoreError> {
    let interval = now / interval_secs.max(1);
    let mut r = [0u8; 4];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    let probe = format!("{LEASES}clock/{interval:020}-{}", hex::encode(r));
    let body = serde_json::to_vec(&serde_json::json!({ "time": now })).expect("serialises");
    store.put_new(&probe, body.clone().into(), now + LEASE_LOCK_SECS).await?;
    let written = store.head(&probe).await?.and_then(|m| m.modified);
    if let Some(t) = written.filter(|t| t.abs_diff(now) > CLOCK_TOLERANCE_SECS) {
        return Ok(Lease::ClockOff { store: t });
    }
    let key = format!("{LEASES}{interval:020}");
    if store.put_new(&key, body.into(), now + LEASE_LOCK_SECS).await? == PutOutcome::Exists {
        return Ok(Lease::Taken);
    }
    Ok(Lease::Ours)
}

/// What taking a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This proxy runs the interval's pass.
    Ours,
    /// Another proxy took it.
    Taken,
    /// The store stamped the probe at another time than this proxy's
    /// clock says: the pass must not run (and no lease was taken).
    ClockOff { store: u64 },
}

/// One repository's pass at `now` under `rules`. `hold_deletions` says
/// why this pass must delete nothing (a clock that jumped), if so: keepers'
/// locks are still extended, which never shortens anything.
pub async fn pass_repo(
    app: &App,
    repo: &RepoName,
    rules: &KeepRules,
    now: u64,
    hold_deletions: Option<&str>,
) -> Result<RepoPass, StoreError> {
    let store = &*app.store;
    let mut out = RepoPass { repo: repo.to_string(), ..Default::default() };
    let plan = plan(store, repo, rules).await?;
    let newest = plan.keep.iter().map(|k| k.committed).chain(plan.let_go.iter().map(|l| l.committed)).max();
    if let Some(t) = newest.filter(|t| *t > now + CLOCK_TOLERANCE_SECS) {
        out.skipped = Some(format!(
            "its newest snapshot was committed at {t}, after this pass's clock ({now}): the clock looks wrong, \
             nothing was deleted"
        ));
    } else if let Some(why) = hold_deletions {
        out.skipped = Some(format!("nothing was deleted: {why}"));
    }
    for keeper in plan.keep.iter().filter(|k| k.keep_until > 0) {
        let root = layout::snapshot(repo, &keeper.id);
        let Some(meta) = store.head(&root).await? else { continue };
        if meta.retain_until.is_none_or(|t| t >= keeper.keep_until) {
            continue;
        }
        let Some(mut objects) = objects_of(store, repo, keeper.id).await? else { continue };
        // The root last: until it is extended, the next pass does it again.
        objects.remove(&root);
        let objects: Vec<String> = objects.into_iter().collect();
        let until = keeper.keep_until;
        let objects = &objects;
        let tried = app
            .fan_out(EXTENSIONS_IN_FLIGHT, 0..objects.len(), |i| async move {
                match store.extend_retention(&objects[i], until).await {
                    Err(StoreError::NotFound(_)) => Ok(Some(objects[i].clone())),
                    other => other.map(|()| None),
                }
            })
            .await?;
        // An object the keeper needs is gone: it is damaged (the scrub and
        // a verify name it); its other objects are still extended, and the
        // rest of the pass goes on.
        let missing: Vec<String> = tried.into_iter().flatten().collect();
        if !missing.is_empty() {
            let reason = format!("snapshot {} needs it, and it is missing", keeper.id);
            out.failed.extend(missing.into_iter().map(|key| Doomed { key, reason: reason.clone() }));
            continue;
        }
        store.extend_retention(&root, until).await?;
        let promoted = objects.len() as u64 + 1;
        out.promoted.push(Promoted { snapshot: keeper.id, until, reasons: keeper.reasons.clone(), objects: promoted });
    }
    if out.skipped.is_some() {
        return Ok(out);
    }
    let (doomed, _held) = expiry_plan(store, repo, now, &spared(&plan)).await?;
    let done = delete_doomed(app, repo, doomed, now).await;
    out.deleted = done.deleted;
    out.failed.extend(done.failed);
    Ok(out)
}

/// A whole pass at `now`: every repository whose policy has a schedule.
/// One repository's failure does not stop the others'. Each repository is
/// judged at `now` plus the time the pass has taken so far.
pub async fn pass(app: &App, now: u64, hold_deletions: Option<&str>) -> Result<Vec<RepoPass>, StoreError> {
    let policies = app.repo_policies();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    for repo in repositories(&*app.store).await? {
        let Some(rules) = policies.keep_rules(&repo) else { continue };
        let at = now + started.elapsed().as_secs();
        out.push(pass_repo(app, &repo, &rules, at, hold_deletions).await.unwrap_or_else(|e| RepoPass {
            repo: repo.to_string(),
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
