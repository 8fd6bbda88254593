//! The filesystem store, the embedded default.
//!
//! `objects/<key>` holds the bytes, `locks/<key>` the retain-until (JSON).
//! An object is written to a temporary file, fsync'd, then hard-linked into
//! place (which, unlike rename, fails if the name exists, so nothing is ever
//! replaced), and the folder is fsync'd. Its lock file is written after the
//! link; an object without a lock file counts as locked forever.

use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ObjectMeta, ObjectStore, PutOutcome, Recorded, StoreError};

/// Cheap to clone: clones share the root.
#[derive(Clone)]
pub struct FsStore {
    root: Arc<Path>,
}

#[derive(Serialize, Deserialize)]
struct Lock {
    retain_until: u64,
    #[serde(default)]
    legal_hold: bool,
    /// BLAKE3 of the object as written, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    /// The key id that sealed the object, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_by: Option<String>,
    /// The upload scope that wrote the object, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl Lock {
    /// The lock file for `meta` with a new date and hold.
    fn from_meta(meta: &ObjectMeta, retain_until: u64, legal_hold: bool) -> Self {
        Lock {
            retain_until,
            legal_hold,
            blake3: meta.digest.map(hex::encode),
            sealed_by: meta.sealed_by.map(|k| k.to_string()),
            scope: meta.scope.map(|s| s.to_string()),
        }
    }
}

fn digest_of(lock: Option<&Lock>) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(lock?.blake3.as_ref()?, &mut out).ok()?;
    Some(out)
}

fn io(key: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { key: key.to_string(), source }
}

fn temp_name() -> String {
    let mut r = [0u8; 8];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    format!(".tmp-{}", hex::encode(r))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `body` to `path` through a temporary file and an fsync; with
/// `replace`, renames over any old file, otherwise links without replacing.
fn write_atomic(path: &Path, body: &[u8], replace: bool) -> std::io::Result<PutOutcome> {
    let dir = path.parent().expect("store paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(temp_name());
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)?;
            return Ok(PutOutcome::Created);
        }
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(PutOutcome::Exists),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let outcome = result?;
    fsync_dir(dir)?;
    Ok(outcome)
}

