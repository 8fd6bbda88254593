//! Object stores: write-once objects with a retain-until lock.
//!
//! The proxy's only persistent state. Implementations never replace an
//! existing object and never delete one before its lock ends.

use async_trait::async_trait;
use bytes::Bytes;
use coffer_proto::{KeyId, Scope};

mod fs;
mod s3;
pub use fs::FsStore;
pub use s3::{LockMode, S3Config, S3Store, SCOPE_METADATA};

/// How long records that must outlive every backup are locked (admin
/// revocations and switches): a hundred years, S3's own longest default
/// retention, and a date every store and SDK can write.
pub const LONGEST_LOCK_SECS: u64 = 100 * 365 * 86_400;
/// The latest retain-until a store records: 9999-12-31T23:59:59Z, the last
/// second an S3 timestamp can name. Later dates are clamped to it.
pub const LATEST_RETAIN_UNTIL: u64 = 253_402_300_799;

/// Whether a write created the object or found it already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Unix seconds; `None` when unknown, which counts as locked forever.
    pub retain_until: Option<u64>,
    pub legal_hold: bool,
    /// BLAKE3 of the bytes, as recorded when they were written (for scrub).
    pub digest: Option<[u8; 32]>,
    /// The data key that sealed the object, as recorded when it was written
    /// (chunks; for expiry, which deletes key records nothing needs).
    pub sealed_by: Option<KeyId>,
    /// The upload scope that wrote the object, as recorded when it was
    /// written (chunks; `None` for uploads from before scopes).
    pub scope: Option<Scope>,
    /// When the store wrote it, in unix seconds by the store's own clock
    /// (S3's `Last-Modified`, the file's mtime), where known.
    pub modified: Option<u64>,
}

/// What a store records beside an object when writing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// BLAKE3 of the bytes.
    pub digest: [u8; 32],
    /// The data key that sealed them, where the caller knows it.
    pub sealed_by: Option<KeyId>,
    /// The upload scope of the identity that sent them (chunks).
    pub scope: Option<Scope>,
}

impl ObjectMeta {
    /// Whether the object at `key` may be deleted at `now`: its lock must
    /// have ended and no legal hold be on it. An unknown lock counts as
    /// forever.
    pub fn deletable(&self, key: &str, now: u64) -> Result<(), StoreError> {
        match self.retain_until {
            Some(until) if until <= now && !self.legal_hold => Ok(()),
            Some(until) if !self.legal_hold => Err(StoreError::Locked { key: key.to_string(), until }),
            _ => Err(StoreError::Locked { key: key.to_string(), until: u64::MAX }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("object {key} is locked until {until}")]
    Locked { key: String, until: u64 },
    #[error("object {0} not found")]
    NotFound(String),
    #[error("store I/O on {key}: {source}")]
    Io { key: String, source: std::io::Error },
    /// An object store service refused or failed (after the SDK's own retries).
    #[error("object store, {key}: {message}")]
    Backend { key: String, message: String, retryable: bool },
    /// The bucket cannot keep Coffer's promises (no Object Lock, no
    /// versioning) or could not be checked: the proxy refuses to start.
    #[error("bucket {bucket}: {problem}")]
    Unfit { bucket: String, problem: String },
}

impl StoreError {
    /// Whether trying again may succeed: S3 5xx, SlowDown, timeouts and
    /// connection failures are; locks, 403 and 404 are not.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            StoreError::Backend { retryable, .. } => *retryable,
            StoreError::Locked { .. } | StoreError::NotFound(_) | StoreError::Unfit { .. } => false,
        }
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes `body` at `key` with a lock until `retain_until`, unless an
    /// object is already there: then nothing changes and `Exists` is returned.
    /// A reader never sees a partial object. `recorded` (the BLAKE3 of
    /// `body`, which the caller often has already, and the key that sealed
    /// it) is kept beside the object and returned by `head`.
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        retain_until: u64,
        recorded: Recorded,
    ) -> Result<PutOutcome, StoreError>;

    /// [`put_object`](Self::put_object), hashing the body here.
    async fn put_new(&self, key: &str, body: Bytes, retain_until: u64) -> Result<PutOutcome, StoreError> {
        let recorded = Recorded { digest: *blake3::hash(&body).as_bytes(), sealed_by: None, scope: None };
        self.put_object(key, body, retain_until, recorded).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// The first `len` bytes of the object at `key` (all of it if shorter):
    /// a ranged read, for the header of a large object. Required of every
    /// store, wrappers included: a default that read the whole object
    /// would quietly undo the bound on memory it exists for.
    async fn get_head(&self, key: &str, len: usize) -> Result<Option<Bytes>, StoreError>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// Keys that start with `prefix`: everything under a folder when it
    /// ends with `/`, else the keys of its last folder whose names start
    /// with the rest.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// The folders directly under `prefix` (`""` or ending with `/`), each
    /// as a prefix ending with `/`: how repositories are found without
    /// listing their chunks. Required of every store, wrappers included.
    async fn folders(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Moves the lock to `until` if that is later; never shortens it.
    async fn extend_retention(&self, key: &str, until: u64) -> Result<(), StoreError>;
    /// Puts or lifts a legal hold: a held object cannot be deleted whatever
    /// its retain-until.
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError>;
    /// Deletes an object whose lock has ended; refuses otherwise.
    async fn delete(&self, key: &str, now: u64) -> Result<(), StoreError>;
    /// Keys under `prefix` that were written more than once or hidden by a
    /// delete marker: what a versioned bucket keeps when someone with write
    /// access puts over a locked object (a new version; the locked one
    /// stays) or deletes without a version id. A store that cannot record
    /// either (the filesystem store never replaces a name) has none.
    async fn rewritten(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let _ = prefix;
        Ok(Vec::new())
    }
}

/// Runs `op` on every item with at most `limit` in flight, and returns the
/// results in the items' order (or the first error). How an API call sends
/// the store what it must ask: concurrently, never one object at a time.
pub async fn fan_out<T, R, E, F, Fut>(limit: usize, items: impl IntoIterator<Item = T>, op: F) -> Result<Vec<R>, E>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = Result<R, E>>,
{
    use futures_util::{StreamExt as _, TryStreamExt as _};
    futures_util::stream::iter(items.into_iter().map(op)).buffered(limit.max(1)).try_collect().await
}
