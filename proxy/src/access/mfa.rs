//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step).
//!
//! Each enrolled identity has a secret in the TOTP file (mode 0600, read on
//! every check so an enrollment needs no restart). What a check must
//! remember lives in the store, so every proxy on the bucket shares it and a
//! restart forgets nothing (SPEC §12, decisions.md):
//!
//! - **Replay**: an accepted code's step is written once, as
//!   `admin/mfa/<who>/<day>/used-<step>`; a code is accepted only if no
//!   later or equal step was, and only by the proxy whose write created the
//!   object, so two proxies racing with one code accept it once.
//! - **Guessing**: each wrong code is written as
//!   `admin/mfa/<who>/<day>/failed-<millis>-<random>`. After
//!   [`FREE_FAILURES`] wrong codes in a row (since the last accepted code,
//!   within a day) the identity is locked out: every code, right or wrong,
//!   is refused until the lockout ends, which doubles with each further
//!   failure from one minute up to an hour. Guessing a code then takes
//!   years instead of minutes, and the first lockout raises a critical alert.
//!
//! `<who>` is the BLAKE3 of the trust domain and name; `<day>` is the unix
//! day, so a check lists two small folders, never the whole history.
//! Checks of one identity run one at a time on a proxy, so a burst of
//! parallel guesses is judged as the sequence it is; with several proxies,
//! each can judge one guess at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::access::identity::Identity;
use crate::store::{ObjectStore, PutOutcome};

pub use coffer_proto::api::TOTP_HEADER;
/// Bytes of a new TOTP secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
const ISSUER: &str = "Coffer";
/// Where the shared MFA state lives (under the reserved `admin/` tree).
pub const MFA_STATE: &str = "admin/mfa/";
/// Wrong codes in a row that cost nothing; the next ones lock the identity out.
pub const FREE_FAILURES: usize = 5;
/// The first lockout; each further wrong code doubles it, up to [`LOCKOUT_MAX_SECS`].
pub const LOCKOUT_FIRST_SECS: u64 = 60;
pub const LOCKOUT_MAX_SECS: u64 = 3600;
/// How far back wrong codes count (when no code was accepted since).
pub const FAILURE_WINDOW_SECS: u64 = 86_400;
/// How long the MFA records are kept locked: longer than the failure
/// window, so nobody with store access can reset a count by deleting.
const RECORD_LOCK_SECS: u64 = 7 * 86_400;
const STEP_SECS: u64 = 30;

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
    /// Too many wrong codes: every code is refused until `until` (unix s).
    /// `new` when this request's wrong code started the lockout.
    #[error("{failures} wrong TOTP codes in a row: codes for this identity are refused until {until} (unix seconds)")]
    LockedOut { until: u64, failures: usize, new: bool },
    #[error("TOTP file: {0}")]
    File(TotpFileError),
    /// The shared MFA state could not be read or written: refused, never
    /// accepted unchecked.
    #[error("TOTP state in the store: {0}")]
    Store(String),
}

/// Why the TOTP file, or a secret in it, cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TotpFileError {
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("a TOTP secret: {0}")]
    Secret(String),
    #[error("the system RNG failed")]
    Rng,
}

fn file_problem(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> TotpFileError + '_ {
    move |e| TotpFileError::File { path: path.to_path_buf(), problem: e.to_string() }
}

fn totp(secret: Secret, account: &str) -> Result<Totp, TotpFileError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret)
        .with_account_name(account.replace(':', ""))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| TotpFileError::Secret(e.to_string()))
}

fn read(path: &Path) -> Result<TotpFile, TotpFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            return Err(file_problem(path)(&"must not be readable by group or others (chmod 600)"))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TotpFile::default()),
        Err(e) => return Err(file_problem(path)(&e)),
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_problem(path)(&e))?);
    toml::from_str(&text).map_err(|e| file_problem(path)(&e))
}

/// For fuzzers: reads a TOTP file's text as the proxy does, and checks a
/// code against each enrolled secret that decodes.
pub(crate) fn fuzz_file(text: &str) {
    let Ok(file) = toml::from_str::<TotpFile>(text) else { return };
    for entry in &file.enrolled {
        if let Ok(secret) = Secret::try_from_base32(&entry.secret) {
            if let Ok(t) = totp(secret, &entry.identity) {
                let _ = t.check("000000", entry.enrolled);
            }
        }
    }
}

