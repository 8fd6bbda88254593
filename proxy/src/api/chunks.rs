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
    // A chunk counts only while its lock has long enough to run for this
    // backup to commit: an upload left uncommitted may be near the end of
    // its short lock (SPEC §10 "The upload lock"); sent again, it is kept.
    let lasts = app.dedup_lock_until(repo, now);
    let ends_too_soon = |lock: u64| lasts.is_some_and(|l| lock < l);
    let mut absent = Vec::new();
    let unknown: Vec<ChunkId> = {
        let mut cat = catalog.lock().await;
        super::history::fill_catalog(app, repo, &mut cat).await;
        let mut unknown = Vec::new();
        for id in &ids {
            match cat.present(id, who, now) {
                None => unknown.push(*id),
                Some(k) if ends_too_soon(k.retain_until) => absent.push(*id),
                Some(_) => {}
            }
        }
        unknown
    };
    let stored = app.fan_out(app.fan_out, unknown.iter().copied(), |id| head_in_scope(app, repo, id, who)).await?;
    {
        let mut cat = catalog.lock().await;
        for (id, found) in unknown.iter().zip(&stored) {
            match found {
                Some(f) => {
                    cat.record_head(*id, &f.meta, f.copy, f.owner);
                    if f.meta.retain_until.is_some_and(ends_too_soon) {
                        absent.push(*id);
                    }
                }
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
        // The first upload is gone (expiry took an unreferenced plant):
        // the caller's copy still counts.
        None => Ok(copy.map(|meta| Found { meta, copy: Some(*scope), owner: Some(*scope) })),
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
    // What the bucket keeps longer for this upload counts: a new object,
    // or a stored one whose upload lock starts again.
    if !matches!(stored, Ok(Stored { outcome: PutOutcome::Created, .. } | Stored { relocked: true, .. })) {
        app.upload_quota.give_back(scope, size, now);
    }
    Ok(Reply::stored(stored?.outcome))
}

/// What [`store_upload`] did.
struct Stored {
    outcome: PutOutcome,
    /// A stored object's upload lock was started again.
    relocked: bool,
}

/// Stores an upload whose checks and quota passed (see [`put_chunk`]).
async fn store_upload(
    app: &App,
    repo: &RepoName,
    who: &Uploader,
    (id, body, digest): (ChunkId, Bytes, [u8; 32]),
    header: &envelope::Header,
    now: u64,
) -> Result<Stored, ApiError> {
    let until = app.upload_until(repo);
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
            // What the store says replaces what the catalog held (an entry
            // past its lock may describe an object expiry deleted since).
            let first = app.store.head(&layout::chunk(repo, &id)).await?;
            if let Some(m) = &first {
                catalog.lock().await.record_head(id, m, None, app.owner_of(m));
            }
            copy = first.is_some_and(|m| !who.counts(app.owner_of(&m)));
        }
    }
    if copy {
        outcome = app.store.put_object(&layout::chunk_copy(repo, &id, scope), body, until, recorded).await?;
    }
    if outcome == PutOutcome::Created {
        let sealed_by = SealedBy::Key(header.key_id);
        catalog.lock().await.observe(id, Known { size, retain_until: until, sealed_by, owner: Some(*scope), copy });
        app.observed.stored(repo, scope, size, now);
        return Ok(Stored { outcome, relocked: false });
    }
    let relocked = app.upload_lock > 0 && relock(app, repo, who, (id, size), copy, until).await?;
    Ok(Stored { outcome, relocked })
}

/// An upload of a chunk stored already in `who`'s scope, sent again
/// because the dedup query found its lock too close to its end (an upload
/// left uncommitted, SPEC §10 "The upload lock"): its upload lock starts
/// again, so the backup that sent it can count on it until its commit.
/// Nothing is done while half the upload lock is left (a replay or a
/// retried upload), nor for a body of another size than the stored one
/// (the same chunk sealed again has the same size; a short forged body
/// would relock a large object for the quota of a small one). Whether the
/// lock was extended.
async fn relock(
    app: &App,
    repo: &RepoName,
    who: &Uploader,
    (id, size): (ChunkId, u64),
    copy: bool,
    until: u64,
) -> Result<bool, ApiError> {
    let catalog = app.catalogs.of(repo);
    let now = crate::unix_now();
    let copy_of = copy.then_some(who.scope);
    let key = layout::chunk_at(repo, &id, copy_of.as_ref());
    let known =
        catalog.lock().await.present(&id, who, now).filter(|k| k.copy == copy).map(|k| (k.retain_until, k.size));
    let stored = match known {
        Some(k) => Some(k),
        None => app.store.head(&key).await?.map(|m| (m.retain_until.unwrap_or(u64::MAX), m.size)),
    };
    let Some((lock, stored_size)) = stored else { return Ok(false) };
    if app.dedup_lock_until(repo, now).is_none_or(|l| lock >= l) || stored_size != size {
        return Ok(false);
    }
    app.store.extend_retention(&key, until).await?;
    catalog.lock().await.raise(&id, copy_of, until);
    app.metrics.lock_extensions.inc();
    Ok(true)
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
mod tests;
