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
    let reply = list_snapshots(app, repo, with_roots).await.unwrap();
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
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, PACK_MIN).await;
    let plain = list(&t.app, &repo, true).await;
    let key = packs_of(&t.app, &repo).await.remove(0);
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
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let first = staged(&t, &repo, 2).await;
    committed(&t, &repo, &first, PACK_MIN).await;
    list(&t.app, &repo, true).await;
    let written = packs_of(&t.app, &repo).await.remove(0);
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