/// Enrolls (or re-enrolls) an identity: a fresh secret in the TOTP file.
/// Returns the `otpauth://` URI to load into an authenticator.
pub fn enroll(path: &Path, domain: &str, identity: &str) -> Result<zeroize::Zeroizing<String>, TotpFileError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = read(path)?;
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_LEN]);
    aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| TotpFileError::Rng)?;
    let secret = Secret::from(*bytes);
    let uri = zeroize::Zeroizing::new(
        totp(secret.clone(), identity)?.to_url().map_err(|e| TotpFileError::Secret(e.to_string()))?,
    );
    file.enrolled.retain(|e| !(e.trust_domain == domain && e.identity == identity));
    file.enrolled.push(Enrollment {
        trust_domain: domain.into(),
        identity: identity.into(),
        secret: secret.to_base32(),
        enrolled: crate::unix_now(),
    });
    let text = zeroize::Zeroizing::new(toml::to_string(&file).map_err(|e| file_problem(path)(&e))?);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_problem(&tmp)(&e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| file_problem(&tmp)(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_problem(path)(&e))?;
    Ok(uri)
}

/// Checks codes against the TOTP file, each accepted once, with the
/// replay and failure records shared through the store.
pub struct MfaVerifier {
    path: PathBuf,
    store: Arc<dyn ObjectStore>,
    /// One check at a time per identity on this proxy: codes sent in
    /// parallel would all pass the lockout check before any failure is
    /// recorded.
    checking: std::sync::Mutex<std::collections::HashMap<(String, String), Turn>>,
}

/// One identity's turn to have a code checked.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// What the store says about an identity's recent codes.
#[derive(Debug, Default)]
struct History {
    /// The latest accepted step.
    last_used: Option<u64>,
    /// Wrong codes (unix milliseconds) since then, within the window, oldest first.
    failures: Vec<u64>,
}

/// When a lockout after `failures` wrong codes in a row, the last at
/// `last_ms`, ends (unix seconds); `None` below the free allowance.
pub fn lockout_until(failures: usize, last_ms: u64) -> Option<u64> {
    let over = failures.checked_sub(FREE_FAILURES)?;
    let secs = LOCKOUT_FIRST_SECS.saturating_mul(1u64 << over.min(20)).min(LOCKOUT_MAX_SECS);
    Some(last_ms / 1000 + secs)
}

impl MfaVerifier {
    pub fn new(path: PathBuf, store: Arc<dyn ObjectStore>) -> Self {
        Self { path, store, checking: Default::default() }
    }

    fn folder(identity: &Identity, day: u64) -> String {
        let who = blake3::hash(format!("{}\0{}", identity.domain(), identity.name()).as_bytes()).to_hex();
        format!("{MFA_STATE}{who}/{day}/")
    }

    /// Accepted steps and wrong codes of today and yesterday (unix days).
    async fn history(&self, identity: &Identity, now: u64) -> Result<History, MfaError> {
        let day = now / 86_400;
        let mut used = Vec::new();
        let mut failed = Vec::new();
        for d in [day.saturating_sub(1), day] {
            let folder = Self::folder(identity, d);
            for key in self.store.list(&folder).await.map_err(|e| MfaError::Store(e.to_string()))? {
                let name = &key[folder.len()..];
                if let Some(step) = name.strip_prefix("used-").and_then(|s| s.parse::<u64>().ok()) {
                    used.push(step);
                } else if let Some(ms) =
                    name.strip_prefix("failed-").and_then(|s| s.split('-').next()).and_then(|s| s.parse::<u64>().ok())
                {
                    failed.push(ms);
                }
            }
        }
        let last_used = used.into_iter().max();
        let since_ms = last_used
            // The code was accepted at most a step before or after its own
            // step: counting from the step before never forgets a failure.
            .map_or(0, |step| step.saturating_sub(1) * STEP_SECS * 1000)
            .max(now.saturating_sub(FAILURE_WINDOW_SECS) * 1000);
        failed.retain(|&ms| ms >= since_ms);
        failed.sort_unstable();
        Ok(History { last_used, failures: failed })
    }

    async fn record(&self, key: String, now: u64) -> Result<PutOutcome, MfaError> {
        self.store
            .put_new(&key, bytes::Bytes::new(), now + RECORD_LOCK_SECS)
            .await
            .map_err(|e| MfaError::Store(e.to_string()))
    }

