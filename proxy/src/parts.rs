//! The parts a configuration names, opened: the object store (to write,
//! or only to read) and the key checker. The server builds from them; the
//! reports and `audit verify --store` read through them.

use std::path::Path;
use std::sync::Arc;

use std::path::PathBuf;

use crate::access::policy::PolicyError;
use crate::access::trust::TrustError;
use crate::config::{ConfigError, KeysConfig, MasterKeyError, ProxyConfig, StoreConfig};
use crate::keycheck::{KeyChecker, KmsKeyChecker, LocalKeyChecker};
use crate::store::{FsStore, ObjectStore, S3Store, StoreError};

/// Why the proxy (or a command reading its store) cannot start as
/// configured. Each names what to fix; the command line exits 64.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file or folder the proxy must read or write.
    #[error("{what} {}: {problem}", path.display())]
    Path { what: &'static str, path: PathBuf, problem: String },
    /// What the store holds contradicts what the proxy wrote.
    #[error("{0}")]
    Tampered(String),
}

impl SetupError {
    pub(crate) fn path(what: &'static str, path: &Path, problem: impl std::fmt::Display) -> Self {
        SetupError::Path { what, path: path.to_path_buf(), problem: problem.to_string() }
    }
}

pub(crate) fn writable(what: &'static str, p: &Path) -> Result<(), SetupError> {
    let existing = p.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if std::fs::metadata(existing).map(|m| m.permissions().readonly()).unwrap_or(true) {
        return Err(SetupError::path(what, p, format!("{} is not writable", existing.display())));
    }
    Ok(())
}

pub(crate) async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Opens the configured store; an S3 bucket is checked (Object Lock, and
/// a probe write for versioning) on the way.
pub async fn open_store(cfg: &ProxyConfig) -> Result<Arc<dyn ObjectStore>, SetupError> {
    Ok(match &cfg.store {
        StoreConfig::Fs { path } => Arc::new(FsStore::open(path).map_err(|e| SetupError::path("store", path, e))?),
        StoreConfig::S3(s3) => Arc::new(S3Store::connect(s3, &aws_sdk_config().await).await?),
    })
}

/// Opens the configured store to read it (reports, audit verification):
/// nothing is written, and no folder is created.
pub async fn open_store_to_read(cfg: &ProxyConfig) -> Result<Arc<dyn ObjectStore>, SetupError> {
    Ok(match &cfg.store {
        StoreConfig::Fs { path } => {
            if !path.exists() {
                return Err(SetupError::path("store", path, "does not exist"));
            }
            Arc::new(FsStore::open(path).map_err(|e| SetupError::path("store", path, e))?)
        }
        StoreConfig::S3(s3) => Arc::new(S3Store::open(s3, &aws_sdk_config().await).await?),
    })
}

pub async fn key_checker(cfg: &ProxyConfig) -> Result<Arc<dyn KeyChecker>, SetupError> {
    Ok(match &cfg.keys {
        KeysConfig::Local { master_key, .. } => {
            Arc::new(LocalKeyChecker::new(crate::config::read_master_key(master_key)?))
        }
        KeysConfig::Kms(kms) => Arc::new(KmsKeyChecker::new(kms.clone(), &aws_sdk_config().await)),
    })
}

/// The audit segments this proxy shipped to its store, in order.
pub async fn stored_audit(cfg: &ProxyConfig) -> Result<Vec<(String, String)>, SetupError> {
    let store = open_store_to_read(cfg).await?;
    let prefix = crate::audit::ship::store_prefix(&cfg.proxy_id);
    // A shipped segment is written once. A second version (someone with the
    // proxy's write access put over the locked one, perhaps re-chained and
    // re-signed with the proxy's own key) or a delete marker is tampering,
    // however well the latest version verifies.
    let rewritten = store.rewritten(&prefix).await?;
    if !rewritten.is_empty() {
        return Err(SetupError::Tampered(format!(
            "audit segments were written again or deleted after they were shipped (the locked originals stay \
             in the bucket's version history; compare them): {}",
            rewritten.join(", ")
        )));
    }
    let mut out = Vec::new();
    let checkpoints = format!("{prefix}{}", crate::audit::checkpoint::FOLDER);
    for key in store.list(&prefix).await? {
        if key.starts_with(&checkpoints) {
            continue;
        }
        let body = store.get(&key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        out.push((key, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(out)
}

/// The audit checkpoints this proxy shipped of events after `after` (the
/// shipped segments' end: those before are vouched for by the segments),
/// and any stored under a name that is not a seq: (key, text) each.
pub async fn stored_checkpoints(cfg: &ProxyConfig, after: u64) -> Result<Vec<(String, String)>, SetupError> {
    let store = open_store_to_read(cfg).await?;
    let prefix = format!("{}{}", crate::audit::ship::store_prefix(&cfg.proxy_id), crate::audit::checkpoint::FOLDER);
    let mut out = Vec::new();
    for key in store.list(&prefix).await? {
        if crate::audit::checkpoint::seq_of_key(&key).is_some_and(|seq| seq <= after) {
            continue;
        }
        let body = store.get(&key).await?.ok_or_else(|| StoreError::NotFound(key.clone()))?;
        out.push((key, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(out)
}
