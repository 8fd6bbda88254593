//! The state every request shares: the policy, the store, the audit log,
//! the key checker, the admin's switches as last read, metrics and the
//! detector. Built once by the server; swapped in parts on reload.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use coffer_proto::api::SnapshotInfo;
use coffer_proto::layout;
use coffer_proto::{KeyId, RepoName, Scope, SnapshotId};

use crate::access::clientcerts::ClientCerts;
use crate::access::governance::RepoPolicies;
use crate::access::identity::Identity;
use crate::access::mfa::MfaVerifier;
use crate::access::policy::Policy;
use crate::access::switches;
use crate::audit::AuditLog;
use crate::catalog::Uploader;
use crate::keycheck::KeyChecker;
use crate::monitor::detect::Watch;
use crate::monitor::metrics::Metrics;
use crate::store::{ObjectStore, StoreError};

/// Why a reload was refused; the running configuration is kept.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::access::policy::PolicyError),
    #[error(transparent)]
    Trust(#[from] crate::access::trust::TrustError),
    /// A signal may not loosen a repository policy.
    #[error("{0}: loosening a repository policy needs `coffer-proxy admin reload` (admin + TOTP)")]
    NeedsAdmin(String),
}

/// Where the server loop answers a reload: whether it did.
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<(), ReloadError>>;
/// Asks the server loop to reload the configuration file.
pub type ReloadRequests = tokio::sync::mpsc::Sender<ReloadReply>;

/// Most snapshots' index summaries kept in memory, over all repositories
/// (about 100 bytes each).
pub const INFO_CACHE_MAX: usize = 200_000;

/// A stored record about an identity as read: trust domain, identity, and
/// `Some(revoked)` (false: reinstated) for a revocation, `None` for a
/// quarantine of its uploads.
type IdentityRecord = (String, String, Option<bool>);

/// What the server builds an [`App`] from.
pub struct AppParts {
    pub policy: Policy,
    pub store: Arc<dyn ObjectStore>,
    pub audit: AuditLog,
    pub checker: Arc<dyn KeyChecker>,
    /// (retention, slack) in seconds.
    pub retention: (u64, u64),
    /// `retention.upload_lock_hours` in seconds (0: none).
    pub upload_lock: u64,
    pub commit_max_bytes: usize,
    /// Store requests one API call keeps in flight (`limits.store_fan_out`).
    pub fan_out: usize,
    /// Chunks the catalogs hold at most, over all repositories.
    pub catalog_chunks: usize,
    /// Store requests in flight over all API calls (`limits.store_requests`).
    pub store_requests: usize,
    pub mfa: MfaVerifier,
    pub reload: ReloadRequests,
    pub metrics: Arc<Metrics>,
    pub watch: Arc<Watch>,
    pub client_certs: ClientCerts,
    /// `lifecycle.listing_packs`.
    pub packs_enabled: bool,
    /// `limits.identity_upload_bytes_per_day` (0: none).
    pub upload_quota: u64,
}

