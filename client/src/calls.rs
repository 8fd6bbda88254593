//! One method per endpoint of the `/v1` protocol (SPEC "HTTP API").

use bytes::Bytes;
use coffer_proto::api::{SnapshotInfo, Whoami, DIGEST_HEADER};
use coffer_proto::endpoint::Action;
use coffer_proto::{layout, ChunkId, KeyId, RepoName, Scope, SnapshotId, ENVELOPE_MAX};
use http::Method;

use crate::{ClientError, Outgoing, ProxyClient};

/// Largest response body read: a listing or an expiry report. Every other
/// answer has a smaller limit of its own.
const LISTING_MAX: usize = 64 * 1024 * 1024;
/// Largest small JSON or key answer (config, key record, whoami, commit).
const SMALL_MAX: usize = 64 * 1024;
/// How long one attempt of an admin call may take (holds and expiry walk a
/// whole repository).
const ADMIN_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest snapshot root answer.
const ROOT_ENVELOPE_MAX: usize = coffer_proto::snapshot::ROOT_MAX + coffer_proto::envelope::OVERHEAD;

impl ProxyClient {
    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One call of `action` on `repo` (and object `id`), reading at most
    /// `limit` bytes of the answer.
    async fn on(
        &self,
        action: Action,
        repo: Option<&RepoName>,
        id: Option<String>,
        body: Bytes,
        header: Option<(&'static str, String)>,
        limit: usize,
    ) -> Result<Bytes, ClientError> {
        self.call(outgoing(action, repo, id, body, header, limit)).await
    }

    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        Self::json(&self.on(Action::Whoami, None, None, Bytes::new(), None, SMALL_MAX).await?)
    }

    pub async fn put_config(&self, repo: &RepoName, body: Vec<u8>) -> Result<(), ClientError> {
        self.on(Action::PutConfig, Some(repo), None, body.into(), None, SMALL_MAX).await.map(drop)
    }

    pub async fn get_config(&self, repo: &RepoName) -> Result<Bytes, ClientError> {
        self.on(Action::GetConfig, Some(repo), None, Bytes::new(), None, SMALL_MAX).await
    }

    pub async fn put_key(&self, repo: &RepoName, id: KeyId, body: Vec<u8>) -> Result<(), ClientError> {
        self.on(Action::PutKey, Some(repo), Some(id.to_string()), body.into(), None, SMALL_MAX).await.map(drop)
    }

    pub async fn get_key(&self, repo: &RepoName, id: KeyId) -> Result<Bytes, ClientError> {
        self.on(Action::GetKey, Some(repo), Some(id.to_string()), Bytes::new(), None, SMALL_MAX).await
    }

