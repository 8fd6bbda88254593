//! The Coffer proxy: the only door to the backups.
//!
//! It terminates mutual TLS 1.3, maps the client certificate to an
//! [`identity::Identity`], authorizes each request against the
//! [`policy::Policy`], records an [`audit`] event (durable before a mutating
//! request is acknowledged), checks uploaded key records with a
//! [`keycheck::KeyChecker`], and writes objects once into an
//! [`store::ObjectStore`] with a retention lock. It never sees plaintext.
//!
//! `main.rs` only parses arguments and calls [`config::ProxyConfig::load`],
//! then [`server::run`]; [`dev`] prepares the embedded default.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod assess;
pub mod audit;
pub mod clientcerts;
pub mod config;
pub mod conns;
pub mod detect;
pub mod dev;
pub mod governance;
pub mod identity;
pub mod keycheck;
pub mod limit;
pub mod metrics;
pub mod mfa;
pub mod policy;
pub mod report;
pub mod report_html;
pub mod scrub;
pub mod server;
pub mod store;
mod tls;
pub mod trust;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