/// Everything a request handler needs; shared by all connections.
pub struct App {
    /// Swapped whole on reload, so a request sees one policy throughout.
    policy: RwLock<Arc<Policy>>,
    pub store: Arc<dyn ObjectStore>,
    pub audit: AuditLog,
    pub checker: Arc<dyn KeyChecker>,
    /// (retention, slack) in seconds.
    pub retention: (u64, u64),
    /// How long an upload is locked until a commit references it, in
    /// seconds (0: for retention and slack at once).
    pub upload_lock: u64,
    pub commit_max_bytes: usize,
    /// Store requests one API call keeps in flight.
    pub fan_out: usize,
    /// What committed snapshots' index segments say, by repository and
    /// snapshot: they are written once, so a listing reads only the new
    /// ones (an entry whose root is gone is dropped when a listing finds
    /// it gone). Bounded: emptied when it reaches `INFO_CACHE_MAX`.
    pub(crate) snapshot_infos: Mutex<HashMap<(RepoName, SnapshotId), SnapshotInfo>>,
    /// Listing packs read, and the repositories being packed now.
    pub(crate) packs: crate::packcache::Packs,
    /// Whether this proxy writes listing packs (`lifecycle.listing_packs`).
    pub packs_enabled: bool,
    /// What each identity stored today (`limits.identity_upload_bytes_per_day`).
    pub upload_quota: crate::quota::UploadQuota,
    /// What each identity stored in each repository since its last commit.
    pub observed: crate::observed::Observed,
    /// Store requests in flight over all API calls at once
    /// (`limits.store_requests`): fan-out per call times calls in flight
    /// must not open thousands of connections to the store.
    store_permits: Arc<tokio::sync::Semaphore>,
    /// What this proxy knows is stored, per repository (`catalog`).
    pub catalogs: crate::catalog::Catalogs,
    /// Key records known to exist, so chunk uploads need no HEAD for them.
    known_keys: Mutex<HashSet<(RepoName, KeyId)>>,
    pub mfa: MfaVerifier,
    /// Identities an admin revoked (trust domain, name); loaded from the store.
    pub(crate) revoked: RwLock<HashSet<(String, String)>>,
    /// Revocation and quarantine objects already read (they are
    /// write-once), so polling the store reads only new ones.
    revocations_read: Mutex<HashMap<String, Option<IdentityRecord>>>,
    /// How many times each identity was revoked or quarantined: the
    /// generation of its upload scope. Never goes down.
    generations: RwLock<HashMap<(String, String), u32>>,
    /// When scopes began in this store (`admin/scopes-since`): an upload
    /// with no scope recorded counts as one from before scopes only if the
    /// store wrote it before then (later ones are an old proxy's, during an
    /// upgrade that should not have overlapped).
    scopes_since: std::sync::atomic::AtomicU64,
    /// Repository policies, swapped whole on reload.
    repo_policies: RwLock<Arc<RepoPolicies>>,
    /// Lockdown: only reads, and the admin calls that tighten.
    pub(crate) lockdown: std::sync::atomic::AtomicBool,
    /// Asks the server loop to reload the configuration file.
    pub(crate) reload: ReloadRequests,
    pub metrics: Arc<Metrics>,
    pub watch: Arc<Watch>,
    /// Agents' certificate expiries, for `assess`.
    pub client_certs: ClientCerts,
}

impl App {
    pub fn new(parts: AppParts) -> Self {
        let AppParts {
            policy,
            store,
            audit,
            checker,
            retention,
            upload_lock,
            commit_max_bytes,
            fan_out,
            catalog_chunks,
            store_requests,
            mfa,
            reload,
            metrics,
            watch,
            client_certs,
            packs_enabled,
            upload_quota,
        } = parts;
        Self {
            policy: RwLock::new(Arc::new(policy)),
            store,
            audit,
            checker,
            retention,
            upload_lock,
            commit_max_bytes,
            fan_out,
            snapshot_infos: Mutex::default(),
            packs: Default::default(),
            packs_enabled,
            upload_quota: crate::quota::UploadQuota::new(upload_quota),
            observed: Default::default(),
            catalogs: crate::catalog::Catalogs::new(catalog_chunks),
            store_permits: Arc::new(tokio::sync::Semaphore::new(store_requests)),
            known_keys: Mutex::default(),
            mfa,
            revoked: RwLock::default(),
            revocations_read: Mutex::default(),
            generations: RwLock::default(),
            scopes_since: std::sync::atomic::AtomicU64::new(0),
            lockdown: Default::default(),
            repo_policies: RwLock::new(Arc::new(RepoPolicies::new(&[], None, None).expect("empty"))),
            reload,
            metrics,
            watch,
            client_certs,
        }
    }