    /// Which of `ids` the repository does not hold yet.
    pub async fn missing(&self, repo: &RepoName, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClientError> {
        let body = coffer_proto::snapshot::encode_ids(ids);
        // The answer is a subset of the question (an error answer may be
        // longer than a small question: small answers are always read).
        let missing_max = body.len().max(SMALL_MAX);
        let resp = self.on(Action::Missing, Some(repo), None, body.into(), None, missing_max).await?;
        coffer_proto::snapshot::decode_ids(&resp).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Uploads an envelope with its transit digest. Idempotent.
    pub async fn put_chunk(&self, repo: &RepoName, id: &ChunkId, envelope: Bytes) -> Result<(), ClientError> {
        let digest = blake3::hash(&envelope).to_hex().to_string();
        let header = Some((DIGEST_HEADER, digest));
        self.on(Action::PutChunk, Some(repo), Some(id.to_string()), envelope, header, SMALL_MAX).await.map(drop)
    }

    pub async fn get_chunk(&self, repo: &RepoName, id: &ChunkId) -> Result<Bytes, ClientError> {
        self.on(Action::GetChunk, Some(repo), Some(id.to_string()), Bytes::new(), None, ENVELOPE_MAX).await
    }

    /// The upload scopes holding a copy of `id` beside its first upload
    /// (SPEC §9 "Dedup scopes").
    pub async fn list_copies(&self, repo: &RepoName, id: &ChunkId) -> Result<Vec<Scope>, ClientError> {
        let body = self.on(Action::ListCopies, Some(repo), Some(id.to_string()), Bytes::new(), None, SMALL_MAX).await?;
        if body.len() % Scope::LEN != 0 {
            return Err(ClientError::Protocol(format!("a list of copies of {} bytes", body.len())));
        }
        Ok(body.chunks_exact(Scope::LEN).map(|c| Scope::from_bytes(c.try_into().expect("exact chunks"))).collect())
    }

    /// One scope's copy of chunk `id`.
    pub async fn get_chunk_copy(&self, repo: &RepoName, id: &ChunkId, scope: &Scope) -> Result<Bytes, ClientError> {
        self.on(Action::GetChunk, Some(repo), Some(layout::copy_name(id, scope)), Bytes::new(), None, ENVELOPE_MAX)
            .await
    }

    pub async fn commit(&self, repo: &RepoName, body: Vec<u8>) -> Result<SnapshotInfo, ClientError> {
        let deadline = commit_deadline(self.shared.attempt, body.len());
        let out = outgoing(Action::Commit, Some(repo), None, body.into(), None, SMALL_MAX);
        Self::json(&self.call_within(out, deadline).await?)
    }

    pub async fn list_snapshots(&self, repo: &RepoName) -> Result<Vec<SnapshotInfo>, ClientError> {
        Self::json(&self.on(Action::ListSnapshots, Some(repo), None, Bytes::new(), None, LISTING_MAX).await?)
    }

    /// The listing with the root copies listing packs hold (SPEC §7), for a
    /// caller about to open every root.
    pub async fn list_snapshots_with_roots(&self, repo: &RepoName) -> Result<Vec<SnapshotInfo>, ClientError> {
        let ask = Some((coffer_proto::api::ROOT_COPIES_HEADER, "1".to_string()));
        Self::json(&self.on(Action::ListSnapshots, Some(repo), None, Bytes::new(), ask, LISTING_MAX).await?)
    }

    pub async fn get_snapshot(&self, repo: &RepoName, id: SnapshotId) -> Result<Bytes, ClientError> {
        self.on(Action::GetSnapshot, Some(repo), Some(id.to_string()), Bytes::new(), None, ROOT_ENVELOPE_MAX).await
    }

    pub async fn put_epoch(&self, repo: &RepoName, id: KeyId, body: Vec<u8>) -> Result<(), ClientError> {
        self.on(Action::PutEpoch, Some(repo), Some(id.to_string()), body.into(), None, SMALL_MAX).await.map(drop)
    }

    /// The repository's chunk-id key epochs, oldest first.
    pub async fn list_epochs(&self, repo: &RepoName) -> Result<Vec<coffer_proto::repo::Epoch>, ClientError> {
        Self::json(&self.on(Action::ListEpochs, Some(repo), None, Bytes::new(), None, LISTING_MAX).await?)
    }

    /// An admin call (`POST /v1/admin/…`) with a JSON body. Holds and
    /// expiry touch every object of a repository, so an attempt may take up
    /// to `ADMIN_CALL_DEADLINE`; abandoning one half way would leave it half
    /// done, and its retry would resend a spent TOTP code.
    pub async fn admin(&self, action: Action, body: &impl serde::Serialize) -> Result<Bytes, ClientError> {
        if !action.admin() {
            return Err(ClientError::Protocol(format!("{} is not an admin call", action.name())));
        }
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let deadline = self.shared.attempt.max(ADMIN_CALL_DEADLINE);
        let (path, media) = (action.path(None, None), action.body_type());
        let out = Outgoing { method: Method::POST, path, media, body: body.into(), extra: None, limit: LISTING_MAX };
        self.call_within(out, deadline).await
    }

    /// A raw request, for tests that must send what the agent never would.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        header: Option<(&'static str, String)>,
    ) -> Result<Bytes, ClientError> {
        // Typed as the endpoint table says, if the path names an endpoint.
        let route = coffer_proto::endpoint::route(method.as_str(), path);
        let media = route.map_or("application/octet-stream", |r| r.action.body_type());
        let out =
            Outgoing { method, path: path.to_string(), media, body: body.into(), extra: header, limit: LISTING_MAX };
        self.call(out).await
    }
}

/// The request for `action` on `repo` (and object `id`), reading at most
/// `limit` bytes of the answer.
fn outgoing(
    action: Action,
    repo: Option<&RepoName>,
    id: Option<String>,
    body: Bytes,
    header: Option<(&'static str, String)>,
    limit: usize,
) -> Outgoing {
    let method = Method::from_bytes(action.method().as_bytes()).expect("the endpoint table's methods are valid");
    let path = action.path(repo, id.as_deref());
    Outgoing { method, path, media: action.body_type(), body, extra: header, limit }
}

/// How long one attempt of a commit of `len` bytes may take.
fn commit_deadline(attempt: std::time::Duration, len: usize) -> std::time::Duration {
    attempt + std::time::Duration::from_secs((len / coffer_proto::endpoint::COMMIT_BYTES_PER_SEC) as u64)
}

#[cfg(test)]
mod tests {
    /// A first backup of a million new chunks (a TB) with an upload lock:
    /// its commit makes a million lock extensions, each a HEAD and a PUT,
    /// 32 at a time; at 20 ms per store request that is about 21 minutes,
    /// which one attempt must be allowed (a retry starts over only with
    /// what the first did not finish, and only within the retry deadline).
    #[test]
    fn a_commit_attempt_allows_for_the_work_its_chunks_make() {
        let chunks = 1_000_000u64;
        let body = 32 * chunks as usize + 1024;
        let needed = std::time::Duration::from_millis(chunks * 2 * 20 / 32);
        let allowed = super::commit_deadline(std::time::Duration::from_secs(120), body);
        assert!(allowed > needed + std::time::Duration::from_secs(120), "{allowed:?} for {needed:?} of work");
    }
}
