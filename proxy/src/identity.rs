//! Who is calling: a typed identity taken from the client certificate that
//! the TLS layer already verified against the configured CA.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The caller's name: the certificate's first SAN URI (e.g.
/// `spiffe://prod/host/db-01`), else its first SAN DNS name, else its
/// subject CN. Policy rules match on it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Extracts the identity from a DER certificate; `None` if it names
    /// nothing usable (such a caller gets no rights).
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
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
        (!name.is_empty() && name.len() <= 1024).then(|| Self(name.to_string()))
    }
}

impl From<&str> for Identity {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}
