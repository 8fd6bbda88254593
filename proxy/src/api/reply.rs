//! What a request ends with: a [`Reply`], or an [`ApiError`] mapped to its
//! status, error code and audit outcome in one place.

use bytes::Bytes;
use coffer_proto::api::ErrorBody;
use coffer_proto::endpoint::RouteError;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::access::mfa::MfaError;
use crate::access::policy::Denied;
use crate::app::App;
use crate::audit::Outcome;
use crate::store::{PutOutcome, StoreError};

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
    /// The identity's daily upload quota is spent (not worth retrying
    /// before the next UTC day).
    #[error("{0}")]
    Quota(String),
}

impl ApiError {
    pub fn status(&self) -> (StatusCode, &'static str, Outcome) {
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
            // Not 429: retrying before the day ends only spends requests.
            Quota(_) => (StatusCode::FORBIDDEN, "quota", Outcome::Denied),
        }
    }
}

pub fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::Invalid(e.to_string())
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound(path) => ApiError::NotFound(format!("no such endpoint {path}")),
            RouteError::Method => ApiError::Method,
            RouteError::BadRepo(why) => ApiError::Invalid(why),
        }
    }
}

/// A successful answer: status, body, and the byte count for the audit event.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
}

impl Reply {
    pub fn new(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Self {
        Self { status, body: body.into(), content_type }
    }
    pub fn json(status: StatusCode, v: &impl serde::Serialize) -> Self {
        Self::new(status, serde_json::to_vec(v).expect("API types serialise"), "application/json")
    }
    pub fn bytes(body: Bytes) -> Self {
        Self::new(StatusCode::OK, body, "application/octet-stream")
    }
    pub fn empty(status: StatusCode) -> Self {
        Self::new(status, Bytes::new(), "application/octet-stream")
    }
    pub fn stored(outcome: PutOutcome) -> Self {
        Self::empty(match outcome {
            PutOutcome::Created => StatusCode::CREATED,
            PutOutcome::Exists => StatusCode::OK,
        })
    }
}

pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = ErrorBody { code: code.into(), message: message.into() };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(serde_json::to_vec(&body).expect("serialises").into()))
        .expect("valid response")
}

impl Reply {
    /// A stored object, as it is.
    pub async fn object(app: &App, key: String) -> Result<Reply, ApiError> {
        match app.store.get(&key).await? {
            Some(b) => Ok(Reply::bytes(b)),
            None => Err(ApiError::NotFound(format!("no object {key}"))),
        }
    }
}
