//! Listing packs: written behind a listing, read instead of each
//! snapshot's objects, and never outliving the keys they copy.

use std::collections::BTreeSet;

use coffer_proto::snapshot::{pack, CommitRequest};
use http::StatusCode;

use super::*;
use crate::api::history::list_snapshots;
use crate::api::snapshots::commit;
use crate::testkit::{self, again, draft, staged, store_ops};

async fn list(app: &Arc<App>, repo: &RepoName, with_roots: bool) -> Vec<SnapshotInfo> {
    let reply = list_snapshots(app, &mut draft("list-snapshots"), repo, with_roots).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    serde_json::from_slice(&reply.body).unwrap()
}

/// `n` more committed snapshots of `repo`: each a new root over the
/// chunks of `first` (from `staged`).
async fn committed(t: &testkit::TestApp, repo: &RepoName, first: &CommitRequest, n: usize) {
    for _ in 0..n {
        let req = again(t, repo, first).await;
        let reply =
            commit(&t.app, &mut draft("commit"), repo, &testkit::uploader(), req.encode().into()).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
    }
}

async fn packs_of(app: &App, repo: &RepoName) -> Vec<String> {
    for _ in 0..200 {
        let keys = app.store.list(&layout::packs(repo)).await.unwrap();
        if !keys.is_empty() {
            return keys;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no listing pack was written");
}

/// A dev proxy whose repository `dev/unit` holds `n` snapshots, listed
/// once: the proxy, the repository, the listing and its pack's key.
async fn packed(n: usize) -> (testkit::TestApp, RepoName, Vec<SnapshotInfo>, String) {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, n).await;
    let listed = list(&t.app, &repo, true).await;
    let key = packs_of(&t.app, &repo).await.remove(0);
    (t, repo, listed, key)
}

#[tokio::test]
async fn a_listing_packs_the_snapshots_and_the_next_proxy_reads_no_object_per_snapshot() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    // Below the threshold, a listing packs nothing.
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, PACK_MIN - 1).await;
    assert_eq!(list(&t.app, &repo, true).await.len(), PACK_MIN - 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(t.app.store.list(&layout::packs(&repo)).await.unwrap().is_empty(), "{} is too few to pack", PACK_MIN - 1);

    committed(&t, &repo, &first, 9).await;
    let plain = list(&t.app, &repo, true).await;
    assert_eq!(plain.len(), PACK_MIN + 8);
    assert!(plain.iter().all(|i| i.root.is_none()), "no pack yet, so no copies");
    let keys = packs_of(&t.app, &repo).await;
    assert_eq!(keys.len(), 1, "snapshots of one week go in one pack");
    let bytes = t.app.store.get(&keys[0]).await.unwrap().unwrap();
    assert_eq!(keys[0], layout::pack(&repo, &pack::pack_id(&bytes)), "named by its content");
    let entries = pack::decode(&bytes).unwrap();
    assert_eq!(entries.len(), plain.len());
    let lock = t.app.store.head(&keys[0]).await.unwrap().unwrap().retain_until.unwrap();
    assert_eq!(lock, plain.iter().map(|i| i.retain_until).min().unwrap(), "locked until its first snapshot's end");

    // A proxy that has read nothing: one LIST each of roots and indexes,
    // one GET for the pack, none per snapshot.
    let fresh = testkit::app_on(&t).await;
    let (gets, lists) = (store_ops(&fresh, "get"), store_ops(&fresh, "list"));
    let listed = list(&fresh, &repo, true).await;
    assert_eq!(store_ops(&fresh, "get") - gets, 1, "only the pack is read");
    assert_eq!(store_ops(&fresh, "list") - lists, 2);
    let strip = |v: &[SnapshotInfo]| v.iter().map(|i| SnapshotInfo { root: None, ..i.clone() }).collect::<Vec<_>>();
    assert_eq!(strip(&listed), plain, "the pack says what the index segments say");
    for info in &listed {
        let copy = info.root.as_ref().expect("every packed snapshot comes with its root");
        let root = t.app.store.get(&layout::snapshot(&repo, &info.id)).await.unwrap().unwrap();
        assert_eq!(copy.envelope, root.to_vec());
        let key_id = coffer_proto::envelope::parse_header(&root).unwrap().key_id;
        assert_eq!(copy.key, t.app.store.get(&layout::key(&repo, &key_id)).await.unwrap().unwrap().to_vec());
    }
    // A caller that may not read roots gets none.
    assert!(list(&fresh, &repo, false).await.iter().all(|i| i.root.is_none()));
    // A listing that finds everything packed writes no second pack.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(fresh.store.list(&layout::packs(&repo)).await.unwrap(), keys);

    // A root deleted behind the proxy's back is not listed from the pack.
    let gone = listed[3].id;
    std::fs::remove_file(t.dir.path().join("store/objects").join(layout::snapshot(&repo, &gone))).unwrap();
    let after = list(&testkit::app_on(&t).await, &repo, true).await;
    assert_eq!(after.len(), listed.len() - 1);
    assert!(after.iter().all(|i| i.id != gone));
}

