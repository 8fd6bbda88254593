//! Chunks: the dedup query and uploads. An upload is checked against its
//! transit digest, must be a chunk envelope sealed with a stored data key,
//! and is written once, locked.
//!
//! Both answer within the caller's upload scope (SPEC §9 "Dedup scopes"):
//! a chunk counts as stored for a caller only if its own scope uploaded it
//! (or it is from before scopes). Another identity's upload of the same id
//! may be anything under that id, since the proxy cannot open envelopes:
//! the caller's upload is stored as its copy beside it, and the dedup
//! answer tells a caller nothing about what others stored.

use bytes::Bytes;
use coffer_proto::api::DIGEST_HEADER;
use coffer_proto::envelope::{self, Kind};
use coffer_proto::layout;
use coffer_proto::snapshot::{decode_ids, encode_ids};
use coffer_proto::{ChunkId, RepoName, Scope};
use http::StatusCode;

use super::reply::{invalid, ApiError, Reply};
use crate::app::App;
use crate::catalog::{Known, SealedBy, Uploader};
use crate::store::{ObjectMeta, PutOutcome, Recorded, StoreError};

/// Which of the listed chunks the repository lacks for `who`. The catalog answers for what it knows; the rest is asked of
/// the store, concurrently.
pub async fn missing(app: &App, repo: &RepoName, who: &Uploader, body: &[u8]) -> Result<Reply, ApiError> {
    let ids = decode_ids(body).map_err(invalid)?;
    let now = crate::unix_now();
    let catalog = app.catalogs.of(repo);
    let unknown: Vec<ChunkId> = {
        let mut cat = catalog.lock().await;
        super::history::fill_catalog(app, repo, &mut cat).await;
        ids.iter().filter(|id| cat.present(id, who, now).is_none()).copied().collect()
    };
    let stored = app.fan_out(app.fan_out, unknown.iter().copied(), |id| head_in_scope(app, repo, id, who)).await?;
    let mut absent = Vec::new();
    {
        let mut cat = catalog.lock().await;
        for (id, found) in unknown.iter().zip(&stored) {
            match found {
                Some(f) => cat.record_head(*id, &f.meta, f.copy, f.owner),
                None => absent.push(*id),
            }
        }
    }
    app.catalogs.trim();
    Ok(Reply::new(StatusCode::OK, encode_ids(&absent), "application/octet-stream"))
}

/// Most copies of one id a reader is told of: far more identities than
/// write one repository.
const COPIES_MAX: usize = 256;

/// The scopes holding a copy of `id` beside its first upload, as bare
/// concatenated 8-byte scopes: where a reader looks when the first upload
/// does not open to its id.
pub async fn list_copies(app: &App, repo: &RepoName, id: ChunkId) -> Result<Reply, ApiError> {
    let first = layout::chunk(repo, &id);
    let scopes: Vec<u8> = app
        .store
        .list(&format!("{first}."))
        .await?
        .iter()
        .filter_map(|key| match layout::chunk_of(key) {
            Some((found, Some(scope))) if found == id => Some(scope),
            _ => None,
        })
        .take(COPIES_MAX)
        .flat_map(|s| *s.as_bytes())
        .collect();
    Ok(Reply::new(StatusCode::OK, scopes, "application/octet-stream"))
}

/// What the store says of `id` for `who`: the first upload's metadata
/// and whose it counts as, when that counts for `who`; else the copy of
/// `who`'s scope beside it (then also that scope). Both are asked at once,
/// so how long the answer takes does not tell whether another identity
/// stored the id.
pub struct Found {
    pub meta: ObjectMeta,
    /// `Some(scope)`: the scope's copy.
    pub copy: Option<Scope>,
    /// Whose the object counts as.
    pub owner: Option<Scope>,
}

pub async fn head_in_scope(
    app: &App,
    repo: &RepoName,
    id: ChunkId,
    who: &Uploader,
) -> Result<Option<Found>, StoreError> {
    let scope = &who.scope;
    let (first_key, copy_key) = (layout::chunk(repo, &id), layout::chunk_copy(repo, &id, scope));
    let (first, copy) = tokio::try_join!(app.store.head(&first_key), app.store.head(&copy_key))?;
    match first {
        None => Ok(None),
        Some(meta) if who.counts(app.owner_of(&meta)) => {
            let owner = app.owner_of(&meta);
            Ok(Some(Found { meta, copy: None, owner }))
        }
        Some(_) => Ok(copy.map(|meta| Found { meta, copy: Some(*scope), owner: Some(*scope) })),
    }
}

