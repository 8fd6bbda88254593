//! Opening a repository: fetch its config, unwrap its chunk-id key. Backup
//! and restore take an [`OpenRepo`], so neither can run on a repository that
//! was not initialised and opened first.

use std::collections::HashMap;
use std::sync::Arc;

use coffer_proto::keys::{DataKey, IdKey, KeyRecord, Purpose};
use coffer_proto::repo::{ChunkerParams, RepoConfig, CONFIG_VERSION};
use coffer_proto::{KeyId, RepoName};
use http::StatusCode;
use tokio::sync::Mutex;

use crate::keys::{new_key, open_record, KeyError, KeyProvider};
use coffer_client::{ClientError, ProxyClient};

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

/// An initialised repository with its chunk-id keys unwrapped.
pub struct OpenRepo {
    pub client: ProxyClient,
    pub provider: Arc<dyn KeyProvider>,
    pub name: RepoName,
    pub config: RepoConfig,
    /// The chunk-id key new backups use: the newest epoch's.
    pub id_key: Arc<IdKey>,
    /// Its key id, when it is an epoch's rather than the config's.
    pub id_key_epoch: Option<KeyId>,
    /// The chunker's gear tables, keyed by the config's chunk-id key (None
    /// for a legacy repository: FastCDC's public tables).
    pub gear: Option<crate::cutter::GearTables>,
    /// Every chunk-id key of the repository, for restores.
    id_keys: HashMap<KeyId, Arc<IdKey>>,
    data_keys: Mutex<HashMap<KeyId, Arc<tokio::sync::OnceCell<Arc<DataKey>>>>>,
    /// Bandwidth limits this run observes (none by default).
    pub limits: crate::limit::Limits,
    /// What this host remembers of the repository's snapshots (none: the
    /// agent has no state folder).
    pub memory: Option<crate::memory::Memory>,
}

/// Starts a new chunk-id key epoch (`coffer key rotate`): later backups
/// name chunks with the new key, so dedup starts over; older snapshots keep
/// restoring with theirs. Returns the new key's id.
pub async fn rotate(client: &ProxyClient, provider: &dyn KeyProvider, name: &RepoName) -> Result<KeyId, RepoError> {
    let (_idk, key) = new_key(provider, name, Purpose::ChunkId).await?;
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let id = key.key_id;
    let epoch = coffer_proto::repo::Epoch { version: CONFIG_VERSION, created, key };
    match client.put_epoch(name, id, epoch.encode()).await {
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(RepoError::NotInitialised(name.clone())),
        other => other.map(|()| id).map_err(Into::into),
    }
}

/// Creates the repository's config with a new chunk-id key, compressing
/// its chunks at `zstd_level`.
pub async fn init(
    client: &ProxyClient,
    provider: &dyn KeyProvider,
    name: &RepoName,
    zstd_level: i32,
) -> Result<RepoConfig, RepoError> {
    let (idk, id_key) = new_key(provider, name, Purpose::ChunkId).await?;
    let mut config = RepoConfig {
        version: CONFIG_VERSION,
        repo: name.clone(),
        chunker: ChunkerParams::default(),
        zstd_level,
        id_key,
        created: crate::unix_now(),
        mac: None,
    };
    config.authenticate(&IdKey::from_data_key(idk));
    match client.put_config(name, config.encode()).await {
        Err(e) if e.status() == Some(StatusCode::CONFLICT) => Err(RepoError::AlreadyInitialised(name.clone())),
        other => other.map(|()| config).map_err(Into::into),
    }
}

