//! The lifecycle pass (docs/lifecycle.md): it runs by itself in the proxy,
//! every `lifecycle.interval_secs`, once per interval over all the proxies
//! of a store (whichever creates that interval's lease object runs it).
//! For each repository whose policy has a `keep` schedule it extends the
//! locks of every object each keeper needs to the end of its rule's reach
//! (extended, never shortened), then deletes what expiry may: snapshots no
//! rule keeps once their locks have ended and they are not held, and what
//! no remaining snapshot references. It never deletes a repository's newest
//! snapshot, and does nothing when the proxy's clock and the store's
//! disagree, or the newest snapshot lies in the pass's future: a clock far
//! off must not expire everything.

use std::collections::BTreeSet;

use coffer_proto::{layout, RepoName, SnapshotId, REPO_SEGMENTS_MAX};
use serde::Serialize;

use super::expiry::{delete_doomed, expiry_plan, objects_of, Doomed};
use super::plan::{plan, Plan};
use crate::app::App;
use crate::keep::KeepRules;
use crate::store::{ObjectStore, PutOutcome, StoreError};

/// How far the proxy's clock may be from the store's, and the newest
/// snapshot ahead of the pass, before a pass does nothing.
pub const CLOCK_TOLERANCE_SECS: u64 = 600;
/// Lease objects: `admin/lifecycle/<interval number>`, one per interval.
pub const LEASES: &str = "admin/lifecycle/";
/// How long a lease object is locked (then any pass may delete it).
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

/// The snapshots of a plan that expiry must spare: every keeper, and the
/// newest snapshot whatever the rules say.
fn spared(plan: &Plan) -> BTreeSet<SnapshotId> {
    let mut out: BTreeSet<SnapshotId> = plan.keep.iter().map(|k| k.id).collect();
    let newest = plan.keep.iter().map(|k| (k.committed, k.id)).chain(plan.let_go.iter().map(|l| (l.committed, l.id)));
    out.extend(newest.max().map(|(_, id)| id));
    out
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

/// Takes the lease of the interval holding `now`: true for the one proxy
/// that created it. Then checks the store's clock against `now`.
pub async fn take_lease(store: &dyn ObjectStore, interval_secs: u64, now: u64) -> Result<Lease, StoreError> {
    let key = format!("{LEASES}{:020}", now / interval_secs.max(1));
    let body = serde_json::to_vec(&serde_json::json!({ "time": now })).expect("serialises");
    if store.put_new(&key, body.into(), now + LEASE_LOCK_SECS).await? == PutOutcome::Exists {
        return Ok(Lease::Taken);
    }
    let written = store.head(&key).await?.and_then(|m| m.modified);
    match written {
        Some(t) if t.abs_diff(now) > CLOCK_TOLERANCE_SECS => Ok(Lease::ClockOff { store: t }),
        _ => Ok(Lease::Ours),
    }
}

/// What taking a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This proxy runs the interval's pass.
    Ours,
    /// Another proxy took it.
    Taken,
    /// Ours, but the store wrote it at another time than this proxy's
    /// clock says: the pass must not run.
    ClockOff { store: u64 },
}

/// One repository's pass at `now` under `rules`.
pub async fn pass_repo(app: &App, repo: &RepoName, rules: &KeepRules, now: u64) -> Result<RepoPass, StoreError> {
    let store = &*app.store;
    let mut out = RepoPass { repo: repo.to_string(), ..Default::default() };
    let plan = plan(store, repo, rules).await?;
    let newest = plan.keep.iter().map(|k| k.committed).chain(plan.let_go.iter().map(|l| l.committed)).max();
    if let Some(t) = newest.filter(|t| *t > now + CLOCK_TOLERANCE_SECS) {
        out.skipped = Some(format!(
            "its newest snapshot was committed at {t}, after this pass's clock ({now}): the clock looks wrong, \
             nothing was done"
        ));
        return Ok(out);
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
        app.fan_out(EXTENSIONS_IN_FLIGHT, 0..objects.len(), |i| async move {
            store.extend_retention(&objects[i], until).await
        })
        .await?;
        store.extend_retention(&root, until).await?;
        let promoted = objects.len() as u64 + 1;
        out.promoted.push(Promoted { snapshot: keeper.id, until, reasons: keeper.reasons.clone(), objects: promoted });
    }
    let (doomed, _held) = expiry_plan(store, repo, now, &spared(&plan)).await?;
    let done = delete_doomed(app, repo, doomed, now).await;
    (out.deleted, out.failed) = (done.deleted, done.failed);
    Ok(out)
}

