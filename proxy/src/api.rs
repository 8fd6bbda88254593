//! The `/v1` API: routing, the request life cycle, and the handlers.
//!
//! Every request goes the same way: route (ids and repository names parsed
//! and validated before anything else), authorize, read the body within the
//! action's limit, handle, audit, respond. Failures are [`ApiError`]s, mapped
//! to a status, an error code and an audit outcome in exactly one place.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use coffer_proto::api::{ErrorBody, SnapshotInfo, Whoami, DIGEST_HEADER};
use coffer_proto::envelope::{self, Kind};
use coffer_proto::keys::{KeyRecord, Purpose};
use coffer_proto::repo::RepoConfig;
use coffer_proto::snapshot::{decode_ids, encode_ids, CommitRequest, IndexEntry, IndexSegment, SnapshotStats};
use coffer_proto::{ChunkId, KeyId, RepoName, SnapshotId, ENVELOPE_MAX};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};

use crate::audit::{AuditLog, Draft, Outcome};
use crate::identity::Identity;
use crate::keycheck::KeyChecker;
use crate::mfa::{MfaError, MfaVerifier, TOTP_HEADER};
use crate::policy::{AccessRequest, Action, Allowed, Denied, Policy};
use crate::store::{ObjectMeta, ObjectStore, PutOutcome, Recorded, StoreError};

/// Body limit for JSON objects (config, key records).
const SMALL_BODY_MAX: usize = 64 * 1024;
/// Most ids in one dedup query.
pub const MISSING_IDS_MAX: usize = 65_536;
/// How many missing chunk ids a refused commit names.
const MISSING_SHOWN: usize = 5;

/// A stored revocation record as read: trust domain, identity, revoked
/// (false: reinstated).
type RevocationRecord = (String, String, bool);

/// Everything a request handler needs; shared by all connections.
pub struct App {
    /// Swapped whole on reload, so a request sees one policy throughout.
    policy: RwLock<Arc<Policy>>,
    pub store: Arc<dyn ObjectStore>,
    pub audit: AuditLog,
    pub checker: Arc<dyn KeyChecker>,
    /// (retention, slack) in seconds.
    pub retention: (u64, u64),
    pub commit_max_bytes: usize,
    /// Key records known to exist, so chunk uploads need no HEAD for them.
    known_keys: Mutex<HashSet<(RepoName, KeyId)>>,
    pub mfa: MfaVerifier,
    /// Identities an admin revoked (trust domain, name); loaded from the store.
    pub(crate) revoked: RwLock<HashSet<(String, String)>>,
    /// Revocation objects already read (they are write-once), so polling
    /// the store reads only new ones.
    revocations_read: Mutex<std::collections::HashMap<String, Option<RevocationRecord>>>,
    /// Repository policies, swapped whole on reload.
    repo_policies: RwLock<Arc<crate::governance::RepoPolicies>>,
    /// Lockdown: only reads, and the admin call that lifts it.
    pub(crate) lockdown: std::sync::atomic::AtomicBool,
    /// Asks the server loop to reload the configuration file.
    pub(crate) reload: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), String>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub watch: Arc<crate::detect::Watch>,
    /// Agents' certificate expiries, for `assess`.
    pub client_certs: crate::clientcerts::ClientCerts,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Policy,
        store: Arc<dyn ObjectStore>,
        audit: AuditLog,
        checker: Arc<dyn KeyChecker>,
        retention: (u64, u64),
        commit_max_bytes: usize,
        mfa: MfaVerifier,
        reload: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<(), String>>>,
        metrics: Arc<crate::metrics::Metrics>,
        watch: Arc<crate::detect::Watch>,
        client_certs: crate::clientcerts::ClientCerts,
    ) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            store,
            audit,
            checker,
            retention,
            commit_max_bytes,
            known_keys: Mutex::default(),
            mfa,
            revoked: RwLock::default(),
            revocations_read: Mutex::default(),
            lockdown: Default::default(),
            repo_policies: RwLock::new(Arc::new(crate::governance::RepoPolicies::new(&[], None, None).expect("empty"))),
            reload,
            metrics,
            watch,
            client_certs,
        }
    }

    /// Loads the revocations stored by admins (on any proxy), so they
    /// survive restarts and reach every proxy; objects read before are not
    /// read again.
    pub async fn load_revocations(&self) -> Result<usize, StoreError> {
        let mut keys = self.store.list(crate::admin::REVOCATIONS).await?;
        keys.extend(self.store.list(crate::admin::IDENTITY_SWITCHES).await?);
        let unread: Vec<String> = {
            let read = self.revocations_read.lock().expect("not poisoned");
            keys.iter().filter(|k| !read.contains_key(*k)).cloned().collect()
        };
        for key in unread {
            let Some(bytes) = self.store.get(&key).await? else { continue };
            let parsed = match serde_json::from_slice::<crate::admin::Revocation>(&bytes) {
                Ok(r) => Some((r.trust_domain, r.identity, r.revoked)),
                Err(e) => {
                    tracing::error!("ignoring unreadable revocation {key}: {e}");
                    None
                }
            };
            self.revocations_read.lock().expect("not poisoned").insert(key, parsed);
        }
        // The newest record of each identity decides; names sort by time,
        // and a record from before switches (no time in its name) is oldest.
        let loaded: HashSet<(String, String)> = {
            let read = self.revocations_read.lock().expect("not poisoned");
            let mut newest: std::collections::HashMap<(String, String), (&str, bool)> = Default::default();
            for key in &keys {
                let Some(Some((domain, name, revoked))) = read.get(key) else { continue };
                let order = key
                    .strip_prefix(crate::admin::IDENTITY_SWITCHES)
                    .and_then(|rest| rest.split_once('/'))
                    .map_or("", |(_, n)| n);
                let slot = newest.entry((domain.clone(), name.clone())).or_insert((order, *revoked));
                if order >= slot.0 {
                    *slot = (order, *revoked);
                }
            }
            newest.into_iter().filter(|(_, (_, revoked))| *revoked).map(|(who, _)| who).collect()
        };
        let n = loaded.len();
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

    fn is_revoked(&self, id: &Identity) -> bool {
        self.revoked.read().expect("not poisoned").contains(&(id.domain().to_string(), id.name().to_string()))
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("not poisoned").clone()
    }

    pub fn repo_policies(&self) -> Arc<crate::governance::RepoPolicies> {
        self.repo_policies.read().expect("not poisoned").clone()
    }

    pub fn set_repo_policies(&self, p: crate::governance::RepoPolicies) {
        *self.repo_policies.write().expect("not poisoned") = Arc::new(p);
    }

    /// (required, until) for an object of `repo` written now: the snapshot
    /// needs it locked until `required`; new locks go to `until` (slack added).
    pub fn retention_for(&self, repo: &RepoName) -> (u64, u64) {
        let retention = self.repo_policies().retention_days(repo).map_or(self.retention.0, |d| u64::from(d) * 86_400);
        let required = crate::unix_now() + retention;
        (required, required + self.retention.1)
    }

    /// Replaces the policy atomically: requests already authorized finish
    /// under the old one, new ones see the new one.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().expect("not poisoned") = Arc::new(policy);
    }
}