    /// Loads the revocations and quarantines stored by admins (on any
    /// proxy), so they survive restarts and reach every proxy; objects read
    /// before are not read again.
    pub async fn load_revocations(&self) -> Result<usize, StoreError> {
        let mut keys = self.store.list(switches::REVOCATIONS).await?;
        keys.extend(self.store.list(switches::IDENTITY_SWITCHES).await?);
        keys.extend(self.store.list(switches::QUARANTINES).await?);
        let unread: Vec<String> = {
            let read = self.revocations_read.lock().expect("not poisoned");
            keys.iter().filter(|k| !read.contains_key(*k)).cloned().collect()
        };
        for key in unread {
            let Some(bytes) = self.store.get(&key).await? else { continue };
            let parsed = if key.starts_with(switches::QUARANTINES) {
                serde_json::from_slice::<switches::Quarantine>(&bytes).map(|q| (q.trust_domain, q.identity, None))
            } else {
                serde_json::from_slice::<switches::Revocation>(&bytes)
                    .map(|r| (r.trust_domain, r.identity, Some(r.revoked)))
            };
            let parsed =
                parsed.inspect_err(|e| tracing::error!("ignoring unreadable revocation or quarantine {key}: {e}")).ok();
            self.revocations_read.lock().expect("not poisoned").insert(key, parsed);
        }
        // The newest revocation record of each identity decides; names sort
        // by time, and a record from before switches (no time in its name)
        // is oldest. Every revocation and quarantine starts a generation.
        let (loaded, generations) = {
            let read = self.revocations_read.lock().expect("not poisoned");
            let mut newest: HashMap<(String, String), (&str, bool)> = Default::default();
            let mut generations: HashMap<(String, String), u32> = Default::default();
            // Every record this proxy ever read counts for generations
            // (one deleted since still started one); the records stored
            // now decide revocation.
            let listed: HashSet<&String> = keys.iter().collect();
            for (key, record) in read.iter() {
                let Some((domain, name, says)) = record else { continue };
                // A record counts only in its own identity's folder.
                let folder = match says {
                    None => switches::quarantine_folder(domain, name),
                    Some(_) => switches::revocation_folder(domain, name),
                };
                if !key.starts_with(&format!("{folder}/")) && !key.starts_with(switches::REVOCATIONS) {
                    tracing::error!("ignoring {key}: it names {name} ({domain}), whose records are elsewhere");
                    continue;
                }
                let who = (domain.clone(), name.clone());
                if says.unwrap_or(true) {
                    let n = generations.entry(who.clone()).or_default();
                    *n = n.saturating_add(1);
                }
                let Some(revoked) = *says else { continue };
                if !listed.contains(key) {
                    continue;
                }
                let order = key
                    .strip_prefix(switches::IDENTITY_SWITCHES)
                    .and_then(|rest| rest.split_once('/'))
                    .map_or("", |(_, n)| n);
                let slot = newest.entry(who).or_insert((order, revoked));
                if order >= slot.0 {
                    *slot = (order, revoked);
                }
            }
            let loaded: HashSet<(String, String)> =
                newest.into_iter().filter(|(_, (_, revoked))| *revoked).map(|(who, _)| who).collect();
            (loaded, generations)
        };
        let n = loaded.len();
        {
            // Generations only grow: a record that vanished or no longer
            // reads (deleted behind the proxy's back, an unreadable newer
            // format) must not bring an identity's old uploads back.
            let mut known = self.generations.write().expect("not poisoned");
            for ((domain, name), g) in generations {
                let slot = known.entry((domain.clone(), name.clone())).or_default();
                if g > *slot {
                    tracing::warn!(trust_domain = %domain, identity = %name, generation = g,
                        "revoked or quarantined by an administrator: its earlier uploads no longer count for its dedup");
                    *slot = g;
                } else if g < *slot {
                    tracing::error!(trust_domain = %domain, identity = %name, "fewer revocation and quarantine \
                        records than before ({g} < {slot}): some were deleted or cannot be read; kept {slot}");
                }
            }
        }
        let mut revoked = self.revoked.write().expect("not poisoned");
        for (domain, name) in loaded.difference(&revoked) {
            tracing::warn!(trust_domain = %domain, identity = %name, "revoked by an administrator: refused from now on");
        }
        for (domain, name) in revoked.difference(&loaded) {
            tracing::warn!(trust_domain = %domain, identity = %name, "reinstated by an administrator");
        }
        *revoked = loaded;
        Ok(n)
    }

