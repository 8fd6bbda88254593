//! The proxy's TLS: 1.3 only, a client certificate required and verified
//! against the trust domains, HTTP/2 by ALPN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivateKeyDer;

use crate::access::trust::{read_certs, TrustDomains, TrustError};
use crate::config::TlsConfig;

pub fn server_config(cfg: &TlsConfig, domains: Arc<TrustDomains>) -> Result<Arc<rustls::ServerConfig>, TrustError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| TrustError::File { path: cfg.key.clone(), reason: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_client_cert_verifier(domains)
        .with_single_cert(read_certs(&cfg.cert)?, key)
        .map_err(|e| TrustError::File { path: cfg.cert.clone(), reason: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