/// The caller of a connection: who (if the certificate named anyone) and from where.
#[derive(Debug)]
pub struct Caller {
    pub identity: Option<Identity>,
    pub peer: SocketAddr,
    /// Set once a TOTP code was accepted on this connection: rules that ask
    /// for MFA are satisfied for the connection's life.
    pub mfa_verified: std::sync::atomic::AtomicBool,
}

impl Caller {
    pub fn new(identity: Option<Identity>, peer: SocketAddr) -> Self {
        Self { identity, peer, mfa_verified: Default::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Denied(#[from] Denied),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotInitialised(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    MediaType(String),
    #[error("method not allowed")]
    Method,
    #[error("{0}")]
    KeyRefused(String),
    #[error("store error")]
    Store(#[from] StoreError),
    #[error("audit log unavailable; request not acknowledged")]
    Audit,
    #[error("{0}")]
    Mfa(#[from] MfaError),
    #[error("too many bytes of this client's waiting in the proxy; try again")]
    Buffered,
}

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str, Outcome) {
        use ApiError::*;
        match self {
            Denied(_) => (StatusCode::FORBIDDEN, "denied", Outcome::Denied),
            KeyRefused(_) => (StatusCode::FORBIDDEN, "key-refused", Outcome::Denied),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", Outcome::NotFound),
            NotInitialised(_) => (StatusCode::NOT_FOUND, "not-initialised", Outcome::NotFound),
            Invalid(_) => (StatusCode::BAD_REQUEST, "invalid", Outcome::Invalid),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", Outcome::Conflict),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large", Outcome::Invalid),
            MediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "media-type", Outcome::Invalid),
            Method => (StatusCode::METHOD_NOT_ALLOWED, "method", Outcome::Invalid),
            Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store", Outcome::Error),
            Audit => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", Outcome::Error),
            Mfa(MfaError::Missing) => (StatusCode::UNAUTHORIZED, "mfa-required", Outcome::Denied),
            // Not 429: a client must not retry a locked-out code by itself.
            Mfa(MfaError::LockedOut { .. }) => (StatusCode::UNAUTHORIZED, "mfa-locked", Outcome::Denied),
            Mfa(MfaError::Store(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "store", Outcome::Error),
            Mfa(_) => (StatusCode::UNAUTHORIZED, "mfa-failed", Outcome::Denied),
            Buffered => (StatusCode::SERVICE_UNAVAILABLE, "limit", Outcome::Denied),
        }
    }
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::Invalid(e.to_string())
}

/// A parsed request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub action: Action,
    pub repo: Option<RepoName>,
    /// The object id segment, still to be parsed by the handler's id type.
    pub object: Option<String>,
}

/// Maps method and path to an action. Repository names are parsed here, so
/// a bad name (`..`, `%2e`, empty segments, Unicode) never reaches a store.
/// The layout is read from the right: the last one or two segments name the
/// object, everything before them is the repository.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let rest = path.strip_prefix("/v1/").ok_or_else(|| ApiError::NotFound(format!("no such endpoint {path}")))?;
    let segs: Vec<&str> = rest.split('/').collect();
    let not_found = || ApiError::NotFound(format!("no such endpoint {path}"));
    let repo_of = |n: usize| -> Result<Option<RepoName>, ApiError> {
        if n == 0 {
            return Err(not_found());
        }
        segs[1..1 + n].join("/").parse().map(Some).map_err(invalid)
    };
    let pick =
        |pairs: &[(Method, Action)]| pairs.iter().find(|(m, _)| m == method).map(|(_, a)| *a).ok_or(ApiError::Method);
    let global = match segs.as_slice() {
        ["whoami"] => Some(pick(&[(Method::GET, Action::Whoami)])?),
        ["admin", "revoke"] => Some(pick(&[(Method::POST, Action::AdminRevoke)])?),
        ["admin", "reload"] => Some(pick(&[(Method::POST, Action::AdminReload)])?),
        ["admin", "hold"] => Some(pick(&[(Method::POST, Action::AdminHold)])?),
        ["admin", "lockdown"] => Some(pick(&[(Method::POST, Action::AdminLockdown)])?),
        ["admin", "expire"] => Some(pick(&[(Method::POST, Action::AdminExpire)])?),
        _ => None,
    };
    if let Some(action) = global {
        return Ok(Route { action, repo: None, object: None });
    }
    if segs.first() != Some(&"repos") || segs.len() < 3 {
        return Err(not_found());
    }
    let n = segs.len();
    let (last, second) = (segs[n - 1], segs[n - 2]);
    let (action, repo, object) = match (second, last) {
        (_, "config") => {
            (pick(&[(Method::GET, Action::GetConfig), (Method::PUT, Action::PutConfig)])?, repo_of(n - 2)?, None)
        }
        (_, "epochs") => (pick(&[(Method::GET, Action::ListEpochs)])?, repo_of(n - 2)?, None),
        ("epochs", id) => (pick(&[(Method::PUT, Action::PutEpoch)])?, repo_of(n - 3)?, Some(id)),
        (_, "snapshots") => {
            (pick(&[(Method::GET, Action::ListSnapshots), (Method::POST, Action::Commit)])?, repo_of(n - 2)?, None)
        }
        ("chunks", "missing") => (pick(&[(Method::POST, Action::Missing)])?, repo_of(n - 3)?, None),
        ("keys", id) => {
            (pick(&[(Method::GET, Action::GetKey), (Method::PUT, Action::PutKey)])?, repo_of(n - 3)?, Some(id))
        }
        ("chunks", id) => {
            (pick(&[(Method::GET, Action::GetChunk), (Method::PUT, Action::PutChunk)])?, repo_of(n - 3)?, Some(id))
        }
        ("snapshots", id) => (pick(&[(Method::GET, Action::GetSnapshot)])?, repo_of(n - 3)?, Some(id)),
        _ => return Err(not_found()),
    };
    Ok(Route { action, repo, object: object.map(str::to_string) })
}

