//! Uploads and the dedup query: scopes, quotas and upload locks.

use coffer_proto::snapshot::{decode_ids, encode_ids};

use super::*;
use crate::testkit::{self, writer_grant};

/// What a proxy knew of an upload of `owner` whose lock is about to end.
fn ending_soon(owner: Scope) -> Known {
    Known {
        size: 1,
        retain_until: crate::unix_now() + 60,
        sealed_by: SealedBy::Unknown,
        owner: Some(owner),
        copy: false,
    }
}

fn digest(body: &[u8]) -> Option<String> {
    Some(blake3::hash(body).to_hex().to_string())
}

#[tokio::test]
async fn an_identity_past_its_daily_quota_stores_nothing_more_and_an_alert_says_so() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    t.init(&repo).await;
    let (key_id, key, record) = t.data_key(&repo);
    crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();
    let chunks: Vec<(ChunkId, Bytes)> = (0..4u8).map(|i| t.chunk(&repo, key_id, &key, &[i; 100])).collect();
    let size = chunks[0].1.len() as u64;
    let mut app = testkit::app_with_store(&t, t.app.store.clone());
    app.upload_quota = crate::quota::UploadQuota::new(2 * size + size / 2);
    let put = |who: crate::catalog::Uploader, (id, body): (ChunkId, Bytes)| {
        let app = &app;
        let repo = repo.clone();
        async move { put_chunk(app, &repo, &who, id, body.clone(), digest(&body)).await }
    };
    put(testkit::uploader(), chunks[0].clone()).await.unwrap();
    put(testkit::uploader(), chunks[1].clone()).await.unwrap();
    let err = put(testkit::uploader(), chunks[2].clone()).await.unwrap_err();
    assert!(matches!(&err, ApiError::Quota(m) if m.contains("identity_upload_bytes_per_day")), "{err}");
    assert_eq!(err.status().0, StatusCode::FORBIDDEN, "not worth retrying before the day ends");
    assert!(app.store.head(&layout::chunk(&repo, &chunks[2].0)).await.unwrap().is_none(), "nothing stored");
    testkit::wait_for_audit(&t, "upload-quota").await;
    // Another identity has a quota of its own.
    let other = crate::catalog::Uploader {
        scope: Scope::of(crate::dev::DOMAIN, "spiffe://coffer.dev/other-writer", 0),
        legacy: true,
    };
    put(other, chunks[3].clone()).await.unwrap();
}

#[tokio::test]
async fn missing_names_exactly_what_is_not_stored_and_uploads_are_checked() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let (key_id, key, record) = t.data_key(&repo);
    let (a, envelope) = t.chunk(&repo, key_id, &key, b"first");
    let (b, _) = t.chunk(&repo, key_id, &key, b"second");

    // A chunk sealed with a key the repository does not hold is refused.
    let early =
        put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), digest(&envelope)).await.unwrap_err();
    assert!(matches!(early, ApiError::Conflict(ref m) if m.contains("PUT it first")), "{early}");
    crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();

    // A body that does not match its digest, or comes without one.
    let mut bent = envelope.to_vec();
    *bent.last_mut().unwrap() ^= 1;
    let bad = put_chunk(&t.app, &repo, &testkit::uploader(), a, bent.into(), digest(&envelope)).await.unwrap_err();
    assert!(matches!(bad, ApiError::Invalid(ref m) if m.contains("digest")), "{bad}");
    assert!(matches!(
        put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), None).await,
        Err(ApiError::Invalid(_))
    ));

    let stored = put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), digest(&envelope)).await.unwrap();
    assert_eq!(stored.status, StatusCode::CREATED);
    let again = put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), digest(&envelope)).await.unwrap();
    assert_eq!(again.status, StatusCode::OK, "a retried upload is a success, not a second object");

    let answer = missing(&t.app, &repo, &testkit::uploader(), &encode_ids(&[a, b])).await.unwrap();
    assert_eq!(decode_ids(&answer.body).unwrap(), vec![b]);
    // Another repository holds nothing, whatever this one does.
    let other: RepoName = "dev/other".parse().unwrap();
    let answer = missing(&t.app, &other, &testkit::uploader(), &encode_ids(&[a])).await.unwrap();
    assert_eq!(decode_ids(&answer.body).unwrap(), vec![a]);
    assert!(
        matches!(missing(&t.app, &repo, &testkit::uploader(), &[1, 2, 3]).await, Err(ApiError::Invalid(_))),
        "not a list of ids"
    );
}

