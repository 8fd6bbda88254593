//! The Coffer proxy: the only door to the backups.
//!
//! It terminates mutual TLS 1.3, maps the client certificate to an
//! [`access::identity::Identity`], authorizes each request against the
//! [`access::policy::Policy`], records an [`audit`] event (durable before a mutating
//! request is acknowledged), checks uploaded key records with a
//! [`keycheck::KeyChecker`], and writes objects once into an
//! [`store::ObjectStore`] with a retention lock. It never sees plaintext.
//!
//! `main.rs` only parses arguments and calls [`config::ProxyConfig::load`],
//! then [`server::run`]; [`dev`] prepares the embedded default.

pub mod access;
pub mod api;
pub mod app;
pub mod audit;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod catalog;
pub mod compliance;
pub mod config;
pub mod dev;
pub mod fuzz;
pub mod keep;
pub mod keycheck;
pub mod lifecycle;
pub mod monitor;
pub mod observed;
pub mod packcache;
pub mod parts;
pub mod quota;
pub mod server;
pub mod store;
// Handler tests' state, and coffer-bench's (where most of it is unused).
#[cfg(any(test, feature = "bench"))]
#[cfg_attr(not(test), allow(dead_code))]
mod testkit;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