/// Store keys of a repository's objects.
pub mod keys {
    use super::*;

    pub fn config(repo: &RepoName) -> String {
        format!("{repo}/config")
    }
    pub fn key(repo: &RepoName, id: &KeyId) -> String {
        format!("{repo}/keys/{id}")
    }
    pub fn chunk(repo: &RepoName, id: &ChunkId) -> String {
        let hex = id.to_hex();
        format!("{repo}/chunks/{}/{hex}", &hex[..2])
    }
    pub fn snapshot(repo: &RepoName, id: &SnapshotId) -> String {
        format!("{repo}/snapshots/{id}")
    }
    pub fn index(repo: &RepoName, id: &SnapshotId) -> String {
        format!("{repo}/index/{id}")
    }
    pub fn epoch(repo: &RepoName, id: &KeyId) -> String {
        format!("{repo}/epochs/{id}")
    }
}

/// A successful answer: status, body, and the byte count for the audit event.
pub(crate) struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
}

impl Reply {
    pub(crate) fn new(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Self {
        Self { status, body: body.into(), content_type }
    }
    pub(crate) fn json(status: StatusCode, v: &impl serde::Serialize) -> Self {
        Self::new(status, serde_json::to_vec(v).expect("API types serialise"), "application/json")
    }
    fn bytes(body: Bytes) -> Self {
        Self::new(StatusCode::OK, body, "application/octet-stream")
    }
    pub(crate) fn empty(status: StatusCode) -> Self {
        Self::new(status, Bytes::new(), "application/octet-stream")
    }
    fn stored(outcome: PutOutcome) -> Self {
        Self::empty(match outcome {
            PutOutcome::Created => StatusCode::CREATED,
            PutOutcome::Exists => StatusCode::OK,
        })
    }
}

/// The media type of an action's body: JSON for admin calls, the binary
/// formats of SPEC.md for the rest.
pub fn body_type(action: Action) -> &'static str {
    if action.admin() {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

fn body_limit(app: &App, action: Action) -> usize {
    match action {
        Action::PutConfig | Action::PutKey | Action::PutEpoch => SMALL_BODY_MAX,
        Action::Missing => MISSING_IDS_MAX * ChunkId::LEN,
        Action::PutChunk => ENVELOPE_MAX,
        Action::Commit => app.commit_max_bytes,
        a if a.admin() => SMALL_BODY_MAX,
        _ => 0,
    }
}

/// Handles one request from start to finish; never fails, never panics on
/// input: every error becomes a response and an audit event.
pub async fn handle<B>(app: Arc<App>, caller: Arc<Caller>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut draft = Draft {
        identity: caller.identity.as_ref().map(|i| i.name().to_string()),
        trust_domain: caller.identity.as_ref().map(|i| i.domain().to_string()),
        peer: caller.peer.to_string(),
        action: "unknown",
        ..Default::default()
    };
    let routed = route(req.method(), req.uri().path());
    let mut mutating = false;
    if let Ok(r) = &routed {
        draft.action = r.action.name();
        draft.repo = r.repo.as_ref().map(ToString::to_string);
        draft.object = r.object.clone();
        mutating = r.action.mutating();
    }
    let result = match routed {
        Ok(route) => serve(&app, &caller, route, req, &mut draft).await,
        Err(e) => Err(e),
    };
    // Only a change needs its event on disk before the answer.
    let mutating = mutating && result.is_ok();
    if let Ok(reply) = &result {
        if draft.action == Action::PutChunk.name() && reply.status == StatusCode::CREATED {
            app.metrics.bytes_in.inc_by(draft.bytes);
        }
    }
    let (status, reply) = match result {
        Ok(reply) => {
            draft.outcome = Some(Outcome::Ok);
            draft.bytes = draft.bytes.max(reply.body.len() as u64);
            (reply.status, Ok(reply))
        }
        Err(e) => {
            let (status, code, outcome) = e.status();
            if let ApiError::Store(inner) = &e {
                tracing::error!(action = draft.action, "store error: {inner}");
                app.watch.store_error(&inner.to_string()).await;
            }
            draft.outcome = Some(outcome);
            draft.reason = Some(e.to_string());
            (status, Err((code, e.to_string())))
        }
    };
    let outcome = draft.outcome.unwrap_or(Outcome::Ok);
    app.metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            action: draft.action.to_string(),
            outcome: outcome.as_str().to_string(),
            trust_domain: draft.trust_domain.clone().unwrap_or_default(),
        })
        .inc();
    if outcome == Outcome::Denied {
        app.metrics.refused("denied");
        let who = draft.identity.clone().unwrap_or_else(|| draft.peer.clone());
        app.watch.denied(&who).await;
    }
    if app.audit.record(draft, mutating).await.is_err() && mutating {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &ApiError::Audit.to_string());
    }
    match reply {
        Ok(r) => Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, r.content_type)
            .body(Full::new(r.body))
            .expect("valid response"),
        Err((code, message)) => error_response(status, code, &message),
    }
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = ErrorBody { code: code.into(), message: message.into() };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(serde_json::to_vec(&body).expect("serialises").into()))
        .expect("valid response")
}

