//! The `/v1` API: the request life cycle, and one file per resource.
//!
//! Every request goes the same way ([`handle`]): route (ids and repository
//! names parsed and validated before anything else, by
//! [`coffer_proto::endpoint::route`]), admit ([`gate`]), read the body within
//! the action's limit ([`body`]), dispatch to its handler, then count,
//! audit and answer. Failures are [`ApiError`]s, mapped to a status, an
//! error code and an audit outcome in exactly one place ([`reply`]).
//! Handlers ([`repo`], [`chunks`], [`snapshots`], [`admin`]) take the
//! [`App`] and what the stages decided; they import nothing from the
//! stages, so each can be called, and tested, on its own.

pub mod admin;
pub mod body;
pub mod chunks;
mod gate;
pub mod history;
pub mod packs;
pub mod reply;
pub mod repo;
pub mod snapshots;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::api::{Whoami, DIGEST_HEADER, ROOT_COPIES_HEADER};
use coffer_proto::endpoint::Route;
use coffer_proto::layout;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

pub use reply::{error_response, ApiError, Reply};

use crate::access::identity::Identity;
use crate::access::policy::{AccessRequest, Action};
use crate::app::App;
use crate::audit::{Draft, Outcome};

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
    let routed = coffer_proto::endpoint::route(req.method().as_str(), req.uri().path()).map_err(ApiError::from);
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
        .get_or_create(&crate::monitor::metrics::RequestLabels {
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

/// Admits the request, reads its body and runs its handler.
async fn serve<B>(
    app: &Arc<App>,
    caller: &Caller,
    route: Route,
    req: Request<B>,
    draft: &mut Draft,
) -> Result<Reply, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let admitted = gate::admit(app, caller, &route, req.headers()).await?;
    let (identity, allowed) = (admitted.identity, &admitted.allowed);
    let digest = req.headers().get(DIGEST_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let wants_roots = req.headers().get(ROOT_COPIES_HEADER).is_some_and(|v| v.as_bytes() == b"1");
    // The body is read whole before it is handled: its bytes count against
    // the identity's buffer (and everyone's) until the handler is done.
    let (body, _held) = body::read(app, route.action, req).await?.into_parts();
    draft.bytes = body.len() as u64;

    let repo = route.repo;
    let obj = route.object.as_deref().unwrap_or_default();
    let source = caller.peer.ip();
    match (route.action, repo) {
        (Action::Whoami, _) => Ok(whoami(&admitted.policy, identity)),
        (Action::PutConfig, Some(repo)) => repo::put_config(app, allowed, &repo, body).await,
        (Action::GetConfig, Some(repo)) => repo::get_config(app, &repo).await,
        (Action::PutKey, Some(repo)) => {
            repo::put_key(app, allowed, &repo, obj.parse().map_err(reply::invalid)?, body).await
        }
        (Action::GetKey, Some(repo)) => {
            Reply::object(app, layout::key(&repo, &obj.parse().map_err(reply::invalid)?)).await
        }
        (Action::Missing, Some(repo)) => chunks::missing(app, &repo, &app.uploader(identity), &body).await,
        (Action::PutChunk, Some(repo)) => {
            let id = obj.parse().map_err(reply::invalid)?;
            chunks::put_chunk(app, &repo, &app.uploader(identity), id, body, digest).await
        }
        (Action::GetChunk, Some(repo)) => {
            let (id, copy) = layout::chunk_of(obj).ok_or_else(|| reply::invalid(format!("not a chunk name: {obj}")))?;
            Reply::object(app, layout::chunk_at(&repo, &id, copy.as_ref())).await
        }
        (Action::ListCopies, Some(repo)) => chunks::list_copies(app, &repo, obj.parse().map_err(reply::invalid)?).await,
        (Action::Commit, Some(repo)) => snapshots::commit(app, draft, &repo, &app.uploader(identity), body).await,
        (Action::ListSnapshots, Some(repo)) => {
            // Root copies go only to a caller that may fetch roots and keys.
            let may = |action| {
                let request = AccessRequest { identity, action, repo: Some(&repo), source };
                admitted
                    .policy
                    .decide(&request)
                    .is_ok_and(|a| !a.mfa || caller.mfa_verified.load(std::sync::atomic::Ordering::Acquire))
            };
            let with_roots = wants_roots && may(Action::GetSnapshot) && may(Action::GetKey);
            history::list_snapshots(app, draft, &repo, with_roots).await
        }
        (Action::PutEpoch, Some(repo)) => {
            repo::put_epoch(app, allowed, &repo, obj.parse().map_err(reply::invalid)?, body).await
        }
        (Action::ListEpochs, Some(repo)) => repo::list_epochs(app, &repo).await,
        (Action::GetSnapshot, Some(repo)) => {
            Reply::object(app, layout::snapshot(&repo, &obj.parse().map_err(reply::invalid)?)).await
        }
        (Action::AdminRevoke, _) => admin::revoke(app, identity, draft, &body).await,
        (Action::AdminQuarantine, _) => admin::quarantine(app, identity, draft, &body).await,
        (Action::AdminReload, _) => admin::reload(app, draft).await,
        (Action::AdminHold, _) => admin::hold(app, identity, source, draft, &body).await,
        (Action::AdminLockdown, _) => admin::lockdown(app, identity, draft, &body).await,
        (Action::AdminExpire, _) => admin::expire(app, identity, source, draft, &body).await,
        (_, None) => unreachable!("route() gives every repository action a repository"),
    }
}

/// Who the caller is, and what the policy grants it.
fn whoami(policy: &crate::access::policy::Policy, identity: &Identity) -> Reply {
    let (roles, repos, mfa) = policy.grants(identity);
    let roles = roles.iter().map(|r| r.name().to_string()).collect();
    let whoami = Whoami {
        identity: identity.name().to_string(),
        trust_domain: identity.domain().to_string(),
        roles,
        repos,
        mfa,
    };
    Reply::json(StatusCode::OK, &whoami)
}