    pub(crate) fn is_revoked(&self, id: &Identity) -> bool {
        self.revoked.read().expect("not poisoned").contains(&(id.domain().to_string(), id.name().to_string()))
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("not poisoned").clone()
    }

    pub fn repo_policies(&self) -> Arc<RepoPolicies> {
        self.repo_policies.read().expect("not poisoned").clone()
    }

    pub fn set_repo_policies(&self, p: RepoPolicies) {
        *self.repo_policies.write().expect("not poisoned") = Arc::new(p);
    }

    /// (required, until) for an object of `repo` written now: the snapshot
    /// needs it locked until `required`; new locks go to `until` (slack added).
    pub fn retention_for(&self, repo: &RepoName) -> (u64, u64) {
        let retention = self.repo_policies().retention_days(repo).map_or(self.retention.0, |d| u64::from(d) * 86_400);
        let required = crate::unix_now() + retention;
        (required, required + self.retention.1)
    }

    /// Until when an upload to `repo` is locked now: the upload lock
    /// (`retention.upload_lock_hours`) when one is set, never past what a
    /// commit would give it (SPEC §10 "The upload lock").
    pub fn upload_until(&self, repo: &RepoName) -> u64 {
        let until = self.retention_for(repo).1;
        match self.upload_lock {
            0 => until,
            lock => until.min(crate::unix_now() + lock),
        }
    }

    /// With an upload lock, until when a stored chunk's lock must still run
    /// for a dedup answer to count on it: half the upload lock from now (as
    /// `repo`'s retention caps it), so that a backup that counts on an
    /// upload another left uncommitted has at least that long to commit
    /// before expiry may take it. `None`: no upload lock, no such rule.
    pub fn dedup_lock_until(&self, repo: &RepoName, now: u64) -> Option<u64> {
        let longest = self.retention_for(repo).1.saturating_sub(now);
        (self.upload_lock > 0).then(|| now.saturating_add(self.upload_lock.min(longest) / 2))
    }

    /// Replaces the policy atomically: requests already authorized finish
    /// under the old one, new ones see the new one.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("not poisoned") = Arc::new(policy);
    }
}

impl App {
    /// Whose uploads `identity` may count on (SPEC §9 "Dedup scopes"): its
    /// scope in its current generation (raised by each revocation and
    /// quarantine of it), and uploads from before scopes while it has never
    /// been revoked or quarantined.
    pub fn uploader(&self, identity: &Identity) -> Uploader {
        let generation = self.generation(identity);
        Uploader { scope: Scope::of(identity.domain(), identity.name(), generation), legacy: generation == 0 }
    }

    /// Records (once per store, the first proxy with scopes wins) and reads
    /// when scopes began.
    pub async fn load_scopes_since(&self) -> Result<u64, StoreError> {
        let now = crate::unix_now();
        let body = serde_json::to_vec(&serde_json::json!({ "time": now })).expect("serialises");
        let until = now + crate::store::LONGEST_LOCK_SECS;
        self.store.put_new(switches::SCOPES_SINCE, body.into(), until).await?;
        let stored = self.store.get(switches::SCOPES_SINCE).await?.unwrap_or_default();
        let since = serde_json::from_slice::<serde_json::Value>(&stored)
            .ok()
            .and_then(|v| v["time"].as_u64())
            .ok_or_else(|| StoreError::Backend {
                key: switches::SCOPES_SINCE.into(),
                message: "unreadable".into(),
                retryable: false,
            })?;
        self.scopes_since.store(since, std::sync::atomic::Ordering::Release);
        Ok(since)
    }

