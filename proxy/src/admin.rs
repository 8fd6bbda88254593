//! The admin API: every call needs the admin role and a fresh TOTP code
//! (checked in `api::serve`), and writes a durable audit event before it
//! acts. Revoke an identity, reload the configuration, put or lift legal
//! holds, enter or leave lockdown. Their state lives in the store (under the
//! reserved `admin/` tree), so it survives restarts and is shared by every
//! proxy on the bucket.

use std::collections::BTreeSet;
use std::net::IpAddr;

use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{KeyId, RepoName, SnapshotId};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::{invalid, keys, ApiError, App, Reply};
use crate::audit::{Draft, Outcome};
use crate::identity::Identity;
use crate::policy::Action;
use crate::store::{ObjectStore, StoreError};

/// Where an earlier version stored revocations, one flat object per
/// identity (still read, as each identity's oldest record).
pub const REVOCATIONS: &str = "admin/revocations/";
/// Revocation switches: `admin/identities/<hash>/<millis>-<random>`, the
/// newest deciding. (Not under `REVOCATIONS`: on the filesystem store an
/// old flat record there would block the folder of the same name.)
pub const IDENTITY_SWITCHES: &str = "admin/identities/";
/// Lockdown switches, one object each; the newest decides.
pub const LOCKDOWN: &str = "admin/lockdown/";
/// Legal hold switches per snapshot: `admin/holds/<repo>/<snapshot>/<time>`.
pub const HOLDS: &str = "admin/holds/";

/// A revocation (or its lifting), as stored and as sent to
/// `POST /v1/admin/revoke`. Stored write-once under
/// `admin/identities/<BLAKE3 of domain and identity>/<millis>-<random>`;
/// the newest record of an identity decides. (A record stored as
/// `admin/revocations/<hash>` by an earlier version counts as the oldest.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub trust_domain: String,
    pub identity: String,
    /// `false` lifts an earlier revocation (reinstates the identity).
    #[serde(default = "yes")]
    pub revoked: bool,
    /// Who revoked it, when (set by the proxy).
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub time: Option<u64>,
}

fn yes() -> bool {
    true
}

/// The folder of an identity's revocation records.
pub fn revocation_folder(trust_domain: &str, identity: &str) -> String {
    let name = blake3::hash(format!("{trust_domain}\0{identity}").as_bytes()).to_hex();
    format!("{IDENTITY_SWITCHES}{name}")
}

/// Refuses an admin call on `repo` that the admin's own rules do not
/// reach: an admin's rights stop at its trust domain's namespace and its
/// rule's repository patterns, as every role's do.
fn scope(app: &App, admin: &Identity, action: Action, repo: &RepoName, source: IpAddr) -> Result<(), ApiError> {
    let request = crate::policy::AccessRequest { identity: admin, action, repo: Some(repo), source };
    app.policy().decide(&request)?;
    Ok(())
}

/// A switch (lockdown, or a snapshot's hold), as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    on: bool,
    by: String,
    time: u64,
}

fn by(admin: &Identity) -> String {
    format!("{} ({})", admin.name(), admin.domain())
}

/// The audit event an admin call writes, durably, before it acts.
async fn audit_intent(app: &App, draft: &Draft, what: String) -> Result<(), ApiError> {
    let intent =
        Draft { outcome: Some(Outcome::Ok), reason: Some(format!("authorized with TOTP; {what}")), ..draft.clone() };
    app.audit.record(intent, true).await.map_err(|_| ApiError::Audit)
}

/// A name under `prefix` that sorts after every earlier one: `<20-digit
/// millis>-<8 hex>`.
fn switch_name(prefix: &str) -> String {
    let now_ms = crate::unix_now_ms();
    let mut r = [0u8; 4];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    format!("{prefix}{now_ms:020}-{}", hex::encode(r))
}

/// Writes a switch object under `prefix`, named so the newest sorts last.
async fn write_switch(app: &App, prefix: &str, on: bool, admin: &Identity) -> Result<(), ApiError> {
    let body = serde_json::to_vec(&Switch { on, by: by(admin), time: crate::unix_now() }).expect("serialises");
    let until = crate::unix_now() + crate::store::LONGEST_LOCK_SECS;
    app.store.put_new(&switch_name(prefix), body.into(), until).await?;
    Ok(())
}

