//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step).
//!
//! Each enrolled identity has a secret in the TOTP file (mode 0600, read on
//! every check so an enrollment needs no restart). A code is accepted once:
//! the last accepted step per identity is remembered and only later steps
//! pass, so a captured code cannot be replayed. (The memory is this proxy's;
//! proxies sharing a bucket each accept a code at most once.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::identity::Identity;

/// The header carrying a TOTP code.
pub const TOTP_HEADER: &str = "x-coffer-totp";
/// Bytes of a new TOTP secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
const ISSUER: &str = "Coffer";

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpFile {
    #[serde(default)]
    enrolled: Vec<Enrollment>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrollment {
    trust_domain: String,
    identity: String,
    /// Base32, as authenticator apps take it.
    secret: String,
    enrolled: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MfaError {
    #[error("a TOTP code is required (header {TOTP_HEADER})")]
    Missing,
    #[error("{0} has no TOTP enrollment")]
    NotEnrolled(String),
    #[error("the TOTP code is wrong or expired")]
    Wrong,
    #[error("the TOTP code was already used")]
    Replayed,
    #[error("TOTP file: {0}")]
    File(String),
}

fn totp(secret: Secret, account: &str) -> Result<Totp, String> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_account_name(account.replace(':', ""))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| e.to_string())
}

fn read(path: &Path) -> Result<TotpFile, String> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            return Err(format!("{} must not be readable by group or others (chmod 600)", path.display()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TotpFile::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Enrolls (or re-enrolls) an identity: a fresh secret in the TOTP file.
/// Returns the `otpauth://` URI to load into an authenticator.
pub fn enroll(path: &Path, domain: &str, identity: &str) -> Result<zeroize::Zeroizing<String>, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = read(path)?;
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| "the system RNG failed".to_string())?;
    let secret = Secret::from(*bytes);
    let uri = zeroize::Zeroizing::new(totp(secret.clone(), identity)?.to_url().map_err(|e| e.to_string())?);
    file.enrolled.retain(|e| !(e.trust_domain == domain && e.identity == identity));
    file.enrolled.push(Enrollment {
        trust_domain: domain.into(),
        identity: identity.into(),
        secret: secret.to_base32(),
        enrolled: crate::unix_now(),
    });
    let text = zeroize::Zeroizing::new(toml::to_string(&file).map_err(|e| e.to_string())?);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(uri)
}

/// Checks codes against the TOTP file, each accepted once.
pub struct MfaVerifier {
    path: PathBuf,
    last_step: Mutex<HashMap<(String, String), u64>>,
}

impl MfaVerifier {
    pub fn new(path: PathBuf) -> Self {
        Self { path, last_step: Mutex::default() }
    }

    /// Accepts `code` for `identity` at `now` (unix seconds) if it is right
    /// and from a later step than any code accepted before.
    pub fn verify(&self, identity: &Identity, code: Option<&str>, now: u64) -> Result<(), MfaError> {
        let code = code.ok_or(MfaError::Missing)?;
        let file = read(&self.path).map_err(MfaError::File)?;
        let entry = file
            .enrolled
            .iter()
            .find(|e| e.trust_domain == identity.domain() && e.identity == identity.name())
            .ok_or_else(|| MfaError::NotEnrolled(identity.to_string()))?;
        let secret = Secret::try_from_base32(&entry.secret).map_err(|e| MfaError::File(e.to_string()))?;
        let step = totp(secret, identity.name()).map_err(MfaError::File)?.check(code, now).ok_or(MfaError::Wrong)?;
        let mut last = self.last_step.lock().expect("not poisoned");
        let key = (identity.domain().to_string(), identity.name().to_string());
        if last.get(&key).is_some_and(|&used| step <= used) {
            return Err(MfaError::Replayed);
        }
        last.insert(key, step);
        Ok(())
    }
}

/// The current code for a base32 secret (for tests and the agent's helpers).
pub fn code_at(secret_base32: &str, now: u64) -> Result<String, String> {
    let secret = Secret::try_from_base32(secret_base32).map_err(|e| e.to_string())?;
    Ok(totp(secret, "x")?.generate(now).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_of(uri: &str) -> String {
        let start = uri.find("secret=").unwrap() + 7;
        uri[start..].split('&').next().unwrap().to_string()
    }

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, secret "12345678901234567890": at T=59
        // the 8-digit code is 94287082, so the 6-digit one is 287082.
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        assert_eq!(code_at(&secret, 59).unwrap(), "287082");
        assert_eq!(code_at(&secret, 1111111109).unwrap(), "081804");
    }

    #[test]
    fn enroll_verify_window_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("totp.toml");
        let uri = enroll(&path, "dev", "spiffe://coffer.dev/admin").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{}", *uri);
        let secret = secret_of(&uri);
        let v = MfaVerifier::new(path.clone());
        let admin = Identity::new("dev", "spiffe://coffer.dev/admin");
        let t = 1_800_000_000;

        assert_eq!(v.verify(&admin, None, t), Err(MfaError::Missing));
        assert_eq!(v.verify(&admin, Some("000000x"), t), Err(MfaError::Wrong));
        let now = code_at(&secret, t).unwrap();
        v.verify(&admin, Some(&now), t).unwrap();
        assert_eq!(v.verify(&admin, Some(&now), t), Err(MfaError::Replayed), "a code is accepted once");
        // One step of skew either way; the step before the one used is now stale.
        assert_eq!(v.verify(&admin, Some(&code_at(&secret, t - 30).unwrap()), t), Err(MfaError::Replayed));
        v.verify(&admin, Some(&code_at(&secret, t + 30).unwrap()), t).unwrap();
        assert_eq!(v.verify(&admin, Some(&code_at(&secret, t + 300).unwrap()), t), Err(MfaError::Wrong));

        let other = Identity::new("dev", "spiffe://coffer.dev/reader");
        assert!(matches!(v.verify(&other, Some(&now), t), Err(MfaError::NotEnrolled(_))));
        let elsewhere = Identity::new("prod", "spiffe://coffer.dev/admin");
        assert!(matches!(v.verify(&elsewhere, Some(&now), t), Err(MfaError::NotEnrolled(_))), "domains differ");

        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(v.verify(&admin, Some(&now), t + 600), Err(MfaError::File(_))));
    }
}
