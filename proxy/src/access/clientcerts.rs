//! Client certificates seen at handshakes, so `assess` can warn before an
//! agent's certificate expires. The proxy never holds client certificates
//! otherwise: each identity's newest expiry and the day it was last seen are
//! kept in `client-certs.json` beside the audit log. The file is rewritten
//! only when an identity is new, presents a different certificate, or is
//! seen on a new day, so a busy proxy writes it a few times a day.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::access::identity::Identity;

const DAY: u64 = 86_400;

/// One identity's certificate, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The certificate's notAfter, Unix seconds.
    pub not_after: u64,
    /// The last handshake, Unix seconds (rounded down to the day).
    pub last_seen: u64,
}

/// Identity (as displayed: `name (trust domain D)`) → its certificate.
pub type Sightings = BTreeMap<String, Seen>;

pub struct ClientCerts {
    path: PathBuf,
    seen: Mutex<Sightings>,
}

impl ClientCerts {
    /// Loads what earlier runs saw; an unreadable file starts afresh (it is
    /// advisory, and rewritten at the next handshake).
    pub fn open(path: PathBuf) -> Self {
        let seen = load(&path).unwrap_or_else(|e| {
            tracing::warn!("starting a new {}: {e}", path.display());
            Sightings::new()
        });
        Self { path, seen: Mutex::new(seen) }
    }

    /// Notes the certificate an identity presented at a handshake.
    pub fn note(&self, who: &Identity, der: &[u8], now: u64) {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let Ok((_, cert)) = X509Certificate::from_der(der) else { return };
        let entry = Seen { not_after: cert.validity().not_after.timestamp().max(0) as u64, last_seen: now - now % DAY };
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.insert(who.to_string(), entry) == Some(entry) {
            return;
        }
        // Small and rare (see the module comment), so written in place under the lock.
        let body = serde_json::to_vec_pretty(&*seen).expect("plain data");
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            tracing::warn!("cannot record client certificates in {}: {e}", self.path.display());
        }
    }
}

/// The sightings file's contents.
pub fn decode(bytes: &[u8]) -> Result<Sightings, std::io::Error> {
    serde_json::from_slice(bytes).map_err(std::io::Error::other)
}

/// Reads the sightings file; a missing file is an empty map.
pub fn load(path: &Path) -> Result<Sightings, std::io::Error> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sightings::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(days: i64) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["db-01".into()]).unwrap();
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    const KEY: &str = "db-01 (trust domain acme)";

    #[test]
    fn sightings_survive_a_restart_and_follow_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-certs.json");
        let who = Identity::new("acme", "db-01");
        let now = crate::unix_now();
        let certs = ClientCerts::open(path.clone());
        certs.note(&who, &cert(20), now);
        let first = load(&path).unwrap()[KEY];
        assert!(first.not_after > now + 19 * DAY && first.not_after <= now + 20 * DAY + 60);
        assert_eq!(first.last_seen, now - now % DAY);

        // A restart keeps it; a renewed certificate replaces it.
        let certs = ClientCerts::open(path.clone());
        certs.note(&who, &cert(200), now + DAY);
        let renewed = load(&path).unwrap()[KEY];
        assert!(renewed.not_after > now + 199 * DAY);
        assert!(renewed.last_seen > first.last_seen);

        // Garbage is ignored, not a panic, and the file heals.
        std::fs::write(&path, b"{not json").unwrap();
        let certs = ClientCerts::open(path.clone());
        certs.note(&who, b"not a certificate", now);
        certs.note(&who, &cert(5), now);
        assert!(load(&path).unwrap()[KEY].not_after < now + 6 * DAY);
    }
}