#[tokio::test]
async fn a_pack_that_fails_its_checks_is_not_used() {
    let (t, repo, plain, key) = packed(PACK_MIN).await;
    // Raw store access swaps two snapshots' roots in a copy of the pack.
    let mut entries = pack::decode(&t.app.store.get(&key).await.unwrap().unwrap()).unwrap();
    let (a, b) = (entries[0].key.clone(), entries[1].key.clone());
    (entries[0].key, entries[1].key) = (b, a);
    let forged = pack::encode(&entries);
    t.app.store.put_new(&layout::pack(&repo, &pack::pack_id(&forged)), forged.into(), u64::MAX / 2).await.unwrap();
    std::fs::remove_file(t.dir.path().join("store/objects").join(&key)).unwrap();
    let fresh = testkit::app_on(&t).await;
    let gets = store_ops(&fresh, "get");
    let listed = list(&fresh, &repo, true).await;
    assert_eq!(listed, plain, "the forged pack is refused: every snapshot is read on its own, without copies");
    assert_eq!(store_ops(&fresh, "get") - gets, 1 + plain.len() as u64);
}

#[tokio::test]
async fn expiry_deletes_unlocked_packs_first_and_keeps_the_keys_a_locked_pack_copies() {
    let (t, repo, _, written) = packed(PACK_MIN).await;
    let entries = pack::decode(&t.app.store.get(&written).await.unwrap().unwrap()).unwrap();
    // A pack locked far longer than its snapshots (none the proxy writes).
    let long = pack::encode(&entries[..1]);
    let long_key = layout::pack(&repo, &pack::pack_id(&long));
    let far = u64::MAX / 4;
    t.app.store.put_new(&long_key, long.into(), far).await.unwrap();

    // Past every snapshot's lock, before the long pack's.
    let later = entries.iter().map(|e| e.retain_until).max().unwrap() + 1;
    let (doomed, _) = crate::lifecycle::expiry_plan(&*t.app.store, &repo, later, &BTreeSet::new()).await.unwrap();
    assert_eq!(doomed[0].key, written, "the unlocked pack goes first");
    assert!(doomed.iter().all(|d| d.key != long_key), "a locked pack stays");
    let copied = coffer_proto::envelope::parse_header(&entries[0].root).unwrap().key_id;
    assert!(doomed.iter().all(|d| d.key != layout::key(&repo, &copied)), "the key record it copies stays");
    let other = coffer_proto::envelope::parse_header(&entries[1].root).unwrap().key_id;
    assert!(doomed.iter().any(|d| d.key == layout::key(&repo, &other)), "other keys go: {doomed:?}");
    assert!(doomed.iter().any(|d| d.key == layout::snapshot(&repo, &entries[0].snapshot)));
}

#[tokio::test]
async fn a_pack_not_named_by_its_hash_is_refused_once_and_not_read_again() {
    let (t, repo, _, key) = packed(PACK_MIN).await;
    let bytes = t.app.store.get(&key).await.unwrap().unwrap();
    // The same bytes under another name: whoever wrote it, not a proxy.
    let renamed = layout::pack(&repo, &"0".repeat(64));
    t.app.store.put_new(&renamed, bytes, u64::MAX / 2).await.unwrap();
    std::fs::remove_file(t.dir.path().join("store/objects").join(&key)).unwrap();
    // A proxy that reads packs but writes none, so only reads are counted.
    let mut fresh = testkit::app_with_store(&t, t.app.store.clone());
    fresh.packs_enabled = false;
    let fresh = Arc::new(fresh);
    let gets = store_ops(&fresh, "get");
    assert!(list(&fresh, &repo, true).await.iter().all(|i| i.root.is_none()), "nothing from the renamed pack");
    let after_first = store_ops(&fresh, "get");
    assert_eq!(after_first - gets, 1 + PACK_MIN as u64, "the pack, then each snapshot's header");
    list(&fresh, &repo, true).await;
    assert_eq!(store_ops(&fresh, "get"), after_first, "a refused pack is not fetched again (headers are cached)");
}