/// A stolen host certificate uploads a wrong envelope under the id of
/// another host's future data. The other host's dedup query does not
/// count it, its upload is stored as its copy beside the locked one,
/// its commit records and locks that copy, and a reader can find it.
/// Neither host learns from the dedup answer what the other stored.
#[tokio::test]
async fn one_scopes_upload_never_answers_for_another() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = testkit::staged(&t, &repo, 1).await;
    let (key_id, key, record) = t.data_key(&repo);
    crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();
    let victim = testkit::uploader();
    let thief = Uploader { scope: Scope::of(crate::dev::DOMAIN, "spiffe://coffer.dev/stolen", 0), legacy: true };
    let (future, good) = t.chunk(&repo, key_id, &key, b"tomorrow's rows");
    let (_, poison) = t.chunk(&repo, key_id, &key, b"garbage");

    let planted = put_chunk(&t.app, &repo, &thief, future, poison.clone(), digest(&poison)).await.unwrap();
    assert_eq!(planted.status, StatusCode::CREATED);
    let asked = |who: Uploader, ids: Vec<ChunkId>| {
        let app = t.app.clone();
        let repo = repo.clone();
        async move { decode_ids(&missing(&app, &repo, &who, &encode_ids(&ids)).await.unwrap().body).unwrap() }
    };
    assert_eq!(asked(victim, vec![future]).await, vec![future], "the thief's upload does not count for the victim");
    assert_eq!(asked(thief, vec![future]).await, Vec::<ChunkId>::new());
    // The oracle is closed: the thief cannot learn what the victim holds.
    assert_eq!(asked(thief, req.chunks.clone()).await, req.chunks);

    let stored = put_chunk(&t.app, &repo, &victim, future, good.clone(), digest(&good)).await.unwrap();
    assert_eq!(stored.status, StatusCode::CREATED, "stored as the victim's copy");
    let copy = layout::chunk_copy(&repo, &future, &victim.scope);
    assert_eq!(t.app.store.get(&copy).await.unwrap().unwrap(), good);
    assert_eq!(t.app.store.get(&layout::chunk(&repo, &future)).await.unwrap().unwrap(), poison, "locked, kept");
    let again = put_chunk(&t.app, &repo, &victim, future, good.clone(), digest(&good)).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(asked(victim, vec![future]).await, Vec::<ChunkId>::new());
    let listed = list_copies(&t.app, &repo, future).await.unwrap();
    assert_eq!(listed.body.as_ref(), victim.scope.as_bytes(), "a reader finds the copy");

    // A fresh proxy, which knows nothing yet, answers the same way.
    let fresh = testkit::app_on(&t).await;
    let fresh_missing = missing(&fresh, &repo, &victim, &encode_ids(&[future])).await.unwrap();
    assert!(decode_ids(&fresh_missing.body).unwrap().is_empty());
    let nobody = Uploader { scope: Scope::from_bytes([0; 8]), legacy: true };
    let fresh_missing = missing(&fresh, &repo, &nobody, &encode_ids(&[future])).await.unwrap();
    assert_eq!(decode_ids(&fresh_missing.body).unwrap(), vec![future]);

    // The victim's commit uses its copy: recorded in the index segment,
    // and locked (the commit's own check would refuse the thief's).
    let mut commit = req.clone();
    commit.snapshot = coffer_proto::SnapshotId::random();
    commit.chunks.push(future);
    commit.stats.chunks += 1;
    commit.stats.chunks_new += 1;
    commit.stats.bytes_in += 15;
    commit.stats.bytes_new += 15;
    commit.stats.stored_new += good.len() as u64;
    crate::api::snapshots::commit(&t.app, &mut testkit::draft("commit"), &repo, &victim, commit.encode().into())
        .await
        .unwrap();
    let index = t.app.store.get(&layout::index(&repo, &commit.snapshot)).await.unwrap().unwrap();
    let index = coffer_proto::snapshot::IndexSegment::decode(&index).unwrap();
    assert_eq!(index.scope, Some(victim.scope));
    assert!(index.chunks.iter().any(|e| e.id == future && e.copy));
    assert!(index.chunks.iter().filter(|e| e.id != future).all(|e| !e.copy));
    let refused = crate::api::snapshots::commit(&t.app, &mut testkit::draft("commit"), &repo, &nobody, {
        let mut other = commit.clone();
        other.snapshot = coffer_proto::SnapshotId::random();
        other.encode().into()
    })
    .await
    .unwrap_err();
    assert!(matches!(refused, ApiError::Conflict(ref m) if m.contains("not stored")), "{refused}");
}

/// Expiry on another proxy deleted an id this proxy still knows as the
/// victim's upload; a thief uploads the id again through this proxy. It
/// is the thief's now, and never counts for the victim.
#[tokio::test]
async fn an_id_uploaded_again_after_expiry_belongs_to_its_new_uploader() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = testkit::staged(&t, &repo, 1).await;
    let (victim, id) = (testkit::uploader(), req.chunks[0]);
    let thief = Uploader { scope: Scope::of(crate::dev::DOMAIN, "spiffe://coffer.dev/stolen", 0), legacy: true };
    let asked = |who: Uploader| {
        let app = t.app.clone();
        let repo = repo.clone();
        async move { decode_ids(&missing(&app, &repo, &who, &encode_ids(&[id])).await.unwrap().body).unwrap() }
    };
    // This proxy knew it as the victim's until its lock, about to end;
    // then expiry on another proxy deleted it.
    let known = ending_soon(victim.scope);
    t.app.catalogs.of(&repo).lock().await.observe(id, known);
    t.app.store.delete(&layout::chunk(&repo, &id), u64::MAX).await.unwrap();
    let (key_id, key, record) = t.data_key(&repo);
    crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();
    let (_, poison) = t.chunk(&repo, key_id, &key, b"garbage");
    let planted = put_chunk(&t.app, &repo, &thief, id, poison.clone(), digest(&poison)).await.unwrap();
    assert_eq!(planted.status, StatusCode::CREATED);
    assert_eq!(asked(victim).await, vec![id], "the plant does not count for the victim");
    let (_, good) = t.chunk(&repo, key_id, &key, &[0; 100]);
    put_chunk(&t.app, &repo, &victim, id, good.clone(), digest(&good)).await.unwrap();
    assert!(t.app.store.head(&layout::chunk_copy(&repo, &id, &victim.scope)).await.unwrap().is_some());
}

