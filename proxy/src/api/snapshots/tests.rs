//! The commit: what it checks and writes, and, with the chunk catalog,
//! what it asks the store and what not.

use coffer_proto::snapshot::{decode_ids, encode_ids, CommitRequest, SnapshotStats};

use super::*;
use crate::api::history::list_snapshots;
use crate::testkit::{self, again, draft, staged, store_ops};

#[tokio::test]
async fn a_commit_locks_what_it_needs_and_is_listed_once() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = staged(&t, &repo, 3).await;
    let reply = commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED);
    let info: SnapshotInfo = serde_json::from_slice(&reply.body).unwrap();
    let index = t.app.store.get(&layout::index(&repo, &req.snapshot)).await.unwrap().unwrap();
    let index = IndexSegment::decode(&index).unwrap();
    let mut sorted = req.chunks.clone();
    sorted.sort_unstable();
    assert_eq!(index.chunks.iter().map(|e| e.id).collect::<Vec<_>>(), sorted, "every chunk, in id order");
    assert_eq!(index.keys.as_ref().map(Vec::len), Some(1), "the one data key that sealed them");
    for id in &req.chunks {
        let meta = t.app.store.head(&layout::chunk(&repo, id)).await.unwrap().unwrap();
        assert!(meta.retain_until.unwrap() >= info.retain_until - 1, "each chunk locked as long as the snapshot");
    }
    // The same commit again (a retry) is answered, not doubled.
    let again = commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    let listed = list_snapshots(&t.app, &mut draft("list-snapshots"), &repo, true).await.unwrap();
    let listed: Vec<SnapshotInfo> = serde_json::from_slice(&listed.body).unwrap();
    assert_eq!(listed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![req.snapshot]);
    // Another root under the same id is refused.
    let mut other = req;
    let last = other.root.len() - 1;
    other.root[last] ^= 1;
    let err =
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), other.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(_)), "{err}");
}

#[tokio::test]
async fn a_commit_of_what_is_not_stored_or_with_lying_stats_commits_nothing() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let mut req = staged(&t, &repo, 2).await;
    req.chunks.push(ChunkId::from_bytes([7; 32]));
    let err = commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(ref m) if m.contains("not stored")), "{err}");
    req.chunks.pop();
    // A commit naming 20 000 chunks never stored: refused after a few
    // store requests, not 20 000 (each unknown id costs up to two HEADs).
    let junk = CommitRequest {
        chunks: (0..20_000u32).map(|i| ChunkId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect(),
        ..req.clone()
    };
    let heads = crate::testkit::store_ops(&t.app, "head");
    let err =
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), junk.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(ref m) if m.contains("not stored")), "{err}");
    let made = crate::testkit::store_ops(&t.app, "head") - heads;
    assert!(made < 1_000, "{made} HEADs for a junk commit");
    let twice = CommitRequest { chunks: vec![req.chunks[0], req.chunks[0]], ..req.clone() };
    let err =
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), twice.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("twice")), "{err}");
    let lying = CommitRequest { stats: SnapshotStats { chunks_new: 50, ..req.stats }, ..req.clone() };
    let err =
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), lying.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Invalid(ref m) if m.contains("contradict")), "{err}");
    assert!(t.app.store.list(&layout::prefix(&repo, layout::Kind::Snapshots)).await.unwrap().is_empty());
    assert!(t.app.store.list(&layout::prefix(&repo, layout::Kind::Index)).await.unwrap().is_empty());
    // And the honest commit of the same chunks still goes through.
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
}

#[tokio::test]
async fn a_rebackup_asks_the_store_nothing_per_chunk_and_a_fresh_proxy_still_answers_right() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = staged(&t, &repo, 40).await;
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();

    // The dedup query and the commit of the same chunks again.
    let heads = store_ops(&t.app, "head");
    let answer =
        crate::api::chunks::missing(&t.app, &repo, &testkit::uploader(), &encode_ids(&req.chunks)).await.unwrap();
    assert!(decode_ids(&answer.body).unwrap().is_empty());
    let second = again(&t, &repo, &req).await;
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), second.encode().into()).await.unwrap();
    let per_commit = store_ops(&t.app, "head") - heads;
    assert!(per_commit < 10, "{per_commit} HEADs for 40 known chunks: the key records and config only");

    // A proxy that starts with no catalog asks the store, and agrees.
    let fresh = testkit::app_on(&t).await;
    let unknown = ChunkId::from_bytes([0xee; 32]);
    let mut ids = req.chunks.clone();
    ids.push(unknown);
    let answer = crate::api::chunks::missing(&fresh, &repo, &testkit::uploader(), &encode_ids(&ids)).await.unwrap();
    assert_eq!(decode_ids(&answer.body).unwrap(), vec![unknown]);
    let third = again(&t, &repo, &req).await;
    commit(&fresh, &mut draft("commit"), &repo, &testkit::uploader(), third.encode().into()).await.unwrap();
}