/// The newest switch under `prefix`, if any.
pub async fn read_switch(store: &dyn ObjectStore, prefix: &str) -> Result<Option<bool>, StoreError> {
    // Only names this module writes count: `<20-digit millis>-<8 hex>`.
    let is_switch = |k: &String| {
        k.strip_prefix(prefix).and_then(|n| n.split_once('-')).is_some_and(|(t, r)| {
            t.len() == 20
                && t.bytes().all(|b| b.is_ascii_digit())
                && r.len() == 8
                && r.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    let Some(newest) = store.list(prefix).await?.into_iter().filter(is_switch).max() else { return Ok(None) };
    let Some(body) = store.get(&newest).await? else { return Ok(None) };
    Ok(serde_json::from_slice::<Switch>(&body).ok().map(|s| s.on))
}

/// Revokes an identity of the admin's own trust domain, or (`revoked:
/// false`) reinstates it; reinstating loosens, so lockdown refuses it.
pub(crate) async fn revoke(app: &App, admin: &Identity, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let mut r: Revocation = serde_json::from_slice(body).map_err(invalid)?;
    if r.trust_domain.is_empty() || r.identity.is_empty() {
        return Err(invalid("trust_domain and identity are required"));
    }
    if r.trust_domain != admin.domain() {
        return Err(ApiError::Denied(crate::policy::Denied(format!(
            "{admin} may revoke identities of its own trust domain {} only, not of {}",
            admin.domain(),
            r.trust_domain
        ))));
    }
    if !r.revoked {
        refuse_loosening_in_lockdown(app, admin, Action::AdminRevoke, "reinstating an identity", "revoking one")
            .await?;
    }
    let verb = if r.revoked { "revoking" } else { "reinstating" };
    audit_intent(app, draft, format!("{verb} {} in trust domain {}", r.identity, r.trust_domain)).await?;
    r.by = Some(by(admin));
    r.time = Some(crate::unix_now());
    let body = serde_json::to_vec(&r).expect("serialises");
    let until = crate::unix_now() + crate::store::LONGEST_LOCK_SECS;
    let folder = revocation_folder(&r.trust_domain, &r.identity);
    app.store.put_new(&switch_name(&format!("{folder}/")), body.into(), until).await?;
    app.load_revocations().await?;
    Ok(Reply::json(StatusCode::CREATED, &r))
}

pub(crate) async fn reload(app: &App, draft: &Draft) -> Result<Reply, ApiError> {
    audit_intent(app, draft, "reloading the configuration".into()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.reload.send(tx).await.map_err(|_| ApiError::Conflict("the proxy is shutting down".into()))?;
    match rx.await {
        Ok(Ok(())) => Ok(Reply::empty(StatusCode::OK)),
        Ok(Err(e)) => Err(invalid(e)),
        Err(_) => Err(ApiError::Conflict("the proxy is shutting down".into())),
    }
}

// === lockdown ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockdownRequest {
    on: bool,
}

/// During lockdown: reads, the admin call that lifts it, and the admin
/// calls that only tighten, which an incident needs most: revoking an
/// identity and putting a legal hold (lifting one is refused in [`hold`]).
pub fn allowed_in_lockdown(action: Action) -> bool {
    use Action::*;
    matches!(
        action,
        Whoami
            | GetConfig
            | GetKey
            | GetChunk
            | ListSnapshots
            | GetSnapshot
            | ListEpochs
            | AdminLockdown
            | AdminRevoke
            | AdminHold
    )
}

/// Lockdown serves the admin calls that only tighten; the loosening form of
/// one (`what`; `instead` is the tightening form) is refused and alerted.
async fn refuse_loosening_in_lockdown(
    app: &App,
    admin: &Identity,
    action: Action,
    what: &str,
    instead: &str,
) -> Result<(), ApiError> {
    if !app.lockdown.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    lockdown_refused(app, admin, action).await;
    Err(ApiError::Denied(crate::policy::Denied(format!(
        "the proxy is in lockdown: {what} is refused ({instead} is allowed)"
    ))))
}

/// A write refused by lockdown raises an alert (once per identity per quiet period).
pub async fn lockdown_refused(app: &App, who: &Identity, action: Action) {
    let msg = format!("lockdown refused {} by {who}", action.name());
    let dedup = Some((format!("lockdown:{}:{}", who.domain(), who.name()), crate::detect::QUIET_SECS));
    app.watch.alerts.raise("lockdown", crate::alerts::Severity::High, None, Some(who.to_string()), msg, dedup).await;
}

pub(crate) async fn lockdown(app: &App, admin: &Identity, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let req: LockdownRequest = serde_json::from_slice(body).map_err(invalid)?;
    let what = if req.on { "entering lockdown" } else { "lifting lockdown" };
    audit_intent(app, draft, what.into()).await?;
    write_switch(app, LOCKDOWN, req.on, admin).await?;
    app.lockdown.store(req.on, std::sync::atomic::Ordering::Release);
    let msg = format!("{what}, by {admin}");
    app.watch
        .alerts
        .raise("lockdown", crate::alerts::Severity::Critical, None, Some(admin.to_string()), msg, None)
        .await;
    Ok(Reply::json(StatusCode::OK, &serde_json::json!({ "lockdown": req.on })))
}

/// Restores the lockdown state from the store at start.
pub async fn load_lockdown(app: &App) -> Result<bool, ApiError> {
    let on = read_switch(&*app.store, LOCKDOWN).await?.unwrap_or(false);
    app.lockdown.store(on, std::sync::atomic::Ordering::Release);
    Ok(on)
}

// === legal hold ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    repo: RepoName,
    /// One snapshot, or every snapshot of the repository.
    #[serde(default)]
    snapshot: Option<SnapshotId>,
    on: bool,
}

/// Every object a snapshot needs: its root and index, its chunks, the data
/// keys that sealed them (all of the repository's for a segment from before
/// key ids were recorded), the config and the chunk-id key epochs.
async fn objects_of(app: &App, repo: &RepoName, snapshot: SnapshotId) -> Result<BTreeSet<String>, ApiError> {
    let index = app
        .store
        .get(&keys::index(repo, &snapshot))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no snapshot {snapshot} in {repo}")))?;
    let index = IndexSegment::decode(&index).map_err(|e| ApiError::Conflict(format!("index of {snapshot}: {e}")))?;
    let mut out: BTreeSet<String> = index.chunks.iter().map(|e| keys::chunk(repo, &e.id)).collect();
    out.insert(keys::index(repo, &snapshot));
    out.insert(keys::snapshot(repo, &snapshot));
    out.insert(keys::config(repo));
    out.extend(app.store.list(&format!("{repo}/epochs/")).await?);
    match &index.keys {
        Some(ids) => out.extend(ids.iter().map(|k| keys::key(repo, k))),
        None => out.extend(app.store.list(&format!("{repo}/keys/")).await?),
    }
    Ok(out)
}

async fn snapshots_of(app: &App, repo: &RepoName) -> Result<Vec<SnapshotId>, ApiError> {
    let prefix = format!("{repo}/snapshots/");
    Ok(app.store.list(&prefix).await?.iter().filter_map(|k| k[prefix.len()..].parse().ok()).collect())
}

pub fn hold_prefix(repo: &RepoName, snapshot: &SnapshotId) -> String {
    format!("{HOLDS}{repo}/{snapshot}/")
}

/// Puts or lifts a legal hold on a snapshot (or all of a repository's) and
/// every object it references. Lifting leaves alone whatever another held
/// snapshot still references.
pub(crate) async fn hold(
    app: &App,
    admin: &Identity,
    source: IpAddr,
    draft: &Draft,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req: HoldRequest = serde_json::from_slice(body).map_err(invalid)?;
    scope(app, admin, Action::AdminHold, &req.repo, source)?;
    if !req.on {
        refuse_loosening_in_lockdown(app, admin, Action::AdminHold, "lifting a legal hold", "putting one").await?;
    }
    let repo = &req.repo;
    let targets = match req.snapshot {
        Some(s) => vec![s],
        None => snapshots_of(app, repo).await?,
    };
    let verb = if req.on { "putting" } else { "lifting" };
    audit_intent(app, draft, format!("{verb} a legal hold on {} snapshot(s) of {repo}", targets.len())).await?;
    let mut objects = BTreeSet::new();
    for s in &targets {
        objects.extend(objects_of(app, repo, *s).await?);
    }
    if !req.on {
        // Objects still needed by snapshots that stay held keep their hold.
        for other in snapshots_of(app, repo).await? {
            if !targets.contains(&other) && read_switch(&*app.store, &hold_prefix(repo, &other)).await? == Some(true) {
                for o in objects_of(app, repo, other).await? {
                    objects.remove(&o);
                }
            }
        }
    }
    for s in &targets {
        write_switch(app, &hold_prefix(repo, s), req.on, admin).await?;
    }
    for key in &objects {
        app.store.set_legal_hold(key, req.on).await?;
    }
    Ok(Reply::json(
        StatusCode::OK,
        &serde_json::json!({ "snapshots": targets.len(), "objects": objects.len(), "on": req.on }),
    ))
}

// === expiry ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireRequest {
    repo: RepoName,
    #[serde(default)]
    dry_run: bool,
}

/// One object expiry deletes (or, in a dry run, would), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
struct ExpireReport {
    dry_run: bool,
    deleted: Vec<Doomed>,
    /// Snapshots past retention kept because of a legal hold.
    held: Vec<String>,
    /// Objects that could not be deleted (they stay; expiry can run again).
    failed: Vec<Doomed>,
}

/// What expiry would delete in `repo` at `now`, in the order to delete it:
/// roots and indexes of snapshots whose retention ended and that are not
/// held, index segments left by commits that never completed, then chunks
/// no remaining snapshot references whose own lock has ended and that are
/// not held, then data key records that neither a remaining snapshot nor a
/// remaining chunk was sealed with, whose lock has ended and that are not
/// held. The config and the key epochs stay while the repository exists.
pub async fn expiry_plan(
    store: &dyn ObjectStore,
    repo: &RepoName,
    now: u64,
) -> Result<(Vec<Doomed>, Vec<String>), StoreError> {
    let mut doomed = Vec::new();
    let mut held = Vec::new();
    let mut live: BTreeSet<coffer_proto::ChunkId> = BTreeSet::new();
    let mut live_keys: BTreeSet<KeyId> = BTreeSet::new();
    // Why every key record must stay, if one must: something that survives
    // does not say which keys it needs.
    let mut keep_all_keys: Option<String> = None;
    let roots: BTreeSet<String> = store.list(&format!("{repo}/snapshots/")).await?.into_iter().collect();
    for index_key in store.list(&format!("{repo}/index/")).await? {
        let Some(id) = index_key.rsplit('/').next().and_then(|s| s.parse::<SnapshotId>().ok()) else { continue };
        let Some(bytes) = store.get(&index_key).await? else { continue };
        let Ok(index) = IndexSegment::decode(&bytes) else {
            // Unreadable: keep it and everything, rather than guess.
            return Err(StoreError::Backend {
                key: index_key,
                message: "unreadable index segment".into(),
                retryable: false,
            });
        };
        let root = keys::snapshot(repo, &id);
        let has_root = roots.contains(&root);
        let ended = index.retain_until <= now;
        let switch_on = read_switch(store, &hold_prefix(repo, &id)).await? == Some(true);
        let root_held = has_root && store.head(&root).await?.is_some_and(|m| m.legal_hold);
        if ended && (switch_on || root_held) {
            held.push(id.to_string());
        }
        if ended && !switch_on && !root_held {
            let why = if has_root {
                format!("snapshot {id}: retention ended at {}", index.retain_until)
            } else {
                format!("index of a commit that never completed, retention ended at {}", index.retain_until)
            };
            if has_root {
                doomed.push(Doomed { key: root, reason: why.clone() });
            }
            doomed.push(Doomed { key: index_key, reason: why });
        } else {
            live.extend(index.chunks.iter().map(|e| e.id));
            match &index.keys {
                Some(ids) => live_keys.extend(ids),
                None => keep_all_keys = Some(format!("index segment {id} is from before key ids were recorded")),
            }
        }
    }
    for key in store.list(&format!("{repo}/chunks/")).await? {
        let Some(id) = key.rsplit('/').next().and_then(|s| s.parse::<coffer_proto::ChunkId>().ok()) else { continue };
        if live.contains(&id) {
            continue;
        }
        let Some(meta) = store.head(&key).await? else { continue };
        if meta.deletable(&key, now).is_ok() {
            doomed.push(Doomed { key, reason: "no remaining snapshot references it, and its lock has ended".into() });
        } else {
            match meta.sealed_by {
                Some(k) => {
                    live_keys.insert(k);
                }
                None => keep_all_keys = Some(format!("chunk {id} is from before key ids were recorded")),
            }
        }
    }
    if let Some(why) = keep_all_keys {
        tracing::info!(%repo, "expiry keeps every key record: {why}");
        return Ok((doomed, held));
    }
    let prefix = format!("{repo}/keys/");
    for key in store.list(&prefix).await? {
        let Ok(id) = key[prefix.len()..].parse::<KeyId>() else { continue };
        if live_keys.contains(&id) {
            continue;
        }
        let Some(meta) = store.head(&key).await? else { continue };
        if meta.deletable(&key, now).is_ok() {
            doomed.push(Doomed {
                key,
                reason: "no remaining snapshot or chunk was sealed with this data key, and its lock has ended".into(),
            });
        }
    }
    Ok((doomed, held))
}

pub(crate) async fn expire(
    app: &App,
    admin: &Identity,
    source: IpAddr,
    draft: &Draft,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req: ExpireRequest = serde_json::from_slice(body).map_err(invalid)?;
    scope(app, admin, Action::AdminExpire, &req.repo, source)?;
    let now = crate::unix_now();
    let (doomed, held) = expiry_plan(&*app.store, &req.repo, now).await?;
    if req.dry_run {
        return Ok(Reply::json(
            StatusCode::OK,
            &ExpireReport { dry_run: true, deleted: doomed, held, failed: Vec::new() },
        ));
    }
    audit_intent(app, draft, format!("expiring {} objects of {}", doomed.len(), req.repo)).await?;
    let (mut deleted, mut failed) = (Vec::new(), Vec::new());
    let key_prefix = format!("{}/keys/", req.repo);
    // In plan order: roots first, so snapshots disappear before anything
    // they need, and key records last.
    for d in doomed {
        let key_id = d.key.strip_prefix(&key_prefix).and_then(|k| k.parse::<KeyId>().ok());
        if key_id.is_some() && !failed.is_empty() {
            // A chunk that stays may have been sealed with this key: keep
            // it, so the chunk stays readable, until a run deletes both.
            let reason = "kept: other objects could not be deleted; run expire again".to_string();
            failed.push(Doomed { key: d.key, reason });
            continue;
        }
        match app.store.delete(&d.key, now).await {
            Ok(()) => {
                if let Some(id) = key_id {
                    app.forget_key(&req.repo, id);
                }
                deleted.push(d);
            }
            Err(e) => failed.push(Doomed { key: d.key, reason: e.to_string() }),
        }
    }
    Ok(Reply::json(StatusCode::OK, &ExpireReport { dry_run: false, deleted, held, failed }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use coffer_proto::snapshot::{IndexEntry, SnapshotStats};
    use coffer_proto::ChunkId;

    use super::*;
    use crate::store::{FsStore, Recorded};

    const NOW: u64 = 1_000_000;

    fn key_id(n: u8) -> KeyId {
        KeyId::from_bytes([n; 16])
    }

    async fn put(store: &FsStore, key: &str, body: Vec<u8>, until: u64, sealed_by: Option<KeyId>) {
        let recorded = Recorded { digest: *blake3::hash(&body).as_bytes(), sealed_by };
        store.put_object(key, Bytes::from(body), until, recorded).await.unwrap();
    }

    async fn segment(store: &FsStore, repo: &RepoName, n: u8, keys: Option<Vec<KeyId>>, chunk: ChunkId) {
        let id = SnapshotId::from_bytes([n; 16]);
        let index = IndexSegment {
            snapshot: id,
            committed: 1,
            retain_until: NOW + 10,
            stats: SnapshotStats::default(),
            keys,
            chunks: vec![IndexEntry { id: chunk, size: 1, retain_until: NOW + 10 }],
        };
        put(store, &keys::index(repo, &id), index.encode(), NOW + 10, None).await;
        put(store, &keys::snapshot(repo, &id), vec![n], NOW + 10, None).await;
    }

    fn doomed_keys(doomed: &[Doomed]) -> Vec<&str> {
        doomed.iter().map(|d| d.key.as_str()).filter(|k| k.contains("/keys/")).collect()
    }

    #[tokio::test]
    async fn key_records_go_once_nothing_that_stays_was_sealed_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        // Key 1 seals a live snapshot's chunk; key 2 an unreferenced chunk
        // still locked; key 3 nothing that stays; key 4 nothing, but it is
        // still locked itself. Every key record's own lock has ended but 4's.
        let (live, orphan) = (ChunkId::from_bytes([1; 32]), ChunkId::from_bytes([2; 32]));
        put(&store, &keys::chunk(&repo, &live), vec![1], NOW + 10, Some(key_id(1))).await;
        put(&store, &keys::chunk(&repo, &orphan), vec![2], NOW + 10, Some(key_id(2))).await;
        for n in 1..=4 {
            let until = if n == 4 { NOW + 10 } else { NOW - 10 };
            put(&store, &keys::key(&repo, &key_id(n)), vec![n], until, None).await;
        }
        segment(&store, &repo, 1, Some(vec![key_id(1)]), live).await;

        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert_eq!(doomed_keys(&doomed), [keys::key(&repo, &key_id(3))]);

        // A segment from before key ids were recorded may need any key.
        segment(&store, &repo, 2, None, live).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }

    #[tokio::test]
    async fn a_surviving_chunk_of_unknown_key_keeps_every_key_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo: RepoName = "dev/r".parse().unwrap();
        put(&store, &keys::chunk(&repo, &ChunkId::from_bytes([2; 32])), vec![2], NOW + 10, None).await;
        put(&store, &keys::key(&repo, &key_id(3)), vec![3], NOW - 10, None).await;
        let (doomed, _) = expiry_plan(&store, &repo, NOW).await.unwrap();
        assert!(doomed_keys(&doomed).is_empty(), "{doomed:?}");
    }
}