async fn serve<B>(
    app: &App,
    caller: &Caller,
    route: Route,
    req: Request<B>,
    draft: &mut Draft,
) -> Result<Reply, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let identity = caller.identity.as_ref().ok_or_else(|| Denied("the client certificate names no identity".into()))?;
    let policy = app.policy();
    let request = AccessRequest { identity, action: route.action, repo: route.repo.as_ref(), source: caller.peer.ip() };
    if app.is_revoked(identity) {
        return Err(Denied(format!("{identity} was revoked by an administrator")).into());
    }
    let allowed = policy.decide(&request)?;
    if route.action.mutating() && !route.action.admin() {
        if let Some(repo) = &route.repo {
            app.repo_policies().for_repo(repo).map_err(Denied)?;
        }
    }
    if app.lockdown.load(std::sync::atomic::Ordering::Acquire) && !crate::admin::allowed_in_lockdown(route.action) {
        crate::admin::lockdown_refused(app, identity, route.action).await;
        return Err(Denied(format!("the proxy is in lockdown: {} is refused", route.action.name())).into());
    }
    let code = req.headers().get(TOTP_HEADER).and_then(|v| v.to_str().ok());
    let now = crate::unix_now();
    if route.action.admin() {
        // Every admin call needs its own fresh code.
        verify_mfa(app, identity, code, now).await?;
    } else if allowed.mfa
        && route.action != Action::Whoami
        && !caller.mfa_verified.load(std::sync::atomic::Ordering::Acquire)
    {
        verify_mfa(app, identity, code, now).await?;
        caller.mfa_verified.store(true, std::sync::atomic::Ordering::Release);
    }

    let digest = req.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let limit = body_limit(app, route.action);
    if limit > 0 {
        let expected = body_type(route.action);
        let given = req.headers().get(http::header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()));
        let essence = given.as_deref().map(|t| t.split(';').next().unwrap_or_default().trim());
        if !essence.is_some_and(|t| t.eq_ignore_ascii_case(expected)) {
            let given = given.map_or("no Content-Type".into(), |t| format!("{t:?}"));
            return Err(ApiError::MediaType(format!("a {} body is {expected}, not {given}", route.action.name())));
        }
    }
    // The body is read whole before it is handled: its bytes count against
    // the identity's buffer (and everyone's) until the handler is done.
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map_or(limit, |n| n.min(limit));
    // Small bodies (configs, key records, admin calls) are not counted, so a
    // budget filled by others never refuses an admin's lockdown or revoke.
    let _buffered = match req.extensions().get::<crate::limit::Budget>() {
        Some(budget) if declared > SMALL_BODY_MAX => Some(budget.take(declared).ok_or(ApiError::Buffered)?),
        _ => None,
    };
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => ApiError::TooLarge(limit),
            None => invalid(format!("reading the request body: {e}")),
        })?
        .to_bytes();
    draft.bytes = body.len() as u64;

    let repo = route.repo;
    let obj = route.object.as_deref().unwrap_or_default();
    match (route.action, repo) {
        (Action::Whoami, _) => {
            let (roles, repos, mfa) = policy.grants(identity);
            let roles = roles.iter().map(|r| r.name().to_string()).collect();
            let whoami = Whoami {
                identity: identity.name().to_string(),
                trust_domain: identity.domain().to_string(),
                roles,
                repos,
                mfa,
            };
            Ok(Reply::json(StatusCode::OK, &whoami))
        }
        (Action::PutConfig, Some(repo)) => put_config(app, &allowed, &repo, body).await,
        (Action::GetConfig, Some(repo)) => match app.store.get(&keys::config(&repo)).await? {
            Some(b) => Ok(Reply::bytes(b)),
            None => Err(ApiError::NotInitialised(format!("repository {repo} is not initialised"))),
        },
        (Action::PutKey, Some(repo)) => put_key(app, &allowed, &repo, obj.parse().map_err(invalid)?, body).await,
        (Action::GetKey, Some(repo)) => get(app, keys::key(&repo, &obj.parse().map_err(invalid)?)).await,
        (Action::Missing, Some(repo)) => missing(app, &repo, &body).await,
        (Action::PutChunk, Some(repo)) => put_chunk(app, &repo, obj.parse().map_err(invalid)?, body, digest).await,
        (Action::GetChunk, Some(repo)) => get(app, keys::chunk(&repo, &obj.parse().map_err(invalid)?)).await,
        (Action::Commit, Some(repo)) => commit(app, draft, &repo, &body).await,
        (Action::ListSnapshots, Some(repo)) => list_snapshots(app, &repo).await,
        (Action::PutEpoch, Some(repo)) => put_epoch(app, &allowed, &repo, obj.parse().map_err(invalid)?, body).await,
        (Action::ListEpochs, Some(repo)) => list_epochs(app, &repo).await,
        (Action::GetSnapshot, Some(repo)) => get(app, keys::snapshot(&repo, &obj.parse().map_err(invalid)?)).await,
        (Action::AdminRevoke, _) => crate::admin::revoke(app, identity, draft, &body).await,
        (Action::AdminReload, _) => crate::admin::reload(app, draft).await,
        (Action::AdminHold, _) => crate::admin::hold(app, identity, caller.peer.ip(), draft, &body).await,
        (Action::AdminLockdown, _) => crate::admin::lockdown(app, identity, draft, &body).await,
        (Action::AdminExpire, _) => crate::admin::expire(app, identity, caller.peer.ip(), draft, &body).await,
        (_, None) => unreachable!("route() gives every repository action a repository"),
    }
}