#[tokio::test]
async fn a_leftover_index_for_other_chunks_is_not_paired_with_a_new_root() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = staged(&t, &repo, 3).await;
    // An index under this snapshot's id, for only one of its chunks, as
    // another writer could leave by stopping before its root.
    let other = IndexSegment {
        snapshot: req.snapshot,
        committed: 1,
        retain_until: crate::unix_now() + 86_400,
        stats: SnapshotStats::default(),
        keys: Some(Vec::new()),
        scope: Some(testkit::uploader().scope),
        chunks: vec![IndexEntry { id: req.chunks[0], size: 1, retain_until: crate::unix_now() + 86_400, copy: false }],
    };
    t.app
        .store
        .put_new(&layout::index(&repo, &req.snapshot), other.encode().into(), crate::unix_now() + 86_400)
        .await
        .unwrap();
    let err = commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(ref m) if m.contains("other chunks")), "{err}");
    assert!(t.app.store.head(&layout::snapshot(&repo, &req.snapshot)).await.unwrap().is_none(), "no root");
}

#[tokio::test]
async fn locks_extended_before_another_extension_failed_are_still_audited() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = staged(&t, &repo, 3).await;
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
    // A longer retention now, so every object's lock must grow; the
    // config's extension fails.
    let store = std::sync::Arc::new(testkit::Faulty::new(t.app.store.clone()));
    *store.extend_fails_for.lock().unwrap() = Some("/config".into());
    let mut app = testkit::app_with_store(&t, store.clone());
    app.retention.0 += 86_400 * 30;
    let second = again(&t, &repo, &req).await;
    let err =
        commit(&app, &mut draft("commit"), &repo, &testkit::uploader(), second.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Store(_)), "{err}");
    // The intent first (a commit cut short records nothing after it), then
    // what was done.
    let intent = testkit::wait_for_audit(&t, "objects to be locked until").await;
    assert!(intent.contains("\"extend-locks\""), "{intent}");
    let event = testkit::wait_for_audit(&t, "objects locked until").await;
    assert!(event.contains("\"extend-locks\""), "{event}");
    assert!(t.app.store.head(&layout::snapshot(&repo, &second.snapshot)).await.unwrap().is_none(), "no root");
    // Tried again, the commit extends only what the first attempt did not:
    // a commit of many new chunks cut short by its caller makes progress.
    *store.extend_fails_for.lock().unwrap() = None;
    let before = store_ops(&t.app, "extend_retention");
    commit(&app, &mut draft("commit"), &repo, &testkit::uploader(), second.encode().into()).await.unwrap();
    assert_eq!(store_ops(&t.app, "extend_retention") - before, 1, "the config alone");
}

#[tokio::test]
async fn a_chunk_the_catalog_does_not_know_is_checked_in_the_store() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = staged(&t, &repo, 3).await;
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into()).await.unwrap();
    // A commit naming a chunk nobody uploaded is refused, catalog or not.
    let mut lying = again(&t, &repo, &req).await;
    lying.chunks.push(ChunkId::from_bytes([0xab; 32]));
    let err =
        commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), lying.encode().into()).await.unwrap_err();
    assert!(matches!(err, ApiError::Conflict(ref m) if m.contains("not stored")), "{err}");
}

