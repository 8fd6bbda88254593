//! Opening a repository: fetch its config, unwrap its chunk-id key. Backup
//! and restore take an [`OpenRepo`], so neither can run on a repository that
//! was not initialised and opened first.

use std::collections::HashMap;
use std::sync::Arc;

use coffer_proto::keys::{DataKey, IdKey, KeyRecord, Purpose};
use coffer_proto::repo::{ChunkerParams, RepoConfig, CONFIG_VERSION, DEFAULT_ZSTD_LEVEL};
use coffer_proto::{KeyId, RepoName};
use http::StatusCode;
use tokio::sync::Mutex;

use crate::client::{ClientError, ProxyClient};
use crate::keys::{new_key, open_record, KeyError, KeyProvider};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("repository {0} is not initialised: run `coffer init --repo {0}` first")]
    NotInitialised(RepoName),
    #[error("repository {0} is already initialised")]
    AlreadyInitialised(RepoName),
    #[error("repository {repo}: {message}")]
    BadObject { repo: RepoName, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// An initialised repository with its chunk-id key unwrapped.
pub struct OpenRepo {
    pub client: ProxyClient,
    pub provider: Arc<dyn KeyProvider>,
    pub name: RepoName,
    pub config: RepoConfig,
    pub id_key: IdKey,
    data_keys: Mutex<HashMap<KeyId, Arc<DataKey>>>,
}

/// Creates the repository's config with a new chunk-id key.
pub async fn init(client: &ProxyClient, provider: &dyn KeyProvider, name: &RepoName) -> Result<RepoConfig, RepoError> {
    let (_idk, id_key) = new_key(provider, name, Purpose::ChunkId).await?;
    let config = RepoConfig {
        version: CONFIG_VERSION,
        repo: name.clone(),
        chunker: ChunkerParams::default(),
        zstd_level: DEFAULT_ZSTD_LEVEL,
        id_key,
        created: crate::unix_now(),
    };
    match client.put_config(name, config.encode()).await {
        Err(e) if e.status() == Some(StatusCode::CONFLICT) => Err(RepoError::AlreadyInitialised(name.clone())),
        other => other.map(|()| config).map_err(Into::into),
    }
}

impl OpenRepo {
    pub async fn open(client: ProxyClient, provider: Arc<dyn KeyProvider>, name: RepoName) -> Result<Self, RepoError> {
        let bytes = match client.get_config(&name).await {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Err(RepoError::NotInitialised(name)),
            other => other?,
        };
        let bad = |message: String| RepoError::BadObject { repo: name.clone(), message };
        let config = RepoConfig::decode(&bytes).map_err(|e| bad(format!("config: {e}")))?;
        if config.repo != name {
            return Err(bad(format!("config names repository {}", config.repo)));
        }
        let rec = &config.id_key;
        let id_key = IdKey::from_data_key(open_record(&*provider, rec, &name, Purpose::ChunkId, rec.key_id).await?);
        Ok(Self { client, provider, name, config, id_key, data_keys: Mutex::new(HashMap::new()) })
    }

    /// Fetches and unwraps a data key, once per key id.
    pub async fn data_key(&self, key_id: KeyId) -> Result<Arc<DataKey>, RepoError> {
        let mut keys = self.data_keys.lock().await;
        if let Some(k) = keys.get(&key_id) {
            return Ok(k.clone());
        }
        let bytes = self.client.get_key(&self.name, key_id).await?;
        let record = KeyRecord::decode(&bytes)
            .map_err(|e| RepoError::BadObject { repo: self.name.clone(), message: format!("key {key_id}: {e}") })?;
        let key = Arc::new(open_record(&*self.provider, &record, &self.name, Purpose::Data, key_id).await?);
        keys.insert(key_id, key.clone());
        Ok(key)
    }

    /// Makes a new data key and stores its wrapped record, which must be
    /// in the repository before any envelope sealed with it.
    pub async fn new_data_key(&self) -> Result<(KeyId, Arc<DataKey>), RepoError> {
        let (key, record) = new_key(&*self.provider, &self.name, Purpose::Data).await?;
        self.client.put_key(&self.name, record.key_id, record.encode()).await?;
        Ok((record.key_id, Arc::new(key)))
    }
}