/// Checks a TOTP code; a wrong code that locks the identity out raises a
/// critical alert: someone holds its certificate and is guessing.
async fn verify_mfa(app: &App, identity: &Identity, code: Option<&str>, now: u64) -> Result<(), ApiError> {
    let result = app.mfa.verify(identity, code, now).await;
    if let Err(MfaError::LockedOut { until, failures, new: true }) = &result {
        let msg = format!(
            "{failures} wrong TOTP codes in a row from {identity}: its codes are refused until {until}; \
             if nobody you know mistyped them, its certificate is in other hands (revoke it)"
        );
        let dedup = Some((format!("mfa-lockout:{}:{}", identity.domain(), identity.name()), crate::detect::QUIET_SECS));
        app.watch
            .alerts
            .raise("mfa-lockout", crate::alerts::Severity::Critical, None, Some(identity.to_string()), msg, dedup)
            .await;
    }
    Ok(result?)
}

async fn get(app: &App, key: String) -> Result<Reply, ApiError> {
    match app.store.get(&key).await? {
        Some(b) => Ok(Reply::bytes(b)),
        None => Err(ApiError::NotFound(format!("no object {key}"))),
    }
}

impl App {
    /// The retain-until of an object written now.
    pub fn new_retain_until(&self) -> u64 {
        crate::unix_now() + self.retention.0 + self.retention.1
    }

    /// Writes a small object once; a repeat of the same bytes is a success
    /// (so retries are safe), different bytes are a conflict.
    async fn put_once(&self, repo: &RepoName, key: &str, body: Bytes, what: &str) -> Result<Reply, ApiError> {
        let outcome = self.store.put_new(key, body.clone(), self.retention_for(repo).1).await?;
        if outcome == PutOutcome::Exists && self.store.get(key).await?.as_ref() != Some(&body) {
            return Err(ApiError::Conflict(format!("{what} already exists with other contents")));
        }
        Ok(Reply::stored(outcome))
    }