/// With `retention.upload_lock_hours`, an upload is locked for hours, not
/// for retention: a commit that references it extends its lock to the
/// snapshot's; one no commit references is expiry's once its lock ends.
/// A dedup query does not count on an upload whose lock may end before
/// the backup commits: sent again, its lock starts again.
#[tokio::test]
async fn an_upload_is_locked_short_until_a_commit_references_it() {
    async fn lock_of(app: &App, repo: &RepoName, id: ChunkId) -> u64 {
        app.store.head(&layout::chunk(repo, &id)).await.unwrap().unwrap().retain_until.unwrap()
    }
    async fn absent(app: &App, repo: &RepoName, ids: &[ChunkId]) -> Vec<ChunkId> {
        let who = testkit::uploader();
        let reply = crate::api::chunks::missing(app, repo, &who, &encode_ids(ids)).await.unwrap();
        decode_ids(&reply.body).unwrap()
    }
    let t = testkit::app().await;
    let mut app = testkit::app_with_store(&t, t.app.store.clone());
    app.upload_lock = 48 * 3600;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = testkit::staged_on(&t, &app, &repo, 2).await;
    let (key_id, key, record) = t.data_key(&repo);
    crate::api::repo::put_key(&app, &testkit::writer_grant(), &repo, key_id, record).await.unwrap();
    let (orphan, envelope) = t.chunk(&repo, key_id, &key, b"never committed");
    let digest = Some(blake3::hash(&envelope).to_hex().to_string());
    let who = testkit::uploader();
    let put = crate::api::chunks::put_chunk(&app, &repo, &who, orphan, envelope.clone(), digest.clone());
    assert_eq!(put.await.unwrap().status, StatusCode::CREATED);
    let now = crate::unix_now();
    let (required, until) = app.retention_for(&repo);
    for id in req.chunks.iter().chain([&orphan]) {
        let lock = lock_of(&app, &repo, *id).await;
        assert!((now + 48 * 3600 - 5..=now + 48 * 3600 + 5).contains(&lock), "a short lock: {lock}");
        assert!(lock < required, "not yet the snapshot's lock");
    }
    commit(&app, &mut draft("commit"), &repo, &who, req.encode().into()).await.unwrap();
    for id in &req.chunks {
        assert!(lock_of(&app, &repo, *id).await >= until - 5, "a committed upload is locked as its snapshot");
    }
    assert!(lock_of(&app, &repo, orphan).await < required, "the orphan keeps its short lock");
    // After its lock ends, expiry takes the orphan and nothing else.
    let later = now + 48 * 3600 + 10;
    let (doomed, _) = crate::lifecycle::expiry_plan(&*app.store, &repo, later, &Default::default()).await.unwrap();
    assert_eq!(doomed.iter().map(|d| d.key.clone()).collect::<Vec<_>>(), vec![layout::chunk(&repo, &orphan)]);

    // A dedup query that needs locks to run longer than the orphan's does
    // (half of a longer upload lock) does not count on it, though it is
    // stored and known; sent again, its lock starts again and it counts.
    let ids = [orphan, req.chunks[0]];
    assert!(absent(&app, &repo, &ids).await.is_empty(), "both count while their locks last");
    app.upload_lock = 200 * 3600;
    app.upload_quota = crate::quota::UploadQuota::new(1 << 40);
    assert_eq!(absent(&app, &repo, &ids).await, vec![orphan], "its lock ends before half of 200 h from now");
    let send = || crate::api::chunks::put_chunk(&app, &repo, &who, orphan, envelope.clone(), digest.clone());
    assert_eq!(send().await.unwrap().status, StatusCode::OK, "stored already");
    assert!(lock_of(&app, &repo, orphan).await >= now + 200 * 3600, "its lock started again");
    assert!(absent(&app, &repo, &ids).await.is_empty());
    // What the bucket now keeps longer counts against the quota, as a new
    // upload would; sent again while half its lock is left, nothing is
    // extended or counted (a replay cannot keep junk locked for free).
    let used = || app.upload_quota.take(&who.scope, 1 << 40, crate::unix_now()).unwrap_err();
    assert_eq!(used(), envelope.len() as u64);
    let extensions = store_ops(&app, "extend_retention");
    assert_eq!(send().await.unwrap().status, StatusCode::OK);
    assert_eq!(store_ops(&app, "extend_retention"), extensions, "no extension");
    assert_eq!(used(), envelope.len() as u64, "nothing more counted");
    // Nor for a body of another size (a short forged envelope would relock
    // a large object for the quota of a small one), however near its end.
    app.upload_lock = 30 * 24 * 3600;
    let (_, short) = t.chunk(&repo, key_id, &key, b"x");
    assert_ne!(short.len(), envelope.len());
    let digest = Some(blake3::hash(&short).to_hex().to_string());
    let forged = crate::api::chunks::put_chunk(&app, &repo, &who, orphan, short, digest).await.unwrap();
    assert_eq!(forged.status, StatusCode::OK);
    assert_eq!(store_ops(&app, "extend_retention"), extensions, "no extension for a body of another size");
}

/// A host that uploads new data and reports it as old: the proxy records
/// what it saw the host store since its last commit, and a commit that
/// really uploads nothing is left as it claims.
#[tokio::test]
async fn stats_that_understate_what_was_uploaded_are_raised_to_it() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let honest = staged(&t, &repo, 3).await;
    let claimed = SnapshotStats { bytes_new: 0, stored_new: 0, chunks_new: 0, ..honest.stats };
    let lying = CommitRequest { stats: claimed, ..honest.clone() };
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), lying.encode().into()).await.unwrap();
    let index = t.app.store.get(&layout::index(&repo, &lying.snapshot)).await.unwrap().unwrap();
    let recorded = IndexSegment::decode(&index).unwrap().stats;
    assert_eq!(recorded.chunks_new, 3, "{recorded:?}");
    assert_eq!(recorded.stored_new, honest.stats.stored_new, "the envelopes the proxy stored");
    assert_eq!(recorded.bytes_in, honest.stats.bytes_in, "what was read covers it: {recorded:?}");
    // The next commit of the same chunks uploaded nothing: what it claims
    // stands.
    let second = again(&t, &repo, &honest).await;
    commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), second.encode().into()).await.unwrap();
    let index = t.app.store.get(&layout::index(&repo, &second.snapshot)).await.unwrap().unwrap();
    assert_eq!(IndexSegment::decode(&index).unwrap().stats, second.stats);
}