    /// Accepts `code` for `identity` at `now` (unix seconds) if it is right,
    /// from a later step than any code accepted before (by any proxy on the
    /// store), and the identity is not locked out.
    pub async fn verify(&self, identity: &Identity, code: Option<&str>, now: u64) -> Result<(), MfaError> {
        let code = code.ok_or(MfaError::Missing)?;
        let turn = {
            let mut checking = self.checking.lock().expect("not poisoned");
            let key = (identity.domain().to_string(), identity.name().to_string());
            checking.entry(key).or_default().clone()
        };
        let _turn = turn.lock().await;
        let history = self.history(identity, now).await?;
        if let Some(until) = history.failures.last().and_then(|&last| lockout_until(history.failures.len(), last)) {
            if now < until {
                return Err(MfaError::LockedOut { until, failures: history.failures.len(), new: false });
            }
        }
        let file = read(&self.path).map_err(MfaError::File)?;
        let entry = file
            .enrolled
            .iter()
            .find(|e| e.trust_domain == identity.domain() && e.identity == identity.name())
            .ok_or_else(|| MfaError::NotEnrolled(identity.to_string()))?;
        let secret =
            Secret::try_from_base32(&entry.secret).map_err(|e| MfaError::File(TotpFileError::Secret(e.to_string())))?;
        let Some(step) = totp(secret, identity.name()).map_err(MfaError::File)?.check(code, now) else {
            let now_ms = crate::unix_now_ms().max(now * 1000);
            let mut r = [0u8; 4];
            aws_lc_rs::rand::fill(&mut r).map_err(|_| MfaError::Store("the system RNG failed".into()))?;
            let key = format!("{}failed-{now_ms:020}-{}", Self::folder(identity, now / 86_400), hex::encode(r));
            self.record(key, now).await?;
            let failures = history.failures.len() + 1;
            return Err(match lockout_until(failures, now_ms) {
                Some(until) => MfaError::LockedOut { until, failures, new: true },
                None => MfaError::Wrong,
            });
        };
        if history.last_used.is_some_and(|used| step <= used) {
            return Err(MfaError::Replayed);
        }
        // Written under today: any code it must stop is checked within
        // the next two steps, by a check that lists today and yesterday.
        let key = format!("{}used-{step:020}", Self::folder(identity, now / 86_400));
        match self.record(key, now).await? {
            PutOutcome::Created => Ok(()),
            // Another proxy accepted this code first.
            PutOutcome::Exists => Err(MfaError::Replayed),
        }
    }
}

