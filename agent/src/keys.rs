//! Key providers: where the agent gets data keys and unwraps them.
//!
//! The trait is shaped after AWS KMS (`GenerateDataKey`, `Decrypt`,
//! `DescribeKey`) so that the KMS provider drops in beside the local one.

use std::path::Path;

use async_trait::async_trait;
use coffer_proto::keys::{DataKey, EncryptionContext, KeyRecord, LocalKek, Purpose, KEY_RECORD_VERSION};
use coffer_proto::{KeyId, RepoName};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read the master key file {path}: {source}")]
    ReadMasterKey { path: String, source: std::io::Error },
    #[error("master key file {path} must not be readable by group or others (chmod 600)")]
    MasterKeyMode { path: String },
    #[error("invalid master key file {path}: {reason}")]
    MasterKeyFormat { path: String, reason: String },
    #[error("key {key_id} was wrapped by {record_kek}, but this agent's key provider is {provider_kek}")]
    WrongKek { key_id: KeyId, record_kek: String, provider_kek: String },
    #[error("key {key_id} could not be unwrapped: wrong key-encryption key or altered record")]
    Unwrap { key_id: KeyId },
    #[error("key record {key_id} is not bound to repository {repo} for this purpose")]
    WrongContext { key_id: KeyId, repo: RepoName },
    #[error("AWS KMS: {0}")]
    Kms(String),
}

/// What the provider can say about its key-encryption key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDescription {
    pub kek: String,
    pub enabled: bool,
}

#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// A fresh data key under `ctx`: the plaintext and its wrapped blob.
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<(DataKey, Vec<u8>), KeyError>;
    /// Unwraps `wrapped`, which must have been made by `kek` under `ctx`.
    async fn decrypt(
        &self,
        kek: &str,
        key_id: KeyId,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KeyError>;
    /// The KEK this provider wraps new keys of `purpose` with.
    async fn describe_key(&self, purpose: Purpose) -> Result<KeyDescription, KeyError>;
}

/// Makes a data key and the record to store it under: the one operation
/// both `init` (chunk-id key) and `backup` (data key) need.
pub async fn new_key(
    provider: &dyn KeyProvider,
    repo: &RepoName,
    purpose: Purpose,
) -> Result<(DataKey, KeyRecord), KeyError> {
    let key_id = KeyId::random();
    let context = EncryptionContext::new(repo, purpose, key_id);
    let (key, wrapped) = provider.generate_data_key(&context).await?;
    let kek = provider.describe_key(purpose).await?.kek;
    Ok((key, KeyRecord { version: KEY_RECORD_VERSION, key_id, purpose, kek, context, wrapped }))
}

/// Unwraps a record after checking it is bound to `repo`, `purpose` and
/// `key_id`: a record copied from another repository is refused.
pub async fn open_record(
    provider: &dyn KeyProvider,
    record: &KeyRecord,
    repo: &RepoName,
    purpose: Purpose,
    key_id: KeyId,
) -> Result<DataKey, KeyError> {
    if record.key_id != key_id || record.purpose != purpose || !record.context.matches(repo, purpose, key_id) {
        return Err(KeyError::WrongContext { key_id, repo: repo.clone() });
    }
    provider.decrypt(&record.kek, key_id, &record.wrapped, &record.context).await
}

/// The local provider: a master-key file that must be mode 0600.
pub struct LocalProvider {
    kek: LocalKek,
}

impl LocalProvider {
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta =
                std::fs::metadata(path).map_err(|source| KeyError::ReadMasterKey { path: shown.clone(), source })?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(KeyError::MasterKeyMode { path: shown });
            }
        }
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyError::ReadMasterKey { path: shown.clone(), source })?,
        );
        let kek = LocalKek::from_file_contents(&text)
            .map_err(|e| KeyError::MasterKeyFormat { path: shown, reason: e.to_string() })?;
        Ok(Self { kek })
    }
}

