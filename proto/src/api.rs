//! JSON bodies of the HTTP API (`/v1`). Binary bodies (envelopes, commit,
//! id lists) are defined in [`crate::envelope`] and [`crate::snapshot`].

use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotStats;
use crate::SnapshotId;

/// Header carrying the BLAKE3 of a chunk upload's body, hex: the proxy
/// refuses a body that does not match (a transit check independent of TLS).
pub const DIGEST_HEADER: &str = "x-coffer-blake3";

/// Header asking `GET /v1/repos/{repo}/snapshots` for the root copies
/// listing packs hold (value `1`; SPEC §7 "Listing packs").
pub const ROOT_COPIES_HEADER: &str = "x-coffer-root-copies";

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
    /// The snapshot's root and its data key record, copied from a listing
    /// pack (SPEC §7 "Listing packs"), for a caller that may read both:
    /// it need not fetch them one by one. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootCopy>,
}

/// A root envelope and its data key record, as stored (base64 in JSON).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootCopy {
    #[serde(with = "crate::keys::b64")]
    pub envelope: Vec<u8>,
    #[serde(with = "crate::keys::b64")]
    pub key: Vec<u8>,
}

impl std::fmt::Debug for RootCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootCopy({} + {} bytes)", self.envelope.len(), self.key.len())
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A short machine-readable code: `denied`, `not-found`, `invalid`, ...
    pub code: String,
    /// A sentence for a human.
    pub message: String,
}
