//! The admin API's settings and the dedup answer's trust in old uploads.

use std::path::PathBuf;

use serde::Deserialize;

/// Which uploads a dedup answer may count on (SPEC §9 "Dedup scopes").
#[derive(Debug, Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Whether uploads from before scopes count for identities never
    /// revoked or quarantined. `false` ends that trust for everyone at
    /// once: each identity's next backup stores its own copy of such data.
    /// Read at start.
    pub count_uploads_before_scopes: bool,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { count_uploads_before_scopes: true }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// TOTP secrets of enrolled identities (mode 0600), written by
    /// `coffer-proxy admin enroll`.
    pub totp_file: PathBuf,
    /// How often the admin state in the store (revocations, lockdown) is
    /// read again, so a call made on another proxy takes effect here too.
    pub poll_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { totp_file: "totp.toml".into(), poll_secs: 5 }
    }
}