    async fn key_exists(&self, repo: &RepoName, id: KeyId) -> Result<bool, ApiError> {
        let cached = (repo.clone(), id);
        if self.known_keys.lock().expect("not poisoned").contains(&cached) {
            return Ok(true);
        }
        let exists = self.store.head(&keys::key(repo, &id)).await?.is_some();
        if exists {
            self.known_keys.lock().expect("not poisoned").insert(cached);
        }
        Ok(exists)
    }

    /// Drops a deleted key record from the cache `key_exists` keeps. (Other
    /// proxies may still believe in it; a commit HEADs its keys, so nothing
    /// can be committed under it.)
    pub(crate) fn forget_key(&self, repo: &RepoName, id: KeyId) {
        self.known_keys.lock().expect("not poisoned").remove(&(repo.clone(), id));
    }
}

/// Checks a key record against the identity's KEK allowlist and the
/// deployment's key checker.
async fn check_key(app: &App, allowed: &Allowed, record: &KeyRecord, repo: &RepoName) -> Result<(), ApiError> {
    app.repo_policies().check_kek(repo, &record.kek).map_err(ApiError::KeyRefused)?;
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
                let dedup = Some((format!("kek:{}", record.kek), crate::detect::QUIET_SECS));
                app.watch
                    .alerts
                    .raise(
                        "kek",
                        crate::alerts::Severity::High,
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

async fn put_config(app: &App, allowed: &Allowed, repo: &RepoName, body: Bytes) -> Result<Reply, ApiError> {
    let config = RepoConfig::decode(&body).map_err(invalid)?;
    if config.repo != *repo {
        return Err(invalid(format!("the config names repository {}", config.repo)));
    }
    check_key(app, allowed, &config.id_key, repo).await?;
    let reply = app.put_once(repo, &keys::config(repo), body, "repository config").await;
    match reply {
        Err(ApiError::Conflict(_)) => Err(ApiError::Conflict(format!("repository {repo} is already initialised"))),
        other => other,
    }
}

async fn put_key(app: &App, allowed: &Allowed, repo: &RepoName, id: KeyId, body: Bytes) -> Result<Reply, ApiError> {
    let record = KeyRecord::decode(&body).map_err(invalid)?;
    if record.key_id != id || record.purpose != Purpose::Data {
        return Err(invalid("the record is not the data key named in the path"));
    }
    check_key(app, allowed, &record, repo).await?;
    let reply = app.put_once(repo, &keys::key(repo, &id), body, "key record").await?;
    app.known_keys.lock().expect("not poisoned").insert((repo.clone(), id));
    Ok(reply)
}

/// How far an epoch's `created` may lie from the proxy's clock (ms).
pub const EPOCH_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

async fn read_epochs(app: &App, repo: &RepoName) -> Result<Vec<coffer_proto::repo::Epoch>, ApiError> {
    let mut epochs = Vec::new();
    for key in app.store.list(&format!("{repo}/epochs/")).await? {
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
async fn put_epoch(app: &App, allowed: &Allowed, repo: &RepoName, id: KeyId, body: Bytes) -> Result<Reply, ApiError> {
    let epoch = coffer_proto::repo::Epoch::decode(&body, repo).map_err(invalid)?;
    if epoch.key.key_id != id {
        return Err(invalid("the epoch's key is not the one named in the path"));
    }
    if app.store.head(&keys::config(repo)).await?.is_none() {
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
    app.put_once(repo, &keys::epoch(repo, &id), body, "key epoch").await
}

/// Every epoch of the repository, oldest first, as a JSON array. An epoch
/// dated into the future (stored before the proxy checked dates) sorts
/// first, so it can never stay the one new backups use.
async fn list_epochs(app: &App, repo: &RepoName) -> Result<Reply, ApiError> {
    let mut epochs = read_epochs(app, repo).await?;
    let horizon = crate::unix_now_ms() + EPOCH_CLOCK_SKEW_MS;
    for e in epochs.iter().filter(|e| e.created > horizon) {
        tracing::warn!(%repo, key_id = %e.key.key_id, created = e.created, "an epoch is dated into the future: it sorts first");
    }
    epochs.sort_by_key(|e| (e.created <= horizon, e.created, e.key.key_id));
    Ok(Reply::json(StatusCode::OK, &epochs))
}

async fn missing(app: &App, repo: &RepoName, body: &[u8]) -> Result<Reply, ApiError> {
    let ids = decode_ids(body).map_err(invalid)?;
    let mut absent = Vec::new();
    for id in ids {
        if app.store.head(&keys::chunk(repo, &id)).await?.is_none() {
            absent.push(id);
        }
    }
    Ok(Reply::new(StatusCode::OK, encode_ids(&absent), "application/octet-stream"))
}

async fn put_chunk(
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
    let outcome = app.store.put_object(&keys::chunk(repo, &id), body, until, recorded).await?;
    Ok(Reply::stored(outcome))
}

async fn commit(app: &App, draft: &mut Draft, repo: &RepoName, body: &[u8]) -> Result<Reply, ApiError> {
    let req = CommitRequest::decode(body).map_err(invalid)?;
    // The snapshot is named in the body, not the path: its event names it,
    // whatever the outcome.
    draft.object = Some(req.snapshot.to_string());
    let header = envelope::parse_header(&req.root).map_err(invalid)?;
    if header.kind != Kind::SnapshotRoot {
        return Err(invalid("the root is not a snapshot root envelope"));
    }
    if !app.key_exists(repo, header.key_id).await? {
        return Err(ApiError::Conflict(format!("key {} is not stored in {repo}", header.key_id)));
    }
    let root_key = keys::snapshot(repo, &req.snapshot);
    if let Some(existing) = app.store.get(&root_key).await? {
        if existing.as_ref() == req.root.as_slice() {
            return snapshot_info(app, repo, req.snapshot).await.map(|i| Reply::json(StatusCode::OK, &i));
        }
        return Err(ApiError::Conflict(format!("snapshot {} already exists", req.snapshot)));
    }

    let now = crate::unix_now();
    let (required, until) = app.retention_for(repo);
    let mut present = Vec::with_capacity(req.chunks.len());
    let mut absent = Vec::new();
    let mut seen = HashSet::with_capacity(req.chunks.len());
    for id in &req.chunks {
        if !seen.insert(*id) {
            return Err(invalid(format!("chunk {id} is listed twice")));
        }
        match app.store.head(&keys::chunk(repo, id)).await? {
            Some(meta) => present.push((*id, meta)),
            None => absent.push(*id),
        }
    }
    if !absent.is_empty() {
        let shown: Vec<String> = absent.iter().take(MISSING_SHOWN).map(ToString::to_string).collect();
        return Err(ApiError::Conflict(format!(
            "{} referenced chunks are not stored (first: {}); nothing was committed",
            absent.len(),
            shown.join(", ")
        )));
    }
    let referenced_bytes = present.iter().fold(0u64, |sum, (_, meta)| sum.saturating_add(meta.size));
    let referenced = present.len() as u64;
    req.stats.check(referenced, referenced_bytes).map_err(invalid)?;
    let mut entries = Vec::with_capacity(present.len());
    let mut extended = 0u64;
    let mut needed_keys = BTreeSet::from([header.key_id]);
    for (id, meta) in present {
        needed_keys.insert(sealing_key(app, repo, &id, &meta).await?);
        let mut retain_until = meta.retain_until.unwrap_or(u64::MAX);
        if retain_until < required {
            app.store.extend_retention(&keys::chunk(repo, &id), until).await?;
            retain_until = until;
            extended += 1;
        }
        entries.push(IndexEntry { id, size: meta.size.min(u64::from(u32::MAX)) as u32, retain_until });
    }
    // What the snapshot needs besides its chunks: the data keys that sealed
    // them and its root, which must still exist (expiry may have removed a
    // key no snapshot used), and the config and chunk-id key epochs, which
    // every snapshot of the repository may need.
    for key_id in &needed_keys {
        let key = keys::key(repo, key_id);
        let meta = app.store.head(&key).await?.ok_or_else(|| {
            ApiError::Conflict(format!("key {key_id} is not stored in {repo}; nothing was committed"))
        })?;
        if meta.retain_until.is_some_and(|t| t < required) {
            app.store.extend_retention(&key, until).await?;
            extended += 1;
        }
    }
    let mut dependencies = vec![keys::config(repo)];
    dependencies.extend(app.store.list(&format!("{repo}/epochs/")).await?);
    for key in dependencies {
        if let Some(meta) = app.store.head(&key).await? {
            if meta.retain_until.is_some_and(|t| t < required) {
                app.store.extend_retention(&key, until).await?;
                extended += 1;
            }
        }
    }

    if extended > 0 {
        let event = Draft {
            action: "extend-locks",
            bytes: extended,
            outcome: Some(Outcome::Ok),
            reason: Some(format!("{extended} objects locked until {until} for this snapshot")),
            ..draft.clone()
        };
        app.audit.record(event, true).await.map_err(|_| ApiError::Audit)?;
    }
    let index = IndexSegment {
        snapshot: req.snapshot,
        committed: now,
        retain_until: until,
        stats: req.stats,
        keys: Some(needed_keys.into_iter().collect()),
        chunks: entries,
    };
    // A crash between these two writes leaves an index without a root: no
    // snapshot. A retried commit of the same id finds the index and goes on.
    app.store.put_new(&keys::index(repo, &req.snapshot), index.encode().into(), until).await?;
    match app.store.put_new(&root_key, Bytes::copy_from_slice(&req.root), until).await? {
        PutOutcome::Created => {}
        PutOutcome::Exists => return Err(ApiError::Conflict(format!("snapshot {} already exists", req.snapshot))),
    }
    let m = &app.metrics;
    let label = |kind: &str| crate::metrics::KindLabel { kind: kind.to_string() };
    m.chunks.get_or_create(&label("new")).inc_by(req.stats.chunks_new);
    // Distinct chunks the snapshot references that it did not upload.
    m.chunks.get_or_create(&label("dedup")).inc_by(referenced.saturating_sub(req.stats.chunks_new));
    m.lock_extensions.inc_by(extended);
    m.last_snapshot.get_or_create(&crate::metrics::RepoLabel { repo: repo.to_string() }).set(now as f64);
    let history = repo_history(app, repo, req.snapshot).await.unwrap_or_default();
    app.watch.committed(repo, &history, &req.stats, now).await;
    let info = SnapshotInfo { id: req.snapshot, committed: now, retain_until: until, stats: req.stats };
    Ok(Reply::json(StatusCode::CREATED, &info))
}

/// The data key that sealed a stored chunk: recorded beside it at upload,
/// or, for a chunk stored before keys were recorded, read from its header.
async fn sealing_key(app: &App, repo: &RepoName, id: &ChunkId, meta: &ObjectMeta) -> Result<KeyId, ApiError> {
    if let Some(k) = meta.sealed_by {
        return Ok(k);
    }
    let key = keys::chunk(repo, id);
    let body = app.store.get(&key).await?.ok_or_else(|| ApiError::Conflict(format!("chunk {id} vanished")))?;
    let header = envelope::parse_header(&body).map_err(|e| ApiError::Conflict(format!("chunk {id}: {e}")))?;
    Ok(header.key_id)
}

/// The stats of a repository's committed snapshots, oldest first, except
/// `skip` (the one being judged).
async fn repo_history(app: &App, repo: &RepoName, skip: SnapshotId) -> Result<Vec<SnapshotStats>, ApiError> {
    let prefix = format!("{repo}/snapshots/");
    let mut out = Vec::new();
    for key in app.store.list(&prefix).await? {
        let Ok(id) = key[prefix.len()..].parse::<SnapshotId>() else { continue };
        if id != skip {
            if let Ok(info) = snapshot_info(app, repo, id).await {
                out.push((info.committed, info.stats));
            }
        }
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

async fn snapshot_info(app: &App, repo: &RepoName, id: SnapshotId) -> Result<SnapshotInfo, ApiError> {
    let bytes = app
        .store
        .get(&keys::index(repo, &id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("snapshot {id} has no index segment")))?;
    let index = IndexSegment::decode(&bytes).map_err(|e| ApiError::Conflict(format!("index of {id}: {e}")))?;
    Ok(SnapshotInfo { id, committed: index.committed, retain_until: index.retain_until, stats: index.stats })
}

/// Every committed snapshot's id and stats, oldest first. One whose index
/// segment is missing or unreadable (damage in the store) is left out, not
/// allowed to hide the rest, and raises an alert.
async fn list_snapshots(app: &App, repo: &RepoName) -> Result<Reply, ApiError> {
    let prefix = format!("{repo}/snapshots/");
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    for key in app.store.list(&prefix).await? {
        // Only direct children with a well-formed id are snapshots.
        let Ok(id) = key[prefix.len()..].parse::<SnapshotId>() else {
            continue;
        };
        match snapshot_info(app, repo, id).await {
            Ok(info) => out.push(info),
            Err(e @ (ApiError::NotFound(_) | ApiError::Conflict(_))) => damaged.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if !damaged.is_empty() {
        let msg = format!(
            "{} snapshots of {repo} have a root but no readable index segment, and are left out of listings: {}",
            damaged.len(),
            damaged.join("; ")
        );
        tracing::error!("{msg}");
        let dedup = Some((format!("damaged:{repo}"), crate::detect::QUIET_SECS));
        app.watch
            .alerts
            .raise("damaged-snapshot", crate::alerts::Severity::High, Some(repo.to_string()), None, msg, dedup)
            .await;
    }
    out.sort_by_key(|s| (s.committed, s.id));
    Ok(Reply::json(StatusCode::OK, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |m: Method, p: &str| route(&m, p);
        let ok = r(Method::PUT, "/v1/repos/dev/db/chunks/abcd").unwrap();
        assert_eq!(
            (ok.action, ok.repo.unwrap().as_str(), ok.object.unwrap().as_str()),
            (Action::PutChunk, "dev/db", "abcd")
        );
        assert_eq!(r(Method::POST, "/v1/repos/a/b/c/chunks/missing").unwrap().repo.unwrap().as_str(), "a/b/c");
        assert_eq!(r(Method::GET, "/v1/repos/x/config").unwrap().action, Action::GetConfig);
        assert_eq!(r(Method::POST, "/v1/repos/x/snapshots").unwrap().action, Action::Commit);
        assert_eq!(r(Method::GET, "/v1/whoami").unwrap().action, Action::Whoami);
        for bad in [
            "/v1/repos/../config",
            "/v1/repos/%2e%2e/config",
            "/v1/repos/a//b/config",
            "/v1/repos//config",
            "/v1/repos/A/config",
            "/v1/repos/a/b/c/d/e/config",
            "/v1/repos/%C3%A9/config",
        ] {
            assert!(matches!(r(Method::GET, bad), Err(ApiError::Invalid(_))), "{bad}");
        }
        assert!(matches!(r(Method::GET, "/v1/repos/config"), Err(ApiError::NotFound(_))));
        assert!(matches!(r(Method::GET, "/v2/whoami"), Err(ApiError::NotFound(_))));
        assert!(matches!(r(Method::DELETE, "/v1/repos/a/chunks/ab"), Err(ApiError::Method)));
    }
}