#[tokio::test]
async fn snapshots_whose_locks_end_weeks_apart_go_in_packs_of_their_own() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, PACK_MIN + 4).await;
    let infos = list(&t.app, &repo, false).await;
    // Wait for that listing's packing, then undo it: the locks change below.
    for key in packs_of(&t.app, &repo).await {
        std::fs::remove_file(t.dir.path().join("store/objects").join(&key)).unwrap();
    }
    // A schedule keeps half of them 30 days longer.
    let later: Vec<SnapshotId> = infos.iter().step_by(2).map(|i| i.id).collect();
    for id in &later {
        let root = layout::snapshot(&repo, id);
        let until = t.app.store.head(&root).await.unwrap().unwrap().retain_until.unwrap() + 30 * 86_400;
        t.app.store.extend_retention(&root, until).await.unwrap();
    }
    let fresh = testkit::app_on(&t).await;
    list(&fresh, &repo, false).await;
    let mut keys = packs_of(&fresh, &repo).await;
    for _ in 0..100 {
        if keys.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        keys = fresh.store.list(&layout::packs(&repo)).await.unwrap();
    }
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in keys {
        let entries = pack::decode(&fresh.store.get(&key).await.unwrap().unwrap()).unwrap();
        let extended = entries.iter().filter(|e| later.contains(&e.snapshot)).count();
        assert!(extended == 0 || extended == entries.len(), "a pack mixes locks a month apart");
        let lock = fresh.store.head(&key).await.unwrap().unwrap().retain_until.unwrap();
        assert_eq!(lock, entries.iter().map(|e| e.retain_until).min().unwrap());
        for e in &entries {
            let root = fresh.store.head(&layout::snapshot(&repo, &e.snapshot)).await.unwrap().unwrap();
            assert_eq!(Some(e.retain_until), root.retain_until, "each entry carries its root's lock as stored");
        }
    }
}

#[tokio::test]
async fn a_proxy_with_packs_off_writes_none() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, PACK_MIN + 1).await;
    let mut app = testkit::app_with_store(&t, t.app.store.clone());
    app.packs_enabled = false;
    let app = Arc::new(app);
    assert_eq!(list(&app, &repo, true).await.len(), PACK_MIN + 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(app.store.list(&layout::packs(&repo)).await.unwrap().is_empty());
}

#[tokio::test]
async fn expiry_keeps_every_key_when_a_pack_cannot_be_deleted_or_appeared_after_the_plan() {
    let (t, repo, _, written) = packed(PACK_MIN).await;
    let entries = pack::decode(&t.app.store.get(&written).await.unwrap().unwrap()).unwrap();
    let later = entries.iter().map(|e| e.retain_until).max().unwrap() + 1;
    let key_of = |e: &PackEntry| layout::key(&repo, &envelope::parse_header(&e.root).unwrap().key_id);

    // The pack's delete fails: no key record goes.
    let store = Arc::new(testkit::Faulty::new(t.app.store.clone()));
    *store.delete_fails_for.lock().unwrap() = Some("/index/packs/".into());
    let faulty = testkit::app_with_store(&t, store.clone());
    let (doomed, _) = crate::lifecycle::expiry_plan(&*store, &repo, later, &BTreeSet::new()).await.unwrap();
    assert!(doomed.iter().any(|d| d.key == key_of(&entries[0])), "planned: every key");
    let done = crate::lifecycle::delete_doomed(&faulty, &repo, doomed.clone(), later).await;
    assert!(done.deleted.iter().all(|d| !d.key.contains("/keys/")), "{:?}", done.deleted);
    assert!(t.app.store.head(&key_of(&entries[0])).await.unwrap().is_some());

    // A pack stored after the plan (another proxy's, locked past `later`)
    // keeps the keys it copies, and only those.
    let (doomed, _) = crate::lifecycle::expiry_plan(&*t.app.store, &repo, later, &BTreeSet::new()).await.unwrap();
    let late = pack::encode(&entries[..1]);
    t.app.store.put_new(&layout::pack(&repo, &pack::pack_id(&late)), late.into(), later + 86_400).await.unwrap();
    let done = crate::lifecycle::delete_doomed(&t.app, &repo, doomed, later).await;
    assert!(t.app.store.head(&key_of(&entries[0])).await.unwrap().is_some(), "the late pack's key stays");
    assert!(done.failed.iter().any(|d| d.key == key_of(&entries[0]) && d.reason.contains("listing pack")));
    assert!(t.app.store.head(&key_of(&entries[1])).await.unwrap().is_none(), "the others go: {:?}", done.failed);
}