impl FsStore {
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root: PathBuf = root.into();
        std::fs::create_dir_all(root.join("objects"))?;
        std::fs::create_dir_all(root.join("locks"))?;
        Ok(Self { root: root.into() })
    }

    fn object(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    fn lock(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(key)
    }

    fn read_lock(&self, key: &str) -> Result<Option<Lock>, StoreError> {
        match std::fs::read(self.lock(key)) {
            Ok(b) => Ok(serde_json::from_slice::<Lock>(&b).ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(key)(e)),
        }
    }

    fn write_lock(&self, key: &str, lock: &Lock) -> Result<(), StoreError> {
        let body = serde_json::to_vec(lock).expect("serialises");
        write_atomic(&self.lock(key), &body, true).map_err(io(key))?;
        Ok(())
    }

    fn head_sync(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match std::fs::metadata(self.object(key)) {
            Ok(m) => {
                let lock = self.read_lock(key)?;
                Ok(Some(ObjectMeta {
                    size: m.len(),
                    retain_until: lock.as_ref().map(|l| l.retain_until),
                    legal_hold: lock.as_ref().is_some_and(|l| l.legal_hold),
                    digest: digest_of(lock.as_ref()),
                    sealed_by: lock.as_ref().and_then(|l| l.sealed_by.as_ref()?.parse().ok()),
                    scope: lock.as_ref().and_then(|l| l.scope.as_ref()?.parse().ok()),
                    modified: m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                }))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(key)(e)),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("store task panicked")
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        retain_until: u64,
        recorded: Recorded,
    ) -> Result<PutOutcome, StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || {
            let outcome = write_atomic(&s.object(&key), &body, false).map_err(io(&key))?;
            if outcome == PutOutcome::Created {
                let lock = Lock {
                    retain_until,
                    legal_hold: false,
                    blake3: Some(hex::encode(recorded.digest)),
                    sealed_by: recorded.sealed_by.map(|k| k.to_string()),
                    scope: recorded.scope.map(|s| s.to_string()),
                };
                s.write_lock(&key, &lock)?;
            }
            Ok(outcome)
        })
        .await
    }

    async fn get_head(&self, key: &str, len: usize) -> Result<Option<Bytes>, StoreError> {
        use std::io::Read as _;
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || match std::fs::File::open(s.object(&key)) {
            Ok(f) => {
                // What the file holds, not the bound: a bound is often large.
                let size = f.metadata().map_or(0, |m| m.len());
                let mut out = Vec::with_capacity(len.min(usize::try_from(size).unwrap_or(len)));
                f.take(len as u64).read_to_end(&mut out).map_err(io(&key))?;
                Ok(Some(Bytes::from(out)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&key)(e)),
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || match std::fs::read(s.object(&key)) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&key)(e)),
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || s.head_sync(&key)).await
    }

    async fn folders(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (s, prefix) = (self.clone(), prefix.to_string());
        blocking(move || {
            let entries = match std::fs::read_dir(s.root.join("objects").join(&prefix)) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io(&prefix)(e)),
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(io(&prefix))?;
                if entry.file_type().map_err(io(&prefix))?.is_dir() {
                    out.push(format!("{prefix}{}/", entry.file_name().to_string_lossy()));
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (s, prefix) = (self.clone(), prefix.to_string());
        blocking(move || {
            let base = s.root.join("objects");
            // A prefix that does not end a folder: its folder, filtered.
            let folder = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
            let mut out = Vec::new();
            let mut stack = vec![base.join(folder)];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&prefix)(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io(&prefix))?;
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(".tmp-") {
                        continue;
                    }
                    let path = entry.path();
                    let Ok(rel) = path.strip_prefix(&base) else { continue };
                    let rel = rel.to_string_lossy().into_owned();
                    if entry.file_type().map_err(io(&prefix))?.is_dir() {
                        if format!("{rel}/").starts_with(&prefix) || prefix.starts_with(&format!("{rel}/")) {
                            stack.push(path);
                        }
                    } else if rel.starts_with(&prefix) {
                        out.push(rel);
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn extend_retention(&self, key: &str, until: u64) -> Result<(), StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || {
            let meta = s.head_sync(&key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            match meta.retain_until {
                Some(current) if current >= until => Ok(()),
                // No lock file means locked forever: nothing to extend.
                None => Ok(()),
                Some(_) => s.write_lock(&key, &Lock::from_meta(&meta, until, meta.legal_hold)),
            }
        })
        .await
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || {
            let meta = s.head_sync(&key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            // An object without a lock file is locked forever; keep it so.
            let retain_until = meta.retain_until.unwrap_or(u64::MAX);
            s.write_lock(&key, &Lock::from_meta(&meta, retain_until, on))
        })
        .await
    }

    async fn delete(&self, key: &str, now: u64) -> Result<(), StoreError> {
        let (s, key) = (self.clone(), key.to_string());
        blocking(move || {
            let meta = s.head_sync(&key)?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
            meta.deletable(&key, now)?;
            std::fs::remove_file(s.object(&key)).map_err(io(&key))?;
            let _ = std::fs::remove_file(s.lock(&key));
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_once_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        let key = "dev/db/chunks/ab/abcd";
        let sealed_by = Some(coffer_proto::KeyId::from_bytes([9; 16]));
        let scope = Some(coffer_proto::Scope::from_bytes([3; 8]));
        let recorded = Recorded { digest: *blake3::hash(b"one").as_bytes(), sealed_by, scope };
        assert_eq!(s.put_object(key, Bytes::from_static(b"one"), 100, recorded).await.unwrap(), PutOutcome::Created);
        assert_eq!(s.put_new(key, Bytes::from_static(b"two"), 1).await.unwrap(), PutOutcome::Exists);
        assert_eq!(s.get(key).await.unwrap().unwrap(), Bytes::from_static(b"one"));
        assert_eq!(s.get_head(key, 2).await.unwrap().unwrap(), Bytes::from_static(b"on"), "a ranged read");
        assert_eq!(s.get_head(key, 10).await.unwrap().unwrap(), Bytes::from_static(b"one"));
        assert!(s.get_head("dev/none", 2).await.unwrap().is_none());
        // The second put must not have touched the lock either.
        let head = s.head(key).await.unwrap().unwrap();
        assert!(head.modified.is_some_and(|t| t.abs_diff(crate::unix_now()) < 60), "{head:?}");
        assert_eq!(
            head,
            ObjectMeta {
                size: 3,
                retain_until: Some(100),
                legal_hold: false,
                digest: Some(recorded.digest),
                sealed_by,
                scope,
                modified: head.modified,
            }
        );

        assert!(matches!(s.delete(key, 99).await, Err(StoreError::Locked { until: 100, .. })));
        s.extend_retention(key, 50).await.unwrap();
        assert_eq!(s.head(key).await.unwrap().unwrap().retain_until, Some(100), "never shortened");
        s.extend_retention(key, 200).await.unwrap();
        assert_eq!(s.head(key).await.unwrap().unwrap().retain_until, Some(200));
        assert!(s.delete(key, 150).await.is_err());
        s.set_legal_hold(key, true).await.unwrap();
        assert!(s.delete(key, 300).await.is_err(), "a held object outlives its lock");
        let held = s.head(key).await.unwrap().unwrap();
        assert_eq!(held.retain_until, Some(200), "a hold keeps the date");
        assert_eq!(
            (held.digest, held.sealed_by, held.scope),
            (Some(recorded.digest), sealed_by, scope),
            "and what was recorded"
        );
        s.set_legal_hold(key, false).await.unwrap();
        s.delete(key, 200).await.unwrap();
        assert!(s.get(key).await.unwrap().is_none());

        assert_eq!(s.list("dev/").await.unwrap(), Vec::<String>::new());
        for key in ["dev/db/chunks/ab/abcd", "dev/db/chunks/ab/abcd.01", "dev/db/chunks/ab/abce"] {
            s.put_new(key, Bytes::from_static(b"c"), 1).await.unwrap();
        }
        assert_eq!(
            s.list("dev/db/chunks/ab/abcd").await.unwrap(),
            ["dev/db/chunks/ab/abcd", "dev/db/chunks/ab/abcd.01"],
            "a prefix within a folder's names"
        );
        assert_eq!(s.list("dev/db/chunks/").await.unwrap().len(), 3);
        for key in ["dev/db/chunks/ab/abcd", "dev/db/chunks/ab/abcd.01", "dev/db/chunks/ab/abce"] {
            s.delete(key, 2).await.unwrap();
        }
        s.put_new("dev/db/config", Bytes::from_static(b"c"), 1).await.unwrap();
        assert_eq!(s.list("dev/db/").await.unwrap(), vec!["dev/db/config".to_string()]);
    }

    #[tokio::test]
    async fn object_without_lock_file_is_locked_forever() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::open(dir.path()).unwrap();
        s.put_new("a/config", Bytes::from_static(b"x"), 1).await.unwrap();
        std::fs::remove_file(dir.path().join("locks/a/config")).unwrap();
        assert!(matches!(s.delete("a/config", u64::MAX - 1).await, Err(StoreError::Locked { .. })));
    }
}
