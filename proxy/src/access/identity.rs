//! Who is calling: a typed identity taken from the client certificate that
//! the TLS layer already verified against one of the trust domains.

use std::fmt;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The caller: the trust domain its certificate chains to, and its name —
/// the certificate's first SAN URI (e.g. `spiffe://prod/host/db-01`), else
/// its first SAN DNS name, else its subject CN. Policy rules match on both.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    domain: Arc<str>,
    name: String,
}

/// Longest identity name accepted from a certificate.
const NAME_MAX: usize = 1024;

impl Identity {
    pub fn new(domain: &str, name: &str) -> Self {
        Self { domain: domain.into(), name: name.to_string() }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Extracts the name from a DER certificate; `None` if it names nothing
    /// usable (such a caller gets no rights).
    pub fn from_certificate(domain: Arc<str>, der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let sans: Vec<GeneralName<'_>> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default();
        let uri = sans.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let dns = sans.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
        let name = uri.or(dns).or(cn)?;
        (!name.is_empty() && name.len() <= NAME_MAX).then(|| Self { domain, name: name.to_string() })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (trust domain {})", self.name, self.domain)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({}, {})", self.domain, self.name)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn certificate(san: &str) -> Vec<u8> {
        let p = rcgen::CertificateParams::new(vec![san.into()]).unwrap();
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn the_name_is_the_first_san() {
        let id = Identity::from_certificate("dev".into(), &certificate("db-01.example")).unwrap();
        assert_eq!((id.domain(), id.name()), ("dev", "db-01.example"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// What a handshake hands over is read without panicking: random
        /// bytes, and a real certificate with bytes flipped or cut.
        #[test]
        fn any_certificate_bytes_are_read_without_panicking(
            noise in prop::collection::vec(any::<u8>(), 0..600),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let _ = Identity::from_certificate("d".into(), &noise);
            let mut der = certificate("spiffe-less.example");
            for (at, byte) in flips {
                let i = at.index(der.len());
                der[i] ^= byte;
            }
            if let Some(id) = Identity::from_certificate("d".into(), &der) {
                prop_assert!(!id.name().is_empty() && id.name().len() <= NAME_MAX);
            }
            let _ = Identity::from_certificate("d".into(), &der[..cut.index(der.len() + 1)]);
        }
    }
}
