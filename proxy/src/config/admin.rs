//! The admin API's settings.

use std::path::PathBuf;

use serde::Deserialize;

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