/// The current code for a base32 secret (for tests and the agent's helpers).
pub fn code_at(secret_base32: &str, now: u64) -> Result<String, TotpFileError> {
    let secret = Secret::try_from_base32(secret_base32).map_err(|e| TotpFileError::Secret(e.to_string()))?;
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

    fn verifier(dir: &Path) -> (MfaVerifier, String, Identity) {
        let path = dir.join("totp.toml");
        let uri = enroll(&path, "dev", "spiffe://coffer.dev/admin").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{}", *uri);
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::FsStore::open(dir.join("store")).unwrap());
        (MfaVerifier::new(path, store), secret_of(&uri), Identity::new("dev", "spiffe://coffer.dev/admin"))
    }

    /// A six-digit string that is none of the codes valid around `t`.
    fn wrong_code(secret: &str, t: u64) -> String {
        let valid: Vec<String> = [t - 30, t, t + 30].iter().map(|&s| code_at(secret, s).unwrap()).collect();
        (0..).map(|i| format!("{:06}", 123_456 + i)).find(|c| !valid.contains(c)).unwrap()
    }

    #[tokio::test]
    async fn enroll_verify_window_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (v, secret, admin) = verifier(dir.path());
        let path = dir.path().join("totp.toml");
        let t = crate::unix_now();

        assert_eq!(v.verify(&admin, None, t).await, Err(MfaError::Missing));
        assert_eq!(v.verify(&admin, Some("000000x"), t).await, Err(MfaError::Wrong));
        let now = code_at(&secret, t).unwrap();
        v.verify(&admin, Some(&now), t).await.unwrap();
        assert_eq!(v.verify(&admin, Some(&now), t).await, Err(MfaError::Replayed), "a code is accepted once");
        // One step of skew either way; the step before the one used is now stale.
        assert_eq!(v.verify(&admin, Some(&code_at(&secret, t - 30).unwrap()), t).await, Err(MfaError::Replayed));
        v.verify(&admin, Some(&code_at(&secret, t + 30).unwrap()), t).await.unwrap();
        assert_eq!(v.verify(&admin, Some(&code_at(&secret, t + 300).unwrap()), t).await, Err(MfaError::Wrong));

        // The memory is the store's: a new verifier (a restart, another
        // proxy) refuses the used codes too.
        let again = MfaVerifier::new(path.clone(), v.store.clone());
        assert_eq!(again.verify(&admin, Some(&now), t).await, Err(MfaError::Replayed), "replayed after a restart");

        let other = Identity::new("dev", "spiffe://coffer.dev/reader");
        assert!(matches!(v.verify(&other, Some(&now), t).await, Err(MfaError::NotEnrolled(_))));
        let elsewhere = Identity::new("prod", "spiffe://coffer.dev/admin");
        assert!(matches!(v.verify(&elsewhere, Some(&now), t).await, Err(MfaError::NotEnrolled(_))), "domains differ");

        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(v.verify(&admin, Some(&code_at(&secret, t + 60).unwrap()), t).await, Err(MfaError::File(_))));
    }

    #[tokio::test]
    async fn wrong_codes_lock_the_identity_out_and_the_count_is_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (v, secret, admin) = verifier(dir.path());
        let t = crate::unix_now();
        let wrong = wrong_code(&secret, t);
        for _ in 1..FREE_FAILURES {
            assert_eq!(v.verify(&admin, Some(&wrong), t).await, Err(MfaError::Wrong));
        }
        // The last free failure comes from "another proxy": the count is the store's.
        let other = MfaVerifier::new(dir.path().join("totp.toml"), v.store.clone());
        let locked = other.verify(&admin, Some(&wrong), t).await;
        let Err(MfaError::LockedOut { until, failures, new: true }) = locked else { panic!("{locked:?}") };
        assert_eq!(failures, FREE_FAILURES);
        // Dated by the clock when the sixth code failed, after five writes.
        let hi = crate::unix_now();
        assert!((t + LOCKOUT_FIRST_SECS..=hi + LOCKOUT_FIRST_SECS + 1).contains(&until), "{until} vs {t}..{hi}");

        // Locked out: even the right code is refused, and nothing is counted.
        let right = code_at(&secret, t).unwrap();
        let refused = v.verify(&admin, Some(&right), t).await;
        assert!(matches!(refused, Err(MfaError::LockedOut { new: false, failures: FREE_FAILURES, .. })), "{refused:?}");
        // Other identities are not affected.
        let reader = Identity::new("dev", "spiffe://coffer.dev/reader");
        assert!(matches!(v.verify(&reader, Some(&right), t).await, Err(MfaError::NotEnrolled(_))));

        // After the lockout, one more wrong code doubles it...
        let later = until;
        let wrong = wrong_code(&secret, later);
        let Err(MfaError::LockedOut { until: next, new: true, .. }) = v.verify(&admin, Some(&wrong), later).await
        else {
            panic!("a wrong code after the lockout locks again")
        };
        assert!(next >= later + 2 * LOCKOUT_FIRST_SECS, "{next} vs {later}");
        // ...and after it, the right code is accepted and clears the count.
        let after = next;
        v.verify(&admin, Some(&code_at(&secret, after).unwrap()), after).await.unwrap();
        assert_eq!(v.verify(&admin, Some(&wrong_code(&secret, after)), after).await, Err(MfaError::Wrong));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guesses_sent_in_parallel_are_judged_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (v, secret, admin) = verifier(dir.path());
        let v = Arc::new(v);
        let t = crate::unix_now();
        let wrong = wrong_code(&secret, t);
        let guesses: Vec<_> = (0..32)
            .map(|_| {
                let (v, admin, wrong) = (v.clone(), admin.clone(), wrong.clone());
                tokio::spawn(async move { v.verify(&admin, Some(&wrong), t).await })
            })
            .collect();
        let mut judged = Vec::new();
        for g in guesses {
            judged.push(g.await.unwrap());
        }
        let wrong_count = judged.iter().filter(|r| matches!(r, Err(MfaError::Wrong))).count();
        assert_eq!(wrong_count, FREE_FAILURES - 1, "only the free failures are judged as guesses: {judged:?}");
        let recorded = v.history(&admin, t).await.unwrap().failures.len();
        assert_eq!(recorded, FREE_FAILURES, "the rest met the lockout and were not even checked");
    }

    #[test]
    fn lockouts_double_up_to_an_hour() {
        assert_eq!(lockout_until(FREE_FAILURES - 1, 5_000), None);
        assert_eq!(lockout_until(FREE_FAILURES, 5_000), Some(5 + 60));
        assert_eq!(lockout_until(FREE_FAILURES + 1, 5_000), Some(5 + 120));
        assert_eq!(lockout_until(FREE_FAILURES + 6, 5_000), Some(5 + 3600));
        assert_eq!(lockout_until(usize::MAX, 5_000), Some(5 + 3600));
    }
}
