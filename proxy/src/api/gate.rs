//! Whether a request may go on, decided before its body is read, in this
//! order: a named identity, not revoked by an administrator, allowed by
//! the policy, not refused by its repository's own policy, not refused by
//! lockdown, and with a valid TOTP code where one is needed.

use std::sync::atomic::Ordering;

use coffer_proto::api::TOTP_HEADER;
use coffer_proto::endpoint::Route;
use http::HeaderMap;

use super::reply::ApiError;
use super::Caller;
use crate::access::identity::Identity;
use crate::access::mfa::MfaError;
use crate::access::policy::{AccessRequest, Action, Allowed, Denied, Policy};
use crate::access::switches::allowed_in_lockdown;
use crate::app::App;

/// Who is asking, and what the policy granted them for this request.
pub(super) struct Admitted<'a> {
    pub identity: &'a Identity,
    pub policy: std::sync::Arc<Policy>,
    pub allowed: Allowed,
}

/// Lets the request through, or says why not.
pub(super) async fn admit<'a>(
    app: &App,
    caller: &'a Caller,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Admitted<'a>, ApiError> {
    let identity = caller.identity.as_ref().ok_or_else(|| Denied("the client certificate names no identity".into()))?;
    let policy = app.policy();
    let request = AccessRequest { identity, action: route.action, repo: route.repo.as_ref(), source: caller.peer.ip() };
    if app.is_revoked(identity) {
        return Err(Denied(format!("{identity} was revoked by an administrator")).into());
    }
    let allowed = policy.decide(&request)?;
    if route.action.mutating() && !route.action.admin() {
        if let Some(repo) = &route.repo {
            app.repo_policies().for_repo(repo)?;
        }
    }
    if app.lockdown.load(Ordering::Acquire) && !allowed_in_lockdown(route.action) {
        app.lockdown_refused(identity, route.action).await;
        return Err(Denied(format!("the proxy is in lockdown: {} is refused", route.action.name())).into());
    }
    let code = headers.get(TOTP_HEADER).and_then(|v| v.to_str().ok());
    let now = crate::unix_now();
    if route.action.admin() {
        // Every admin call needs its own fresh code.
        verify_mfa(app, identity, code, now).await?;
    } else if allowed.mfa && route.action != Action::Whoami && !caller.mfa_verified.load(Ordering::Acquire) {
        verify_mfa(app, identity, code, now).await?;
        caller.mfa_verified.store(true, Ordering::Release);
    }
    Ok(Admitted { identity, policy, allowed })
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
        let dedup = Some((
            format!("mfa-lockout:{}:{}", identity.domain(), identity.name()),
            crate::monitor::detect::QUIET_SECS,
        ));
        app.watch
            .alerts
            .raise(
                "mfa-lockout",
                crate::monitor::alerts::Severity::Critical,
                None,
                Some(identity.to_string()),
                msg,
                dedup,
            )
            .await;
    }
    Ok(result?)
}
