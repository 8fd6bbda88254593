//! Coffer's repository format: ids, envelopes, key records, repository
//! config, snapshot roots, manifests, commit bodies and index segments.
//!
//! This crate does no I/O. Encoders write into `Vec<u8>`, decoders read from a
//! slice and reject trailing bytes, unknown versions and unknown algorithms:
//! refuse what you don't understand. That keeps every decoder fuzzable and
//! lets the agent and the proxy share one definition of every byte.
//!
//! Which type for which job:
//! - [`ChunkId`], [`SnapshotId`], [`KeyId`], [`RepoName`]: the names of things.
//! - [`envelope`]: seal and open the encrypted objects (chunks, snapshot roots).
//! - [`keys`]: data keys ([`keys::DataKey`]), encryption contexts, wrapped key
//!   records and the local key-encryption key.
//! - [`chunk`]: the whole per-chunk transform, compress + seal and open + check.
//! - [`repo`]: the plaintext repository `config` object.
//! - [`snapshot`]: snapshot roots, manifests, the commit body and index segments.
//! - [`api`]: JSON bodies of the HTTP API; [`endpoint`]: its paths, methods
//!   and limits, and the router; [`layout`]: where objects live in the store.
//!
//! ```
//! use coffer_proto::{chunk, keys::{DataKey, IdKey}, KeyId, RepoName};
//! let repo: RepoName = "dev/db".parse().unwrap();
//! let (dek, idk) = (DataKey::random(), IdKey::random());
//! let key_id = KeyId::random();
//! let data = b"hello, backup".to_vec();
//! let id = idk.chunk_id(&data);
//! let sealed = chunk::seal(&data, &dek, key_id, &repo, &id, 3);
//! let opened = chunk::open(&sealed, &dek, &repo, &id, &idk).unwrap();
//! assert_eq!(opened, data);
//! ```

pub mod api;
pub mod chunk;
pub mod endpoint;
pub mod envelope;
mod error;
pub mod fuzz;
mod ids;
pub mod keys;
pub mod layout;
pub mod repo;
pub mod snapshot;
mod wire;

pub use error::{FormatError, IntegrityError};
pub use ids::{ChunkId, KeyId, RepoName, Scope, SnapshotId, REPO_NAME_MAX, REPO_SEGMENTS_MAX};

/// Smallest chunk the content-defined chunker emits (except a stream's last).
pub const CHUNK_MIN: u32 = 512 * 1024;
/// Target average chunk size.
pub const CHUNK_AVG: u32 = 1024 * 1024;
/// Largest chunk; also the largest plaintext a chunk envelope may carry.
pub const CHUNK_MAX: u32 = 8 * 1024 * 1024;
/// Largest envelope the proxy accepts: a max chunk that did not compress,
/// plus the header and tag.
pub const ENVELOPE_MAX: usize = CHUNK_MAX as usize + envelope::OVERHEAD;
