//! Reading a request's body: of the action's media type, within its
//! limit, and counted against the identity's (and everyone's) buffer
//! budget while it is held.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use coffer_proto::endpoint::{MISSING_BODY_MAX, SMALL_BODY_MAX};
use coffer_proto::ENVELOPE_MAX;
use http::Request;
use http_body_util::{BodyExt as _, Limited};
use tokio::sync::Semaphore;

use super::reply::{invalid, ApiError};
use crate::access::policy::Action;
use crate::app::App;

/// The most bytes an action's body may have (0: it takes none).
fn limit(app: &App, action: Action) -> usize {
    match action {
        Action::PutConfig | Action::PutKey | Action::PutEpoch => SMALL_BODY_MAX,
        Action::Missing => MISSING_BODY_MAX,
        Action::PutChunk => ENVELOPE_MAX,
        Action::Commit => app.commit_max_bytes,
        a if a.admin() => SMALL_BODY_MAX,
        _ => 0,
    }
}

/// A body read whole, and its share of the buffer budget, given back when
/// dropped (once the handler is done with it).
pub(super) struct Body {
    pub bytes: Bytes,
    _held: Option<Buffered>,
}

impl Body {
    /// The bytes, and the share of the budget to keep while they are
    /// handled (a handler may let the bytes go earlier).
    pub(super) fn into_parts(self) -> (Bytes, Option<Buffered>) {
        (self.bytes, self._held)
    }
}

/// Reads the body of `req`, which asks for `action`.
pub(super) async fn read<B>(app: &App, action: Action, req: Request<B>) -> Result<Body, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = limit(app, action);
    if limit > 0 {
        let expected = action.body_type();
        let given = req.headers().get(http::header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()));
        let essence = given.as_deref().map(|t| t.split(';').next().unwrap_or_default().trim());
        if !essence.is_some_and(|t| t.eq_ignore_ascii_case(expected)) {
            let given = given.map_or("no Content-Type".into(), |t| format!("{t:?}"));
            return Err(ApiError::MediaType(format!("a {} body is {expected}, not {given}", action.name())));
        }
    }
    let length = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map(|n| n.min(limit));
    let declared = length.unwrap_or(limit);
    // Small bodies (configs, key records, admin calls) are not counted, so a
    // budget filled by others never refuses an admin's lockdown or revoke.
    let held = match req.extensions().get::<Budget>() {
        Some(budget) if declared > SMALL_BODY_MAX => Some(budget.take(declared).ok_or(ApiError::Buffered)?),
        _ => None,
    };
    // Read into one buffer of the declared length (counted above), not
    // frames gathered and then copied: a 64 MiB commit would be held twice.
    // A body of no declared length starts small and grows.
    let mut body = std::pin::pin!(Limited::new(req.into_body(), limit));
    let mut bytes = BytesMut::with_capacity(length.unwrap_or(limit.min(SMALL_BODY_MAX)));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => ApiError::TooLarge(limit),
            None => invalid(format!("reading the request body: {e}")),
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Body { bytes: bytes.freeze(), _held: held })
}

/// The buffer budgets a request's bodies are counted against (its
/// identity's and the proxy's), handed to the handler in the request's
/// extensions.
#[derive(Clone, Debug)]
pub struct Budget {
    identity: Arc<Semaphore>,
    all: Arc<Semaphore>,
}

/// Buffered bytes taken from a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Buffered {
    _identity: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl Budget {
    /// A budget drawing on the identity's semaphore and the proxy's.
    pub fn new(identity: Arc<Semaphore>, all: Arc<Semaphore>) -> Self {
        Self { identity, all }
    }

    /// Takes `bytes` from both budgets at once, or nothing.
    pub fn take(&self, bytes: usize) -> Option<Buffered> {
        let n = u32::try_from(bytes).ok()?;
        let identity = self.identity.clone().try_acquire_many_owned(n).ok()?;
        let all = self.all.clone().try_acquire_many_owned(n).ok()?;
        Some(Buffered { _identity: identity, _all: all })
    }
}