impl OpenRepo {
    /// Opens a repository: its config (authenticated under its chunk-id
    /// key, or a legacy one when `legacy_ok`, then only with chunker sizes
    /// above the floors) and its chunk-id keys.
    pub async fn open(
        client: ProxyClient,
        provider: Arc<dyn KeyProvider>,
        name: RepoName,
        legacy_ok: bool,
    ) -> Result<Self, RepoError> {
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
        let first =
            Arc::new(IdKey::from_data_key(open_record(&*provider, rec, &name, Purpose::ChunkId, rec.key_id).await?));
        let gear =
            match config.check_mac(&first) {
                Ok(true) => Some(first.gear_tables()),
                Ok(false) if legacy_ok => {
                    config.check_legacy_floors().map_err(|e| bad(format!("config: {e}")))?;
                    None
                }
                Ok(false) => return Err(bad(
                    "its config is not authenticated (made before configs were, or its MAC was stripped on the way): \
                     if it is an old repository, list it in backup.legacy_repos"
                        .into(),
                )),
                Err(e) => return Err(bad(format!("config: {e}"))),
            };
        let mut id_keys = HashMap::from([(rec.key_id, first.clone())]);
        let (mut id_key, mut id_key_epoch) = (first, None);
        for epoch in client.list_epochs(&name).await? {
            let k = &epoch.key;
            let key =
                Arc::new(IdKey::from_data_key(open_record(&*provider, k, &name, Purpose::ChunkId, k.key_id).await?));
            id_keys.insert(k.key_id, key.clone());
            (id_key, id_key_epoch) = (key, Some(k.key_id));
        }
        Ok(Self {
            client,
            provider,
            name,
            config,
            id_key,
            id_key_epoch,
            gear,
            id_keys,
            data_keys: Mutex::new(HashMap::new()),
            limits: Default::default(),
            memory: None,
        })
    }

    /// The same, observing `limits`.
    pub fn with_limits(mut self, limits: crate::limit::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same, remembering its snapshots under `state_dir` (none: no
    /// memory).
    pub fn with_memory(mut self, state_dir: Option<&std::path::Path>, proxy: &str) -> Self {
        self.memory = state_dir.map(|dir| crate::memory::Memory::at(dir, proxy, &self.name));
        self
    }

    /// Checks a listing against what this host remembers (see
    /// [`crate::memory`]): the problems it finds. A memory that cannot be
    /// read or written is a warning, not a failed listing.
    pub fn check_listing(&self, listing: &[coffer_proto::api::SnapshotInfo]) -> Vec<String> {
        crate::memory::check_listing(self.memory.as_ref(), listing)
    }

    /// The chunk-id key a snapshot was made with (None: the config's).
    pub fn id_key_for(&self, epoch: Option<KeyId>) -> Option<Arc<IdKey>> {
        self.id_keys.get(&epoch.unwrap_or(self.config.id_key.key_id)).cloned()
    }

    /// Fetches and unwraps a data key, once per key id: callers asking for
    /// the same key wait for one fetch (one KMS call), callers asking for
    /// different keys do not wait for each other.
    pub async fn data_key(&self, key_id: KeyId) -> Result<Arc<DataKey>, RepoError> {
        self.data_key_with(key_id, None).await
    }

    /// As [`Self::data_key`], from `record` when the caller has the key's
    /// record already (a listing's copy): it is checked and unwrapped the
    /// same way as a fetched one.
    pub async fn data_key_with(&self, key_id: KeyId, record: Option<&[u8]>) -> Result<Arc<DataKey>, RepoError> {
        let cell = self.data_keys.lock().await.entry(key_id).or_default().clone();
        cell.get_or_try_init(|| async {
            let bytes = match record {
                Some(bytes) => bytes::Bytes::copy_from_slice(bytes),
                None => self.client.get_key(&self.name, key_id).await?,
            };
            let record = KeyRecord::decode(&bytes)
                .map_err(|e| RepoError::BadObject { repo: self.name.clone(), message: format!("key {key_id}: {e}") })?;
            Ok(Arc::new(open_record(&*self.provider, &record, &self.name, Purpose::Data, key_id).await?))
        })
        .await
        .cloned()
    }

    /// Makes a new data key and stores its wrapped record, which must be
    /// in the repository before any envelope sealed with it.
    pub async fn new_data_key(&self) -> Result<(KeyId, Arc<DataKey>), RepoError> {
        let (key, record) = new_key(&*self.provider, &self.name, Purpose::Data).await?;
        self.client.put_key(&self.name, record.key_id, record.encode()).await?;
        Ok((record.key_id, Arc::new(key)))
    }
}
