//! The Coffer agent: turns a backup stream into encrypted chunks, sends them
//! to `coffer-proxy` over mutual TLS, and restores and verifies snapshots.
//!
//! The binary `coffer` is a thin shell over this library:
//! - [`config::AgentConfig`] loads `agent.toml`;
//! - [`coffer_client::ProxyClient`] (its own crate) speaks the `/v1`
//!   protocol over HTTP/2 + mTLS;
//! - [`keys::KeyProvider`] makes and unwraps data keys (local provider now,
//!   AWS KMS later);
//! - [`backup`] runs the chunk → hash → dedup → compress → seal → upload
//!   pipeline; [`restore`] runs it backwards and checks every chunk.

pub mod backup;
pub mod config;
mod cutter;
pub mod daemon;
pub mod fuzz;
pub mod keys;
pub mod limit;
pub mod memory;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod schedule;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