/// A whole pass at `now`: every repository whose policy has a schedule.
/// One repository's failure does not stop the others'.
pub async fn pass(app: &App, now: u64) -> Result<Vec<RepoPass>, StoreError> {
    let policies = app.repo_policies();
    let mut out = Vec::new();
    for repo in repositories(&*app.store).await? {
        let Some(rules) = policies.keep_rules(&repo) else { continue };
        out.push(pass_repo(app, &repo, &rules, now).await.unwrap_or_else(|e| RepoPass {
            repo: repo.to_string(),
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use coffer_proto::snapshot::{IndexEntry, IndexSegment, SnapshotStats};
    use coffer_proto::{ChunkId, KeyId};

    use super::*;
    use crate::access::governance::{RepoPolicies, RepoPolicyConfig};
    use crate::store::Recorded;
    use crate::testkit;

    const DAY: u64 = 86_400;
    /// 2026-01-01T00:00:00Z, a Thursday.
    const START: u64 = 1_767_225_600;
    /// Each object's lock at commit: retention and slack.
    const LOCK: u64 = 37 * DAY;

    async fn put(app: &App, key: &str, body: Vec<u8>, until: u64) {
        let recorded = Recorded { digest: *blake3::hash(&body).as_bytes(), sealed_by: None, scope: None };
        app.store.put_object(key, Bytes::from(body), until, recorded).await.unwrap();
    }

    /// A committed snapshot made on `day` (at 01:00), with its own chunk and
    /// one all of them share, as a commit on that day leaves it.
    async fn snapshot(app: &App, repo: &RepoName, day: u64, shared: ChunkId, key: KeyId) -> (SnapshotId, ChunkId) {
        let committed = START + day * DAY + 3600;
        let until = committed + LOCK;
        let id = SnapshotId::from_bytes(*blake3::hash(&day.to_le_bytes()).as_bytes().first_chunk().unwrap());
        let own = ChunkId::from_bytes(*blake3::hash(id.as_bytes()).as_bytes());
        put(app, &layout::chunk(repo, &own), vec![1], until).await;
        app.store.extend_retention(&layout::chunk(repo, &shared), until).await.unwrap();
        app.store.extend_retention(&layout::key(repo, &key), until).await.unwrap();
        let entry = |id| IndexEntry { id, size: 1, retain_until: until, copy: false };
        let index = IndexSegment {
            snapshot: id,
            committed,
            retain_until: until,
            stats: SnapshotStats::default(),
            keys: Some(vec![key]),
            scope: Some(testkit::uploader().scope),
            chunks: vec![entry(own), entry(shared)],
        };
        put(app, &layout::index(repo, &id), index.encode(), until).await;
        put(app, &layout::snapshot(repo, &id), vec![2], until).await;
        (id, own)
    }

    fn schedule(keep: &str) -> RepoPolicies {
        let text = format!("repos = \"dev/**\"\nclassification = \"internal\"\nkeep = {keep}\n");
        let policy: RepoPolicyConfig = toml::from_str(&text).unwrap();
        RepoPolicies::new(&[policy], None, None).unwrap()
    }

    /// The worked example, with a fake clock: 400 dailies under
    /// `daily = 7, weekly = 5, monthly = 12, yearly = 2`. The pass deletes
    /// exactly what the plan let go once its lock ended, locks every keeper
    /// to its period's end, deletes no chunk a survivor needs, and a later
    /// pass lets the rest of the let-go expire.
    #[tokio::test]
    async fn a_pass_keeps_exactly_the_schedules_keepers_and_locks_them_to_their_periods_end() {
        let t = testkit::app().await;
        let app = &t.app;
        app.set_repo_policies(schedule("{ daily = 7, weekly = 5, monthly = 12, yearly = 2 }"));
        let repo: RepoName = "dev/life".parse().unwrap();
        put(app, &layout::config(&repo), b"{}".to_vec(), START + LOCK).await;
        let (shared, key) = (ChunkId::from_bytes([7; 32]), KeyId::from_bytes([8; 16]));
        put(app, &layout::chunk(&repo, &shared), vec![3], START).await;
        put(app, &layout::key(&repo, &key), vec![4], START).await;
        let mut own: BTreeMap<SnapshotId, (u64, ChunkId)> = BTreeMap::new();
        for day in 0..400 {
            let (id, chunk) = snapshot(app, &repo, day, shared, key).await;
            own.insert(id, (START + day * DAY + 3600, chunk));
        }
        let now = START + 400 * DAY;
        let rules = app.repo_policies().keep_rules(&repo).unwrap();
        let before = plan(&*app.store, &repo, &rules).await.unwrap();
        assert_eq!(before.keep.len(), 20, "the worked example of docs/lifecycle.md");
        let due: BTreeSet<SnapshotId> = before.let_go.iter().filter(|l| l.retain_until <= now).map(|l| l.id).collect();

        let report = pass(app, now).await.unwrap();
        assert_eq!(report.len(), 1, "the one repository with a schedule");
        let r = &report[0];
        assert!(r.failed.is_empty() && r.error.is_none() && r.skipped.is_none(), "{r:?}");
        let deleted_roots: BTreeSet<SnapshotId> =
            r.deleted.iter().filter_map(|d| layout::id_of(&d.key).filter(|_| d.key.contains("/snapshots/"))).collect();
        assert_eq!(deleted_roots, due, "the pass did what the plan said");
        for (id, (committed, chunk)) in &own {
            let root = app.store.head(&layout::snapshot(&repo, id)).await.unwrap();
            let chunk = app.store.head(&layout::chunk(&repo, chunk)).await.unwrap();
            let keeper = before.keep.iter().find(|k| k.id == *id);
            if due.contains(id) {
                assert!(root.is_none() && chunk.is_none(), "{id}: deleted with its own chunk");
            } else {
                let (root, chunk) = (root.unwrap(), chunk.unwrap());
                let until = keeper.map_or(committed + LOCK, |k| k.keep_until.max(committed + LOCK));
                assert!(root.retain_until.unwrap() >= until && chunk.retain_until.unwrap() >= until, "{id}");
            }
        }
        assert!(app.store.head(&layout::chunk(&repo, &shared)).await.unwrap().is_some(), "a survivor needs it");
        let yearly = before.keep.iter().find(|k| k.reasons.iter().any(|r| r.starts_with("yearly 2026"))).unwrap();
        assert_eq!(yearly.keep_until, START + 2 * 365 * DAY, "2026's keeper is kept to the end of 2027");
        assert!(r.promoted.iter().any(|p| p.snapshot == yearly.id && p.until == yearly.keep_until), "{r:?}");

        // Forty days on, no new snapshots: what only its lock kept goes;
        // every keeper stays, and a second pass extends nothing again.
        let later = now + 40 * DAY;
        let again = pass(app, later).await.unwrap();
        assert!(again[0].promoted.is_empty(), "{:?}", again[0].promoted);
        let left = plan(&*app.store, &repo, &rules).await.unwrap();
        assert_eq!(left.keep.len(), 20);
        assert!(left.let_go.is_empty(), "only keepers are left: {:?}", left.let_go);
    }

    /// A clock that looks wrong: nothing is deleted. Newest snapshot in the
    /// pass's future, or the store's clock far from the proxy's.
    #[tokio::test]
    async fn a_clock_that_looks_wrong_deletes_nothing() {
        let t = testkit::app().await;
        let app = &t.app;
        app.set_repo_policies(schedule("{ last = 1 }"));
        let repo: RepoName = "dev/clock".parse().unwrap();
        put(app, &layout::config(&repo), b"{}".to_vec(), START).await;
        let (shared, key) = (ChunkId::from_bytes([7; 32]), KeyId::from_bytes([8; 16]));
        put(app, &layout::chunk(&repo, &shared), vec![3], START).await;
        put(app, &layout::key(&repo, &key), vec![4], START).await;
        for day in 0..3 {
            snapshot(app, &repo, day, shared, key).await;
        }
        // A proxy whose clock is behind the newest commit.
        let behind = START + DAY;
        let r = &pass(app, behind).await.unwrap()[0];
        assert!(r.skipped.as_deref().unwrap_or_default().contains("clock looks wrong"), "{r:?}");
        assert!(r.deleted.is_empty());
        // The store's clock: the lease written now carries the store's time.
        let now = crate::unix_now();
        assert_eq!(take_lease(&*app.store, 3600, now).await.unwrap(), Lease::Ours);
        assert_eq!(take_lease(&*app.store, 3600, now).await.unwrap(), Lease::Taken, "one pass per interval");
        let far = now + 30 * DAY;
        assert!(matches!(take_lease(&*app.store, 3600, far).await.unwrap(), Lease::ClockOff { .. }));
        // With a sane clock, the two older snapshots go and the newest stays.
        let r = &pass(app, START + 3 * DAY + LOCK).await.unwrap()[0];
        assert_eq!(r.deleted.iter().filter(|d| d.key.contains("/snapshots/")).count(), 2, "{r:?}");
        assert_eq!(
            plan(&*app.store, &repo, &app.repo_policies().keep_rules(&repo).unwrap()).await.unwrap().keep.len(),
            1
        );
    }

    #[tokio::test]
    async fn repositories_are_found_without_listing_their_objects() {
        let t = testkit::app().await;
        for repo in ["dev/a", "dev/b/c", "prod/x/y/z"] {
            let repo: RepoName = repo.parse().unwrap();
            put(&t.app, &layout::config(&repo), b"{}".to_vec(), START).await;
            put(&t.app, &layout::chunk(&repo, &ChunkId::from_bytes([1; 32])), vec![1], START).await;
        }
        put(&t.app, "admin/lockdown/x", vec![1], START).await;
        let found: Vec<String> = repositories(&*t.app.store).await.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(found, ["dev/a", "dev/b/c", "prod/x/y/z"]);
    }

    /// A pass cut off half way (its chunk deletions fail, as when the
    /// proxy dies after deleting the roots) leaves no remaining snapshot
    /// that needs a deleted object, and the next pass finishes the work. A
    /// held snapshot is never deleted, whatever its lock says; a keeper
    /// whose lock extension failed is extended by the next pass.
    #[tokio::test]
    async fn a_pass_cut_off_half_way_leaves_every_survivor_whole_and_the_next_finishes() {
        let t = testkit::app().await;
        let faulty = std::sync::Arc::new(testkit::Faulty::new(t.app.store.clone()));
        let app = testkit::app_with_store(&t, faulty.clone());
        app.set_repo_policies(schedule("{ daily = 3, monthly = 6 }"));
        let repo: RepoName = "dev/cut".parse().unwrap();
        put(&app, &layout::config(&repo), b"{}".to_vec(), START).await;
        let (shared, key) = (ChunkId::from_bytes([7; 32]), KeyId::from_bytes([8; 16]));
        put(&app, &layout::chunk(&repo, &shared), vec![3], START).await;
        put(&app, &layout::key(&repo, &key), vec![4], START).await;
        let mut ids = Vec::new();
        for day in 0..90 {
            ids.push(snapshot(&app, &repo, day, shared, key).await.0);
        }
        let held = ids[10];
        crate::access::switches::write_switch(
            &*app.store,
            &crate::access::switches::hold_prefix(&repo, &held),
            true,
            "t".into(),
        )
        .await
        .unwrap();
        let now = START + 200 * DAY;
        // Whatever is left restores: every object each remaining root needs.
        let whole = |app: &App| {
            let repo = repo.clone();
            let store = app.store.clone();
            async move {
                let prefix = layout::prefix(&repo, layout::Kind::Snapshots);
                for root in store.list(&prefix).await.unwrap() {
                    let id: SnapshotId = root[prefix.len()..].parse().unwrap();
                    for key in objects_of(&*store, &repo, id).await.unwrap().unwrap() {
                        assert!(store.head(&key).await.unwrap().is_some(), "{id} needs {key}, which is gone");
                    }
                }
            }
        };
        // A keeper's extension fails: the pass stops before deleting.
        *faulty.extend_fails_for.lock().unwrap() = Some("/snapshots/".into());
        let first = &pass(&app, now).await.unwrap()[0];
        assert!(first.error.is_some() && first.deleted.is_empty(), "{first:?}");
        // Then the chunk deletions fail, after the roots went.
        *faulty.extend_fails_for.lock().unwrap() = None;
        *faulty.delete_fails_for.lock().unwrap() = Some("/chunks/".into());
        let second = &pass(&app, now).await.unwrap()[0];
        assert!(!second.promoted.is_empty(), "the keepers the first pass could not extend");
        assert!(
            !second.failed.is_empty() && second.deleted.iter().any(|d| d.key.contains("/snapshots/")),
            "{second:?}"
        );
        assert!(!second.deleted.iter().any(|d| d.key.contains("/keys/")), "no key record while a chunk stays");
        whole(&app).await;
        assert!(app.store.head(&layout::snapshot(&repo, &held)).await.unwrap().is_some(), "held");
        *faulty.delete_fails_for.lock().unwrap() = None;
        let third = &pass(&app, now).await.unwrap()[0];
        assert!(third.failed.is_empty() && third.error.is_none(), "{third:?}");
        assert!(third.deleted.iter().any(|d| d.key.contains("/chunks/")), "the next pass finishes: {third:?}");
        whole(&app).await;
        let left = plan(&*app.store, &repo, &app.repo_policies().keep_rules(&repo).unwrap()).await.unwrap();
        let let_go: Vec<SnapshotId> = left.let_go.iter().map(|l| l.id).collect();
        assert_eq!(let_go, [held], "only the held snapshot outlives the schedule");
        assert!(pass(&app, now).await.unwrap()[0].deleted.is_empty(), "nothing left to do");
    }
}
