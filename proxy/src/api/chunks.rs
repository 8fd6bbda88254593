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
use crate::store::Recorded;

pub async fn missing(app: &App, repo: &RepoName, body: &[u8]) -> Result<Reply, ApiError> {
    let ids = decode_ids(body).map_err(invalid)?;
    let mut absent = Vec::new();
    for id in ids {
        if app.store.head(&layout::chunk(repo, &id)).await?.is_none() {
            absent.push(id);
        }
    }
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
    let outcome = app.store.put_object(&layout::chunk(repo, &id), body, until, recorded).await?;
    Ok(Reply::stored(outcome))
}
