//! Checks on uploaded key records: is the KEK one this deployment allows,
//! is the record bound to this repository, and was it really made by that
//! KEK under that context?

use async_trait::async_trait;
use coffer_proto::keys::{KeyRecord, LocalKek};
use coffer_proto::RepoName;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyCheckError {
    #[error("key-encryption key {0} is not allowed here")]
    KekNotAllowed(String),
    #[error("the key record's encryption context does not bind it to repository {0}")]
    WrongContext(RepoName),
    #[error("the key record was not made by {0} under its context")]
    NotGenuine(String),
}

#[async_trait]
pub trait KeyChecker: Send + Sync {
    async fn check(&self, record: &KeyRecord, repo: &RepoName) -> Result<(), KeyCheckError>;
}

/// The local provider's checker. The proxy holds the master key in dev mode
/// (the same host holds everything there), so it proves a record genuine by
/// unwrapping it and dropping the key at once.
pub struct LocalKeyChecker {
    kek: LocalKek,
}

impl LocalKeyChecker {
    pub fn new(kek: LocalKek) -> Self {
        Self { kek }
    }
}

#[async_trait]
impl KeyChecker for LocalKeyChecker {
    async fn check(&self, record: &KeyRecord, repo: &RepoName) -> Result<(), KeyCheckError> {
        if record.kek != self.kek.id() {
            return Err(KeyCheckError::KekNotAllowed(record.kek.clone()));
        }
        if !record.context.matches(repo, record.purpose, record.key_id) {
            return Err(KeyCheckError::WrongContext(repo.clone()));
        }
        self.kek
            .decrypt(&record.wrapped, &record.context)
            .map(drop)
            .map_err(|_| KeyCheckError::NotGenuine(record.kek.clone()))
    }
}
