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

    let due_now = crate::lifecycle::plan::due(&*app.store, &repo, &before, now).await.unwrap();
    let report = pass(app, now, None).await.unwrap();
    assert_eq!(report.len(), 1, "the one repository with a schedule");
    let r = &report[0];
    assert!(r.failed.is_empty() && r.error.is_none() && r.skipped.is_none(), "{r:?}");
    let deleted_roots: BTreeSet<SnapshotId> =
        r.deleted.iter().filter_map(|d| layout::id_of(&d.key).filter(|_| d.key.contains("/snapshots/"))).collect();
    assert_eq!(deleted_roots, due, "the pass did what the plan said");
    assert_eq!(r.deleted.len(), due_now.objects, "and deleted what the plan counted");
    assert!(due_now.bytes > 0);
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
    let again = pass(app, later, None).await.unwrap();
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
    let r = &pass(app, behind, None).await.unwrap()[0];
    assert!(r.skipped.as_deref().unwrap_or_default().contains("clock looks wrong"), "{r:?}");
    assert!(r.deleted.is_empty());
    // The store's clock: the lease written now carries the store's time.
    let now = crate::unix_now();
    assert_eq!(take_lease(&*app.store, 3600, now).await.unwrap(), Lease::Ours);
    assert_eq!(take_lease(&*app.store, 3600, now).await.unwrap(), Lease::Taken, "one pass per interval");
    let far = now + 30 * DAY;
    assert!(matches!(take_lease(&*app.store, 3600, far).await.unwrap(), Lease::ClockOff { .. }));
    // A pass after the clock jumped (the loop compares it with the
    // monotonic clock) deletes nothing.
    let r = &pass(app, START + 3 * DAY + LOCK, Some("the clock jumped")).await.unwrap()[0];
    assert!(r.deleted.is_empty() && r.skipped.as_deref().unwrap_or_default().contains("jumped"), "{r:?}");
    // With a sane clock, the two older snapshots go and the newest stays.
    let r = &pass(app, START + 3 * DAY + LOCK, None).await.unwrap()[0];
    assert_eq!(r.deleted.iter().filter(|d| d.key.contains("/snapshots/")).count(), 2, "{r:?}");
    assert_eq!(plan(&*app.store, &repo, &app.repo_policies().keep_rules(&repo).unwrap()).await.unwrap().keep.len(), 1);
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
    let first = &pass(&app, now, None).await.unwrap()[0];
    assert!(first.error.is_some() && first.deleted.is_empty(), "{first:?}");
    // Then the chunk deletions fail, after the roots went.
    *faulty.extend_fails_for.lock().unwrap() = None;
    *faulty.delete_fails_for.lock().unwrap() = Some("/chunks/".into());
    let second = &pass(&app, now, None).await.unwrap()[0];
    assert!(!second.promoted.is_empty(), "the keepers the first pass could not extend");
    assert!(!second.failed.is_empty() && second.deleted.iter().any(|d| d.key.contains("/snapshots/")), "{second:?}");
    assert!(!second.deleted.iter().any(|d| d.key.contains("/keys/")), "no key record while a chunk stays");
    whole(&app).await;
    assert!(app.store.head(&layout::snapshot(&repo, &held)).await.unwrap().is_some(), "held");
    *faulty.delete_fails_for.lock().unwrap() = None;
    let third = &pass(&app, now, None).await.unwrap()[0];
    assert!(third.failed.is_empty() && third.error.is_none(), "{third:?}");
    assert!(third.deleted.iter().any(|d| d.key.contains("/chunks/")), "the next pass finishes: {third:?}");
    whole(&app).await;
    let left = plan(&*app.store, &repo, &app.repo_policies().keep_rules(&repo).unwrap()).await.unwrap();
    let let_go: Vec<SnapshotId> = left.let_go.iter().map(|l| l.id).collect();
    assert_eq!(let_go, [held], "only the held snapshot outlives the schedule");
    assert!(pass(&app, now, None).await.unwrap()[0].deleted.is_empty(), "nothing left to do");
}