#[async_trait]
impl KeyProvider for LocalProvider {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<(DataKey, Vec<u8>), KeyError> {
        Ok(self.kek.generate_data_key(ctx))
    }

    async fn decrypt(
        &self,
        kek: &str,
        key_id: KeyId,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KeyError> {
        if kek != self.kek.id() {
            return Err(KeyError::WrongKek {
                key_id,
                record_kek: kek.to_string(),
                provider_kek: self.kek.id().to_string(),
            });
        }
        self.kek.decrypt(wrapped, ctx).map_err(|_| KeyError::Unwrap { key_id })
    }

    async fn describe_key(&self, _purpose: Purpose) -> Result<KeyDescription, KeyError> {
        Ok(KeyDescription { kek: self.kek.id().to_string(), enabled: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn master_key_mode_and_records() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let (_, contents) = LocalKek::generate();
        std::fs::write(&p, contents.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(LocalProvider::open(&p), Err(KeyError::MasterKeyMode { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let provider = LocalProvider::open(&p).unwrap();

        let repo: RepoName = "dev/db".parse().unwrap();
        let (key, record) = new_key(&provider, &repo, Purpose::Data).await.unwrap();
        let back = open_record(&provider, &record, &repo, Purpose::Data, record.key_id).await.unwrap();
        assert_eq!(back.expose_secret(), key.expose_secret());
        let other: RepoName = "dev/other".parse().unwrap();
        assert!(matches!(
            open_record(&provider, &record, &other, Purpose::Data, record.key_id).await,
            Err(KeyError::WrongContext { .. })
        ));
        assert!(open_record(&provider, &record, &repo, Purpose::ChunkId, record.key_id).await.is_err());
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// The KEK: a key ARN, key id or alias (`alias/coffer-prod`).
    pub key_id: String,
    /// The KEK for chunk-id keys, when it is not `key_id`. Writers may
    /// decrypt chunk-id keys; with a KEK of their own, no key policy lets a
    /// writer decrypt anything wrapped under the data-key KEK, whatever a
    /// proxy re-encrypts (docs/aws.md, "KMS keys").
    #[serde(default)]
    pub chunk_id_key_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// An explicit endpoint URL: a VPC interface endpoint, or an emulator.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Other KEKs (full ARNs) whose records this agent may unwrap, such as
    /// the KEK before a change of keys, for restores. Records naming any
    /// other key are refused before KMS is asked: a proxy must not be able
    /// to point the agent at a key of its choosing.
    #[serde(default)]
    pub allowed_keys: Vec<String>,
}

/// The AWS KMS provider. Writers need `kms:GenerateDataKey` on the KEKs and
/// `kms:Decrypt` only on the chunk-id KEK (condition on
/// `kms:EncryptionContext:coffer:purpose = chunk-id`); restore identities
/// need `kms:Decrypt` on both. Credentials come from the standard AWS chain.
pub struct KmsProvider {
    client: aws_sdk_kms::Client,
    data: Kek,
    /// `None`: chunk-id keys are wrapped by the data-key KEK.
    chunk_id: Option<Kek>,
    allowed_keys: Vec<String>,
}

/// A configured KEK and its full ARN, asked of KMS once.
struct Kek {
    key_id: String,
    arn: tokio::sync::OnceCell<String>,
}

impl Kek {
    fn new(key_id: &str) -> Self {
        Self { key_id: key_id.to_string(), arn: Default::default() }
    }
}

fn kms_error(e: impl std::error::Error + Send + Sync + 'static) -> KeyError {
    KeyError::Kms(aws_sdk_kms::error::DisplayErrorContext(e).to_string())
}

fn context_map(ctx: &EncryptionContext) -> std::collections::HashMap<String, String> {
    ctx.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The purpose a context names: it picks the KEK.
fn ctx_purpose(ctx: &EncryptionContext) -> Result<Purpose, KeyError> {
    match ctx.get(coffer_proto::keys::CONTEXT_PURPOSE) {
        Some(p) if p == Purpose::ChunkId.as_str() => Ok(Purpose::ChunkId),
        Some(p) if p == Purpose::Data.as_str() => Ok(Purpose::Data),
        other => Err(KeyError::Kms(format!("an encryption context with purpose {other:?}"))),
    }
}

/// Takes a KMS plaintext out of its response, leaving nothing behind.
fn take_plaintext(blob: Option<aws_sdk_kms::primitives::Blob>) -> Result<DataKey, KeyError> {
    let bytes =
        zeroize::Zeroizing::new(blob.ok_or_else(|| KeyError::Kms("no plaintext in the answer".into()))?.into_inner());
    DataKey::from_slice(&bytes).map_err(|e| KeyError::Kms(e.to_string()))
}

impl KmsProvider {
    pub async fn new(cfg: &KmsConfig) -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let mut b = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(region) = &cfg.region {
            b = b.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            b = b.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_kms::Client::from_conf(b.build()),
            data: Kek::new(&cfg.key_id),
            chunk_id: cfg.chunk_id_key_id.as_deref().map(Kek::new),
            allowed_keys: cfg.allowed_keys.clone(),
        }
    }

    fn kek(&self, purpose: Purpose) -> &Kek {
        match (purpose, &self.chunk_id) {
            (Purpose::ChunkId, Some(k)) => k,
            _ => &self.data,
        }
    }

    /// The full ARN (what key records name) of the KEK for `purpose`, asked once.
    async fn arn(&self, purpose: Purpose) -> Result<&str, KeyError> {
        let kek = self.kek(purpose);
        kek.arn
            .get_or_try_init(|| async {
                let out = self.client.describe_key().key_id(&kek.key_id).send().await.map_err(kms_error)?;
                out.key_metadata()
                    .and_then(|m| m.arn())
                    .map(str::to_string)
                    .ok_or_else(|| KeyError::Kms(format!("DescribeKey {} gave no ARN", kek.key_id)))
            })
            .await
            .map(String::as_str)
    }
}

#[async_trait]
impl KeyProvider for KmsProvider {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<(DataKey, Vec<u8>), KeyError> {
        let mut out = self
            .client
            .generate_data_key()
            .key_id(self.arn(ctx_purpose(ctx)?).await?)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(kms_error)?;
        let key = take_plaintext(out.plaintext.take())?;
        let wrapped = out.ciphertext_blob.take().ok_or_else(|| KeyError::Kms("no ciphertext in the answer".into()))?;
        Ok((key, wrapped.into_inner()))
    }

    async fn decrypt(
        &self,
        kek: &str,
        key_id: KeyId,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<DataKey, KeyError> {
        // Either configured KEK: a repository made before chunk-id keys had
        // a KEK of their own keeps its chunk-id key under the data-key KEK.
        let own = self.arn(ctx_purpose(ctx)?).await?;
        let data = self.arn(Purpose::Data).await?;
        if kek != own && kek != data && !self.allowed_keys.iter().any(|k| k == kek) {
            let provider_kek = match self.allowed_keys.len() {
                0 => own.to_string(),
                n => format!("{own} (and {n} in keys.allowed_keys)"),
            };
            return Err(KeyError::WrongKek { key_id, record_kek: kek.to_string(), provider_kek });
        }
        let mut out = self
            .client
            .decrypt()
            .key_id(kek)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(wrapped.to_vec()))
            .set_encryption_context(Some(context_map(ctx)))
            .send()
            .await
            .map_err(|e| match e {
                aws_sdk_kms::error::SdkError::ServiceError(_) => KeyError::Unwrap { key_id },
                other => kms_error(other),
            })?;
        take_plaintext(out.plaintext.take())
    }

    async fn describe_key(&self, purpose: Purpose) -> Result<KeyDescription, KeyError> {
        Ok(KeyDescription { kek: self.arn(purpose).await?.to_string(), enabled: true })
    }
}