#[tokio::test]
async fn the_report_reads_headers_from_packs_and_falls_back_to_each_header() {
    let (t, repo, listed, key) = packed(PACK_MIN + 2).await;
    let ids: Vec<SnapshotId> = listed.iter().map(|i| i.id).collect();
    let expected: Vec<(SnapshotId, u64, coffer_proto::snapshot::SnapshotStats)> =
        listed.iter().map(|i| (i.id, i.committed, i.stats)).collect();
    let read = |keys: Vec<String>| {
        let (app, repo, ids) = (t.app.clone(), repo.clone(), ids.clone());
        async move {
            let keys: Vec<&String> = keys.iter().collect();
            let gets = store_ops(&app, "get");
            let headers = crate::compliance::packed::headers(&*app.store, &repo, &keys, &ids).await.unwrap();
            let got: Vec<_> = headers.iter().map(|h| (h.snapshot, h.committed, h.stats)).collect();
            (got, store_ops(&app, "get") - gets)
        }
    };
    assert_eq!(read(vec![key.clone()]).await, (expected.clone(), 2), "the pack, and the newest's own header");
    // A pack under a name that is not its hash is not trusted.
    let bytes = t.app.store.get(&key).await.unwrap().unwrap();
    let renamed = layout::pack(&repo, &"1".repeat(64));
    t.app.store.put_new(&renamed, bytes.clone(), u64::MAX / 2).await.unwrap();
    assert_eq!(read(vec![renamed]).await, (expected.clone(), 1 + ids.len() as u64), "each header read instead");
    // A forged pack, rightly named, that makes an old snapshot the newest
    // (an RPO met on paper) is caught by that snapshot's own header.
    let mut entries = pack::decode(&bytes).unwrap();
    entries[0].committed = crate::unix_now() + 3600;
    let forged = pack::encode(&entries);
    let forged_key = layout::pack(&repo, &pack::pack_id(&forged));
    t.app.store.put_new(&forged_key, forged.into(), u64::MAX / 2).await.unwrap();
    assert_eq!(read(vec![forged_key]).await, (expected, 2 + ids.len() as u64), "every header read instead");
}

#[tokio::test]
async fn snapshots_no_pack_can_take_are_tried_once_not_at_every_listing() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    // Roots of huge streams (long manifest lists): larger than a pack takes.
    for _ in 0..PACK_MIN {
        let (key_id, key, record) = t.data_key(&repo);
        crate::api::repo::put_key(&t.app, &testkit::writer_grant(), &repo, key_id, record).await.unwrap();
        let snapshot = SnapshotId::random();
        let plain = vec![b' '; PACK_ROOT_MAX];
        let root = envelope::seal(
            envelope::Kind::SnapshotRoot,
            envelope::Compression::None,
            key_id,
            &key,
            &repo,
            snapshot.as_bytes(),
            &plain,
        );
        let req = CommitRequest { snapshot, root, ..again(&t, &repo, &first).await };
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
    }
    list(&t.app, &repo, false).await;
    // The packing runs once, and writes nothing.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for _ in 0..100 {
        if !t.app.packs.packing.lock().unwrap().contains(&repo) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(t.app.store.list(&layout::packs(&repo)).await.unwrap().is_empty());
    let (gets, heads) = (store_ops(&t.app, "get"), store_ops(&t.app, "head"));
    list(&t.app, &repo, false).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(store_ops(&t.app, "get"), gets, "no second packing reads their roots");
    assert_eq!(store_ops(&t.app, "head"), heads);
}