/// A legal hold put between the plan and the deletion (or a root whose
/// delete fails) keeps that snapshot whole: its root, its index
/// segment, and every chunk, which this run then leaves alone.
#[tokio::test]
async fn a_hold_put_after_the_plan_keeps_the_snapshot_whole() {
    let t = testkit::app().await;
    let faulty = std::sync::Arc::new(testkit::Faulty::new(t.app.store.clone()));
    let app = testkit::app_with_store(&t, faulty.clone());
    let repo: RepoName = "dev/race".parse().unwrap();
    put(&app, &layout::config(&repo), b"{}".to_vec(), START).await;
    let (shared, key) = (ChunkId::from_bytes([7; 32]), KeyId::from_bytes([8; 16]));
    put(&app, &layout::chunk(&repo, &shared), vec![3], START).await;
    put(&app, &layout::key(&repo, &key), vec![4], START).await;
    let (a, a_chunk) = snapshot(&app, &repo, 0, shared, key).await;
    let (b, b_chunk) = snapshot(&app, &repo, 1, shared, key).await;
    let now = START + 100 * DAY;
    let (doomed, _) = expiry_plan(&*app.store, &repo, now, &BTreeSet::new()).await.unwrap();
    assert!(doomed.iter().any(|d| d.key == layout::snapshot(&repo, &a)), "{doomed:?}");
    // Between the plan and the deletions: a hold on a, and b's root
    // cannot be deleted.
    crate::access::switches::write_switch(
        &*app.store,
        &crate::access::switches::hold_prefix(&repo, &a),
        true,
        "t".into(),
    )
    .await
    .unwrap();
    *faulty.delete_fails_for.lock().unwrap() = Some(format!("/snapshots/{b}"));
    let done = delete_doomed(&app, &repo, doomed, now).await;
    assert!(done.deleted.is_empty(), "{:?}", done.deleted);
    for (id, chunk) in [(a, a_chunk), (b, b_chunk)] {
        for key in [layout::snapshot(&repo, &id), layout::index(&repo, &id), layout::chunk(&repo, &chunk)] {
            assert!(app.store.head(&key).await.unwrap().is_some(), "{key} must stay");
        }
    }
    assert!(done.failed.iter().any(|d| d.reason.contains("legal hold")), "{:?}", done.failed);
}

/// A key record is never deleted in a run where another deletion failed
/// (a chunk that stays may need it), and once the next run has deleted
/// everything, exactly what the remaining snapshots name is left: every
/// chunk and key record of the store is named by a remaining index segment.
#[tokio::test]
async fn no_key_record_goes_in_a_run_where_a_deletion_failed_and_nothing_unreferenced_is_left() {
    let t = testkit::app().await;
    let faulty = std::sync::Arc::new(testkit::Faulty::new(t.app.store.clone()));
    let app = testkit::app_with_store(&t, faulty.clone());
    app.set_repo_policies(schedule("{ last = 1 }"));
    let repo: RepoName = "dev/sealed".parse().unwrap();
    put(&app, &layout::config(&repo), b"{}".to_vec(), START).await;
    let (shared, old_key, key) = (ChunkId::from_bytes([7; 32]), KeyId::from_bytes([9; 16]), KeyId::from_bytes([8; 16]));
    put(&app, &layout::chunk(&repo, &shared), vec![3], START).await;
    for k in [old_key, key] {
        put(&app, &layout::key(&repo, &k), vec![4], START).await;
    }
    // The first snapshot alone used the old key; the others the new one.
    snapshot(&app, &repo, 0, shared, old_key).await;
    for day in 1..4 {
        snapshot(&app, &repo, day, shared, key).await;
    }
    let now = START + 100 * DAY;
    let old_record = layout::key(&repo, &old_key);

    *faulty.delete_fails_for.lock().unwrap() = Some("/chunks/".into());
    let first = &pass(&app, now, None).await.unwrap()[0];
    assert!(first.deleted.iter().any(|d| d.key.contains("/snapshots/")), "{first:?}");
    let kept = first.failed.iter().find(|d| d.key == old_record).expect("the old key is kept");
    assert!(kept.reason.contains("other objects could not be deleted"), "{kept:?}");
    assert!(app.store.head(&old_record).await.unwrap().is_some());

    *faulty.delete_fails_for.lock().unwrap() = None;
    let second = &pass(&app, now, None).await.unwrap()[0];
    assert!(second.failed.is_empty() && second.error.is_none(), "{second:?}");
    assert!(second.deleted.iter().any(|d| d.key == old_record), "{second:?}");

    // Completeness: the store holds exactly what the remaining snapshots name.
    let store = &app.store;
    let mut named_chunks = BTreeSet::new();
    let mut named_keys = BTreeSet::new();
    let index_prefix = layout::prefix(&repo, layout::Kind::Index);
    let segments = store.list(&index_prefix).await.unwrap();
    assert_eq!(segments.len(), 1, "only the newest snapshot is left: {segments:?}");
    for name in segments {
        let segment = IndexSegment::decode(&store.get(&name).await.unwrap().unwrap()).unwrap();
        named_chunks.extend(segment.chunks.iter().map(|e| layout::chunk(&repo, &e.id)));
        named_keys.extend(segment.keys.unwrap().iter().map(|k| layout::key(&repo, k)));
    }
    let stored_chunks: BTreeSet<String> =
        store.list(&layout::prefix(&repo, layout::Kind::Chunks)).await.unwrap().into_iter().collect();
    let stored_keys: BTreeSet<String> =
        store.list(&layout::prefix(&repo, layout::Kind::Keys)).await.unwrap().into_iter().collect();
    assert_eq!(stored_chunks, named_chunks, "a chunk no snapshot names was left, or a named one deleted");
    assert_eq!(stored_keys, named_keys, "a key record no snapshot names was left, or a named one deleted");
}