/// An upload with no scope recorded counts as one from before scopes
/// only if the store wrote it before scopes began in this store; a later
/// one (an old proxy's, during an upgrade) counts for no one.
#[tokio::test]
async fn a_scopeless_upload_made_after_scopes_began_counts_for_no_one() {
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let (late, early) = (ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32]));
    let until = crate::unix_now() + 86_400;
    t.app.store.put_new(&layout::chunk(&repo, &late), Bytes::from_static(b"old proxy"), until).await.unwrap();
    let who = testkit::uploader();
    let answer = missing(&t.app, &repo, &who, &encode_ids(&[late])).await.unwrap();
    assert_eq!(decode_ids(&answer.body).unwrap(), vec![late]);
    t.app.store.put_new(&layout::chunk(&repo, &early), Bytes::from_static(b"before"), until).await.unwrap();
    t.app.set_scopes_since(crate::unix_now() + 100);
    let answer = missing(&t.app, &repo, &who, &encode_ids(&[early])).await.unwrap();
    assert!(decode_ids(&answer.body).unwrap().is_empty(), "from before scopes: counts in generation 0");
    let quarantined = Uploader { legacy: false, ..who };
    let answer = missing(&t.app, &repo, &quarantined, &encode_ids(&[early])).await.unwrap();
    assert_eq!(decode_ids(&answer.body).unwrap(), vec![early], "but not after a quarantine");
}

/// With upload locks: expiry on another proxy took an id this proxy still
/// knows as the victim's (its lock ended), and a thief planted it again
/// through that other proxy. Sent again through this proxy (which starts
/// its upload lock again), the plant is recorded as the thief's: it never
/// counts for the victim. And the victim's copy still counts for it once
/// the plant is gone as well.
#[tokio::test]
async fn a_plant_sent_again_never_takes_over_what_this_proxy_knew_of_the_id() {
    async fn asked(app: &App, repo: &RepoName, who: Uploader, id: ChunkId) -> Vec<ChunkId> {
        decode_ids(&missing(app, repo, &who, &encode_ids(&[id])).await.unwrap().body).unwrap()
    }
    let t = testkit::app().await;
    let repo: RepoName = "dev/unit".parse().unwrap();
    let req = testkit::staged(&t, &repo, 1).await;
    let (victim, id) = (testkit::uploader(), req.chunks[0]);
    let thief = Uploader { scope: Scope::of(crate::dev::DOMAIN, "spiffe://coffer.dev/stolen", 0), legacy: true };
    let (mut this, mut other) =
        (testkit::app_with_store(&t, t.app.store.clone()), testkit::app_with_store(&t, t.app.store.clone()));
    (this.upload_lock, other.upload_lock) = (48 * 3600, 2 * 3600);
    let known = ending_soon(victim.scope);
    this.catalogs.of(&repo).lock().await.observe(id, known);
    t.app.store.delete(&layout::chunk(&repo, &id), u64::MAX).await.unwrap();
    let (key_id, key, record) = t.data_key(&repo);
    crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();
    let (_, poison) = t.chunk(&repo, key_id, &key, b"garbage");
    let planted = put_chunk(&other, &repo, &thief, id, poison.clone(), digest(&poison)).await.unwrap();
    assert_eq!(planted.status, StatusCode::CREATED, "through the other proxy, locked for 2 hours");
    let again = put_chunk(&this, &repo, &thief, id, poison.clone(), digest(&poison)).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
    let lock = t.app.store.head(&layout::chunk(&repo, &id)).await.unwrap().unwrap().retain_until.unwrap();
    assert!(lock >= crate::unix_now() + 47 * 3600, "its upload lock started again: {lock}");
    assert_eq!(asked(&this, &repo, victim, id).await, vec![id], "the plant does not count for the victim");
    // The victim stores its own copy; the plant, never committed, is
    // deleted once unlocked: the copy still counts, on a proxy that knows
    // nothing of either.
    let (_, good) = t.chunk(&repo, key_id, &key, &[0; 100]);
    put_chunk(&this, &repo, &victim, id, good.clone(), digest(&good)).await.unwrap();
    t.app.store.delete(&layout::chunk(&repo, &id), u64::MAX).await.unwrap();
    let fresh = testkit::app_with_store(&t, t.app.store.clone());
    assert!(asked(&fresh, &repo, victim, id).await.is_empty(), "the victim's copy counts without the first upload");
}
