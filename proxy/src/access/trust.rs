//! Trust domains: each an account or tenant with its own client CA and
//! CRLs. A client certificate must chain to one domain's CA and not be
//! revoked by that domain's CRLs; the domain it chains to is part of its
//! identity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;

/// `[[trust_domains]]`: a client CA, and the repositories its identities
/// may be given rights in.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TrustDomainConfig {
    /// Names the domain in rules, grants and audit events.
    pub name: String,
    /// CA certificate(s) its client certificates must chain to (PEM).
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM or DER) of that CA.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// The repositories this domain owns: its identities can be given
    /// rights only inside them (other domains only through a grant).
    pub repos: Vec<String>,
}

/// Why the certificates, CRLs or trust domains cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A certificate or CRL file that cannot be read or parsed.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The trust domains as configured.
    #[error("{0}")]
    Domains(String),
    /// rustls refused the result (a CA or key that does not fit).
    #[error("{0}")]
    Tls(String),
}

fn file_error(path: &Path) -> impl Fn(&dyn fmt::Display) -> TrustError + '_ {
    move |e| TrustError::File { path: path.to_path_buf(), reason: e.to_string() }
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path)(&e))?;
    if certs.is_empty() {
        return Err(file_error(path)(&"no certificate found"));
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TrustError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path)(&format!("CRL: {e}")))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(path)(&format!("CRL: {e}")))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

struct Domain {
    name: Arc<str>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Every configured trust domain, and a rustls verifier that accepts a
/// certificate valid in any of them.
pub struct TrustDomains {
    domains: Vec<Domain>,
    hints: Vec<DistinguishedName>,
}

impl fmt::Debug for TrustDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.domains.iter().map(|d| &*d.name)).finish()
    }
}

impl TrustDomains {
    pub fn load(configs: &[TrustDomainConfig]) -> Result<Self, TrustError> {
        if configs.is_empty() {
            return Err(TrustError::Domains("no [[trust_domains]]: no client could ever connect".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut domains: Vec<Domain> = Vec::new();
        let mut hints = Vec::new();
        for c in configs {
            if domains.iter().any(|d| *d.name == *c.name) {
                return Err(TrustError::Domains(format!("trust domain {:?} is defined twice", c.name)));
            }
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certs(&c.ca)? {
                roots.add(ca).map_err(|e| file_error(&c.ca)(&format!("CA of trust domain {}: {e}", c.name)))?;
            }
            hints.extend(roots.subjects());
            let mut crls = Vec::new();
            for path in &c.crls {
                crls.extend(read_crls(path)?);
            }
            // Every certificate of the chain below the anchor is checked
            // (a revoked intermediate CA revokes what it issued), each
            // against a CRL of its issuer: unknown status is refused, so a
            // domain with intermediate CAs lists one CRL per CA. An expired
            // CRL (past its nextUpdate) is refused too, as a stale list
            // hides revocations made since.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .enforce_revocation_expiration()
                .build()
                .map_err(|e| TrustError::Tls(format!("trust domain {}: {e}", c.name)))?;
            domains.push(Domain { name: c.name.as_str().into(), verifier });
        }
        Ok(Self { domains, hints })
    }

    /// The domain a verified peer chain belongs to: the first whose CA and
    /// CRLs accept it.
    pub fn domain_of(&self, chain: &[CertificateDer<'_>]) -> Option<Arc<str>> {
        let (leaf, intermediates) = chain.split_first()?;
        let now = UnixTime::now();
        self.domains
            .iter()
            .find(|d| d.verifier.verify_client_cert(leaf, intermediates, now).is_ok())
            .map(|d| d.name.clone())
    }
}

impl ClientCertVerifier for TrustDomains {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    /// Valid if some domain accepts it. When none does, reports the most
    /// telling refusal (revoked or expired beats "unknown issuer").
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut refusal = None;
        for d in &self.domains {
            match d.verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(ok) => return Ok(ok),
                Err(e) => {
                    let unknown =
                        matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
                    if refusal.is_none() || !unknown {
                        refusal = Some(e);
                    }
                }
            }
        }
        Err(refusal.expect("at least one domain"))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.domains[0].verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.domains[0].verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.domains[0].verifier.supported_verify_schemes()
    }
}
