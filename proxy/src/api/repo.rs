//! A repository's setup: its config, its data key records and its
//! chunk-id key epochs. Each is written once; a key record is checked
//! against the identity's KEK allowlist and the deployment's key checker.

use bytes::Bytes;
use coffer_proto::keys::{KeyRecord, Purpose};
use coffer_proto::layout;
use coffer_proto::repo::RepoConfig;
use coffer_proto::{KeyId, RepoName};
use http::StatusCode;

use super::reply::{invalid, ApiError, Reply};
use crate::access::policy::Allowed;
use crate::app::App;
use crate::store::PutOutcome;

/// Checks a key record against the identity's KEK allowlist and the
/// deployment's key checker.
async fn check_key(app: &App, allowed: &Allowed, record: &KeyRecord, repo: &RepoName) -> Result<(), ApiError> {
    app.repo_policies().check_kek(repo, &record.kek).map_err(|d| ApiError::KeyRefused(d.0))?;
    if !allowed.kms_keys.is_empty() && !allowed.kms_keys.contains(&record.kek) {
        return Err(ApiError::KeyRefused(format!(
            "key-encryption key {} is not allowed by rule {}",
            record.kek, allowed.rule
        )));
    }
    match app.checker.check(record, repo).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if let crate::keycheck::KeyCheckError::KekUnusable(why) = &e {
                let msg = format!("a key record was refused: key-encryption key {why}");
                let dedup = Some((format!("kek:{}", record.kek), crate::monitor::detect::QUIET_SECS));
                app.watch
                    .alerts
                    .raise(
                        "kek",
                        crate::monitor::alerts::Severity::High,
                        Some(repo.to_string()),
                        Some(record.kek.clone()),
                        msg,
                        dedup,
                    )
                    .await;
            }
            Err(ApiError::KeyRefused(e.to_string()))
        }
    }
}

pub async fn put_config(app: &App, allowed: &Allowed, repo: &RepoName, body: Bytes) -> Result<Reply, ApiError> {
    let config = RepoConfig::decode(&body).map_err(invalid)?;
    if config.repo != *repo {
        return Err(invalid(format!("the config names repository {}", config.repo)));
    }
    check_key(app, allowed, &config.id_key, repo).await?;
    let reply = put_once(app, repo, &layout::config(repo), body, "repository config").await;
    match reply {
        Err(ApiError::Conflict(_)) => Err(ApiError::Conflict(format!("repository {repo} is already initialised"))),
        other => other,
    }
}

/// The repository's config, as the agent wrote it.
pub async fn get_config(app: &App, repo: &RepoName) -> Result<Reply, ApiError> {
    match app.store.get(&layout::config(repo)).await? {
        Some(b) => Ok(Reply::bytes(b)),
        None => Err(ApiError::NotInitialised(format!("repository {repo} is not initialised"))),
    }
}

pub async fn put_key(app: &App, allowed: &Allowed, repo: &RepoName, id: KeyId, body: Bytes) -> Result<Reply, ApiError> {
    let record = KeyRecord::decode(&body).map_err(invalid)?;
    if record.key_id != id || record.purpose != Purpose::Data {
        return Err(invalid("the record is not the data key named in the path"));
    }
    check_key(app, allowed, &record, repo).await?;
    let reply = put_once(app, repo, &layout::key(repo, &id), body, "key record").await?;
    app.know_key(repo, id);
    Ok(reply)
}

/// How far an epoch's `created` may lie from the proxy's clock (ms).
pub const EPOCH_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

async fn read_epochs(app: &App, repo: &RepoName) -> Result<Vec<coffer_proto::repo::Epoch>, ApiError> {
    let mut epochs = Vec::new();
    for key in app.store.list(&layout::prefix(repo, layout::Kind::Epochs)).await? {
        if let Some(bytes) = app.store.get(&key).await? {
            let e = coffer_proto::repo::Epoch::decode(&bytes, repo)
                .map_err(|e| ApiError::Conflict(format!("{key}: {e}")))?;
            epochs.push(e);
        }
    }
    Ok(epochs)
}

/// Adds a chunk-id key epoch. Epochs are ordered by `created`, and new
/// backups use the last, so the proxy decides what may be last: `created`
/// must be the proxy's own time (within [`EPOCH_CLOCK_SKEW_MS`]) and later
/// than every stored epoch's. A writer cannot date an epoch into the
/// future to stay "newest" past the operator's next `coffer key rotate`.
pub async fn put_epoch(
    app: &App,
    allowed: &Allowed,
    repo: &RepoName,
    id: KeyId,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let epoch = coffer_proto::repo::Epoch::decode(&body, repo).map_err(invalid)?;
    if epoch.key.key_id != id {
        return Err(invalid("the epoch's key is not the one named in the path"));
    }
    if app.store.head(&layout::config(repo)).await?.is_none() {
        return Err(ApiError::NotInitialised(format!("repository {repo} is not initialised")));
    }
    let existing = read_epochs(app, repo).await?;
    let replay = existing.iter().any(|e| e.key.key_id == id);
    if !replay {
        let now = crate::unix_now_ms();
        if epoch.created.abs_diff(now) > EPOCH_CLOCK_SKEW_MS {
            return Err(invalid(format!(
                "the epoch's creation time {} ms is more than {} minutes from the proxy's clock ({now} ms)",
                epoch.created,
                EPOCH_CLOCK_SKEW_MS / 60_000
            )));
        }
        if let Some(latest) = existing.iter().map(|e| e.created).filter(|&c| c <= now + EPOCH_CLOCK_SKEW_MS).max() {
            if epoch.created <= latest {
                return Err(ApiError::Conflict(format!(
                    "the epoch's creation time {} ms is not after the newest epoch's ({latest} ms)",
                    epoch.created
                )));
            }
        }
    }
    check_key(app, allowed, &epoch.key, repo).await?;
    put_once(app, repo, &layout::epoch(repo, &id), body, "key epoch").await
}

/// Every epoch of the repository, oldest first, as a JSON array. An epoch
/// dated into the future (stored before the proxy checked dates) sorts
/// first, so it can never stay the one new backups use.
pub async fn list_epochs(app: &App, repo: &RepoName) -> Result<Reply, ApiError> {
    let mut epochs = read_epochs(app, repo).await?;
    let horizon = crate::unix_now_ms() + EPOCH_CLOCK_SKEW_MS;
    for e in epochs.iter().filter(|e| e.created > horizon) {
        tracing::warn!(%repo, key_id = %e.key.key_id, created = e.created, "an epoch is dated into the future: it sorts first");
    }
    epochs.sort_by_key(|e| (e.created <= horizon, e.created, e.key.key_id));
    Ok(Reply::json(StatusCode::OK, &epochs))
}

/// Writes a small object once; a repeat of the same bytes is a success
/// (so retries are safe), different bytes are a conflict.
async fn put_once(app: &App, repo: &RepoName, key: &str, body: Bytes, what: &str) -> Result<Reply, ApiError> {
    let outcome = app.store.put_new(key, body.clone(), app.retention_for(repo).1).await?;
    if outcome == PutOutcome::Exists && app.store.get(key).await?.as_ref() != Some(&body) {
        return Err(ApiError::Conflict(format!("{what} already exists with other contents")));
    }
    Ok(Reply::stored(outcome))
}
