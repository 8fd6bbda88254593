//! Chunks: the dedup query and uploads. An upload is checked against its
//! transit digest, must be a chunk envelope sealed with a stored data key,
//! and is written once, locked.

use bytes::Bytes;
use coffer_proto::api::DIGEST_HEADER;
use coffer_proto::envelope::{self, Kind};
use coffer_proto::layout;
use coffer_proto::snapshot::{decode_ids, encode_ids};
use coffer_proto::{ChunkId, RepoName};
use http::StatusCode;

use super::reply::{invalid, ApiError, Reply};
use crate::app::App;
use crate::catalog::{Known, SealedBy};
use crate::store::{PutOutcome, Recorded};

/// Which of the listed chunks the repository lacks. The catalog answers
/// for what it knows; the rest is asked of the store, concurrently.
pub async fn missing(app: &App, repo: &RepoName, body: &[u8]) -> Result<Reply, ApiError> {
    let ids = decode_ids(body).map_err(invalid)?;
    let now = crate::unix_now();
    let catalog = app.catalogs.of(repo);
    let unknown: Vec<ChunkId> = {
        let mut cat = catalog.lock().await;
        super::history::fill_catalog(app, repo, &mut cat).await;
        ids.iter().filter(|id| cat.present(id, now).is_none()).copied().collect()
    };
    let store = &app.store;
    let stored = app
        .fan_out(app.fan_out, unknown.iter().copied(), |id| async move { store.head(&layout::chunk(repo, &id)).await })
        .await?;
    let mut absent = Vec::new();
    {
        let mut cat = catalog.lock().await;
        for (id, meta) in unknown.iter().zip(&stored) {
            match meta {
                Some(meta) => cat.record_head(*id, meta),
                None => absent.push(*id),
            }
        }
    }
    app.catalogs.trim();
    Ok(Reply::new(StatusCode::OK, encode_ids(&absent), "application/octet-stream"))
}

pub async fn put_chunk(
    app: &App,
    repo: &RepoName,
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
    let until = app.retention_for(repo).1;
    let recorded = Recorded { digest: *hash.as_bytes(), sealed_by: Some(header.key_id) };
    let size = body.len() as u64;
    let outcome = app.store.put_object(&layout::chunk(repo, &id), body, until, recorded).await?;
    if outcome == PutOutcome::Created {
        let known = Known { size, retain_until: until, sealed_by: SealedBy::Key(header.key_id) };
        app.catalogs.of(repo).lock().await.record(id, known);
    }
    Ok(Reply::stored(outcome))
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
    async fn missing_names_exactly_what_is_not_stored_and_uploads_are_checked() {
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let (key_id, key, record) = t.data_key(&repo);
        let (a, envelope) = t.chunk(&repo, key_id, &key, b"first");
        let (b, _) = t.chunk(&repo, key_id, &key, b"second");

        // A chunk sealed with a key the repository does not hold is refused.
        let early = put_chunk(&t.app, &repo, a, envelope.clone(), digest(&envelope)).await.unwrap_err();
        assert!(matches!(early, ApiError::Conflict(ref m) if m.contains("PUT it first")), "{early}");
        crate::api::repo::put_key(&t.app, &writer_grant(), &repo, key_id, record).await.unwrap();

        // A body that does not match its digest, or comes without one.
        let mut bent = envelope.to_vec();
        *bent.last_mut().unwrap() ^= 1;
        let bad = put_chunk(&t.app, &repo, a, bent.into(), digest(&envelope)).await.unwrap_err();
        assert!(matches!(bad, ApiError::Invalid(ref m) if m.contains("digest")), "{bad}");
        assert!(matches!(put_chunk(&t.app, &repo, a, envelope.clone(), None).await, Err(ApiError::Invalid(_))));

        let stored = put_chunk(&t.app, &repo, a, envelope.clone(), digest(&envelope)).await.unwrap();
        assert_eq!(stored.status, StatusCode::CREATED);
        let again = put_chunk(&t.app, &repo, a, envelope.clone(), digest(&envelope)).await.unwrap();
        assert_eq!(again.status, StatusCode::OK, "a retried upload is a success, not a second object");

        let answer = missing(&t.app, &repo, &encode_ids(&[a, b])).await.unwrap();
        assert_eq!(decode_ids(&answer.body).unwrap(), vec![b]);
        // Another repository holds nothing, whatever this one does.
        let other: RepoName = "dev/other".parse().unwrap();
        let answer = missing(&t.app, &other, &encode_ids(&[a])).await.unwrap();
        assert_eq!(decode_ids(&answer.body).unwrap(), vec![a]);
        assert!(matches!(missing(&t.app, &repo, &[1, 2, 3]).await, Err(ApiError::Invalid(_))), "not a list of ids");
    }
}