/// Stores an upload from `who`: as the id's first upload, or, when that
/// does not count for `who`, as its scope's copy beside it. An upload the
/// scope already has is a success that changes nothing.
pub async fn put_chunk(
    app: &App,
    repo: &RepoName,
    who: &Uploader,
    id: ChunkId,
    body: Bytes,
    digest: Option<String>,
) -> Result<Reply, ApiError> {
    let digest = digest.ok_or_else(|| invalid(format!("missing {DIGEST_HEADER} header")))?;
    let hash = blake3::hash(&body);
    if hash.to_hex().as_str() != digest {
        return Err(invalid("the body does not match its digest header (corrupted in transit?)"));
    }
    let header = envelope::parse_header(&body).map_err(invalid)?;
    if header.kind != Kind::Chunk {
        return Err(invalid("not a chunk envelope"));
    }
    if !app.key_exists(repo, header.key_id).await? {
        return Err(ApiError::Conflict(format!("key {} is not stored in {repo}: PUT it first", header.key_id)));
    }
    let scope = &who.scope;
    let (size, now) = (body.len() as u64, crate::unix_now());
    if let Err(used) = app.upload_quota.take(scope, size, now) {
        return Err(over_quota(app, repo, scope, used).await);
    }
    let stored = store_upload(app, repo, who, (id, body, *hash.as_bytes()), &header, now).await;
    if !matches!(stored, Ok(PutOutcome::Created)) {
        app.upload_quota.give_back(scope, size, now);
    }
    Ok(Reply::stored(stored?))
}

/// Stores an upload whose checks and quota passed (see [`put_chunk`]).
async fn store_upload(
    app: &App,
    repo: &RepoName,
    who: &Uploader,
    (id, body, digest): (ChunkId, Bytes, [u8; 32]),
    header: &envelope::Header,
    now: u64,
) -> Result<PutOutcome, ApiError> {
    let until = app.retention_for(repo).1;
    let scope = &who.scope;
    let size = body.len() as u64;
    let recorded = Recorded { digest, sealed_by: Some(header.key_id), scope: Some(*scope) };
    let catalog = app.catalogs.of(repo);
    // The first upload is tried first unless the catalog knows whose it is.
    let first_owner = catalog.lock().await.first_owner(&id, now);
    let mut copy = first_owner.is_some_and(|owner| !who.counts(owner));
    let mut outcome = PutOutcome::Exists;
    if !copy {
        outcome = app.store.put_object(&layout::chunk(repo, &id), body.clone(), until, recorded).await?;
        if outcome == PutOutcome::Exists && first_owner.is_none() {
            let first = app.store.head(&layout::chunk(repo, &id)).await?;
            copy = first.is_some_and(|m| !who.counts(app.owner_of(&m)));
        }
    }
    if copy {
        outcome = app.store.put_object(&layout::chunk_copy(repo, &id, scope), body, until, recorded).await?;
    }
    if outcome == PutOutcome::Created {
        let sealed_by = SealedBy::Key(header.key_id);
        catalog.lock().await.observe(id, Known { size, retain_until: until, sealed_by, owner: Some(*scope), copy });
    }
    Ok(outcome)
}

/// The refusal of an upload past the identity's daily quota, with an
/// alert (once a day per identity and repository).
async fn over_quota(app: &App, repo: &RepoName, scope: &Scope, used: u64) -> ApiError {
    let per_day = app.upload_quota.per_day();
    let msg = format!(
        "upload scope {scope} has stored {used} bytes through this proxy today (UTC), and \
         limits.identity_upload_bytes_per_day is {per_day}: new uploads are refused until 00:00 UTC"
    );
    let dedup = Some((format!("quota:{repo}:{scope}"), 86_400));
    let severity = crate::monitor::alerts::Severity::High;
    app.watch.alerts.raise("upload-quota", severity, Some(repo.to_string()), None, msg.clone(), dedup).await;
    ApiError::Quota(msg)
}

#[cfg(test)]
mod tests {
    use coffer_proto::snapshot::{decode_ids, encode_ids};

    use super::*;
    use crate::testkit::{self, writer_grant};

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

        let stored =
            put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), digest(&envelope)).await.unwrap();
        assert_eq!(stored.status, StatusCode::CREATED);
        let again =
            put_chunk(&t.app, &repo, &testkit::uploader(), a, envelope.clone(), digest(&envelope)).await.unwrap();
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
        let known = Known {
            size: 1,
            retain_until: crate::unix_now() + 60,
            sealed_by: SealedBy::Unknown,
            owner: Some(victim.scope),
            copy: false,
        };
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
}