    /// Whose upload a first upload counts as: the scope the store recorded
    /// beside it; with none, one from before scopes (`None`) if the store
    /// wrote it before scopes began, else [`Scope::UNSCOPED`], which counts
    /// for no one (an old proxy's upload, made after the upgrade).
    pub fn owner_of(&self, meta: &crate::store::ObjectMeta) -> Option<Scope> {
        let since = self.scopes_since.load(std::sync::atomic::Ordering::Acquire);
        match (meta.scope, meta.modified) {
            (Some(scope), _) => Some(scope),
            (None, Some(t)) if t < since => None,
            (None, _) => Some(Scope::UNSCOPED),
        }
    }

    /// When scopes began in this store (unix seconds).
    pub fn scopes_since(&self) -> u64 {
        self.scopes_since.load(std::sync::atomic::Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn set_scopes_since(&self, t: u64) {
        self.scopes_since.store(t, std::sync::atomic::Ordering::Release);
    }

    /// How many times `identity` was revoked or its uploads quarantined.
    pub fn generation(&self, identity: &Identity) -> u32 {
        let key = (identity.domain().to_string(), identity.name().to_string());
        self.generations.read().expect("not poisoned").get(&key).copied().unwrap_or(0)
    }

    /// The retain-until of an object written now.
    pub fn new_retain_until(&self) -> u64 {
        crate::unix_now() + self.retention.0 + self.retention.1
    }

    /// Whether `repo` holds data key record `id` (asked of the store once,
    /// then remembered: key records are never overwritten).
    pub async fn key_exists(&self, repo: &RepoName, id: KeyId) -> Result<bool, StoreError> {
        let cached = (repo.clone(), id);
        if self.known_keys.lock().expect("not poisoned").contains(&cached) {
            return Ok(true);
        }
        let exists = self.store.head(&layout::key(repo, &id)).await?.is_some();
        if exists {
            self.known_keys.lock().expect("not poisoned").insert(cached);
        }
        Ok(exists)
    }

    /// Remembers that `repo` holds data key record `id`.
    pub(crate) fn know_key(&self, repo: &RepoName, id: KeyId) {
        self.known_keys.lock().expect("not poisoned").insert((repo.clone(), id));
    }

    /// Drops a deleted key record from the cache `key_exists` keeps. (Other
    /// proxies may still believe in it; a commit HEADs its keys, so nothing
    /// can be committed under it.)
    pub(crate) fn forget_key(&self, repo: &RepoName, id: KeyId) {
        self.known_keys.lock().expect("not poisoned").remove(&(repo.clone(), id));
    }
}

impl App {
    /// Runs `op` on every item, at most `limit` at a time for this call and
    /// within the proxy's bound on store requests over all calls; results
    /// in the items' order, or the first error.
    pub async fn fan_out<T, R, E, F, Fut>(
        &self,
        limit: usize,
        items: impl IntoIterator<Item = T>,
        mut op: F,
    ) -> Result<Vec<R>, E>
    where
        F: FnMut(T) -> Fut,
        Fut: std::future::Future<Output = Result<R, E>>,
    {
        let permits = &self.store_permits;
        crate::store::fan_out(limit, items, |item| {
            let work = op(item);
            async move {
                let _permit = permits.acquire().await.expect("the semaphore is never closed");
                work.await
            }
        })
        .await
    }

    /// Restores the lockdown state from the store (at start, and when
    /// polled: another proxy may have switched it).
    pub async fn load_lockdown(&self) -> Result<bool, StoreError> {
        let on = switches::read_switch(&*self.store, switches::LOCKDOWN).await?.unwrap_or(false);
        self.lockdown.store(on, std::sync::atomic::Ordering::Release);
        Ok(on)
    }

    /// A write refused by lockdown raises an alert (once per identity per
    /// quiet period).
    pub async fn lockdown_refused(&self, who: &Identity, action: crate::access::policy::Action) {
        let msg = format!("lockdown refused {} by {who}", action.name());
        let dedup = Some((format!("lockdown:{}:{}", who.domain(), who.name()), crate::monitor::detect::QUIET_SECS));
        self.watch
            .alerts
            .raise("lockdown", crate::monitor::alerts::Severity::High, None, Some(who.to_string()), msg, dedup)
            .await;
    }
}
