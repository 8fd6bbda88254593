//! JSON bodies of the HTTP API (`/v1`). Binary bodies (envelopes, commit,
//! id lists) are defined in [`crate::envelope`] and [`crate::snapshot`].

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotStats;
use crate::SnapshotId;

/// Header carrying the BLAKE3 of a chunk upload's body, hex: the proxy
/// refuses a body that does not match (a transit check independent of TLS).
pub const DIGEST_HEADER: &str = "x-coffer-blake3";

/// Header carrying a TOTP code: checked once per connection for a rule
/// that asks for MFA, and on every admin call.
pub const TOTP_HEADER: &str = "x-coffer-totp";

/// `GET /v1/whoami`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    pub identity: String,
    /// The trust domain the caller's certificate chains to.
    pub trust_domain: String,
    pub roles: Vec<String>,
    /// Repository patterns the caller may use.
    pub repos: Vec<String>,
    /// Whether some rule for the caller asks for a TOTP code per connection
    /// (whoami itself never does, so an agent can find out and ask).
    #[serde(default)]
    pub mfa: bool,
}

/// One element of `GET /v1/repos/{repo}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// Unix seconds when the proxy committed it.
    pub committed: u64,
    pub retain_until: u64,
    pub stats: SnapshotStats,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short machine-readable code: `denied`, `not-found`, `invalid`, ...
    pub code: String,
    /// A sentence for a human.
    pub message: String,
}
