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
    #[error("key-encryption key {0}")]
    KekUnusable(String),
    #[error("cannot check the key now: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait KeyChecker: Send + Sync {
    async fn check(&self, record: &KeyRecord, repo: &RepoName) -> Result<(), KeyCheckError>;
    /// What the key service says about a KEK now (for reports).
    async fn describe(&self, kek: &str) -> Result<KekState, KeyCheckError>;
    /// The KEK's key policy (JSON), where the key service has one: what
    /// `assess` reads for who may use and manage the key.
    async fn key_policy(&self, _kek: &str) -> Result<Option<String>, KeyCheckError> {
        Ok(None)
    }
}

/// A KEK's state, as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KekState {
    /// `ok`, or why it must not be used.
    pub status: String,
    /// Automatic rotation, where the key service reports it.
    pub rotation: Option<bool>,
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

    async fn describe(&self, kek: &str) -> Result<KekState, KeyCheckError> {
        let status = if kek == self.kek.id() { "ok".into() } else { "not this proxy's local master key".into() };
        Ok(KekState { status, rotation: None })
    }
}

/// How long a DescribeKey / GetKeyRotationStatus answer is trusted.
pub const KMS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsCheckConfig {
    /// KMS region (default: the SDK's region chain).
    #[serde(default)]
    pub region: Option<String>,
    /// An explicit endpoint URL: a VPC interface endpoint, or an emulator.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// KEK ARNs any key record may be wrapped by; empty means any KMS key
    /// that passes the other checks (rules may narrow it per identity).
    #[serde(default)]
    pub allowed_keys: Vec<String>,
    /// Regions a KEK may live in (data residency); empty means any.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// Refuse KEKs whose automatic rotation is off.
    #[serde(default)]
    pub require_rotation: bool,
}

struct KeyFacts {
    arn: String,
    problem: Option<String>,
    checked: std::time::Instant,
}

/// The AWS KMS checker. It needs only `kms:DescribeKey`,
/// `kms:GetKeyRotationStatus` and `kms:ReEncryptFrom`/`ReEncryptTo` (on the
/// same key) on the allowed KEKs: it proves a record genuine without ever
/// seeing a key. `assess` also reads key policies (`kms:GetKeyPolicy`).
pub struct KmsKeyChecker {
    client: aws_sdk_kms::Client,
    cfg: KmsCheckConfig,
    cache: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<KeyFacts>>>,
}

/// The region of a KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`).
pub fn arn_region(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    (parts.next()? == "arn").then_some(())?;
    parts.next()?;
    (parts.next()? == "kms").then_some(())?;
    parts.next().filter(|r| !r.is_empty())
}

impl KmsKeyChecker {
    pub fn new(cfg: KmsCheckConfig, sdk: &aws_config::SdkConfig) -> Self {
        let mut b = aws_sdk_kms::config::Builder::from(sdk);
        if let Some(region) = &cfg.region {
            b = b.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            b = b.endpoint_url(endpoint);
        }
        Self { client: aws_sdk_kms::Client::from_conf(b.build()), cfg, cache: Default::default() }
    }

    /// What KMS says about a KEK (cached for `KMS_CACHE_TTL`): its ARN and,
    /// if it must not be used, why.
    async fn facts(&self, kek: &str) -> Result<std::sync::Arc<KeyFacts>, KeyCheckError> {
        if let Some(f) = self.cache.lock().expect("not poisoned").get(kek) {
            if f.checked.elapsed() < KMS_CACHE_TTL {
                return Ok(f.clone());
            }
        }
        let unavailable = |e: String| KeyCheckError::Unavailable(format!("KMS, key {kek}: {e}"));
        let described = self
            .client
            .describe_key()
            .key_id(kek)
            .send()
            .await
            .map_err(|e| unavailable(aws_sdk_kms::error::DisplayErrorContext(e).to_string()))?;
        let meta = described.key_metadata().ok_or_else(|| unavailable("no key metadata".into()))?;
        let arn = meta.arn().unwrap_or(kek).to_string();
        use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
        let mut problem = match (meta.key_state(), meta.key_spec(), meta.key_usage()) {
            (Some(KeyState::Enabled), _, _) if !meta.enabled() => Some("is disabled".to_string()),
            (Some(KeyState::Enabled), Some(KeySpec::SymmetricDefault), Some(KeyUsageType::EncryptDecrypt)) => None,
            (Some(KeyState::Enabled), spec, usage) => {
                Some(format!("is not a symmetric ENCRYPT_DECRYPT key (spec {spec:?}, usage {usage:?})"))
            }
            (state, _, _) => Some(format!("is not enabled (state {:?})", state.map(|s| s.as_str()))),
        };
        if problem.is_none() && !self.cfg.allowed_regions.is_empty() {
            let region = arn_region(&arn).unwrap_or("");
            if !self.cfg.allowed_regions.iter().any(|r| r == region) {
                problem = Some(format!(
                    "is in region {region:?}, outside the allowed regions {:?}",
                    self.cfg.allowed_regions
                ));
            }
        }
        if problem.is_none() && self.cfg.require_rotation {
            let rotation = self
                .client
                .get_key_rotation_status()
                .key_id(&arn)
                .send()
                .await
                .map_err(|e| unavailable(aws_sdk_kms::error::DisplayErrorContext(e).to_string()))?;
            if !rotation.key_rotation_enabled() {
                problem = Some("has automatic rotation off, and the policy requires it".into());
            }
        }
        let facts = std::sync::Arc::new(KeyFacts { arn, problem, checked: std::time::Instant::now() });
        self.cache.lock().expect("not poisoned").insert(kek.to_string(), facts.clone());
        Ok(facts)
    }
}

#[async_trait]
impl KeyChecker for KmsKeyChecker {
    async fn check(&self, record: &KeyRecord, repo: &RepoName) -> Result<(), KeyCheckError> {
        if !self.cfg.allowed_keys.is_empty() && !self.cfg.allowed_keys.contains(&record.kek) {
            return Err(KeyCheckError::KekNotAllowed(record.kek.clone()));
        }
        if !record.context.matches(repo, record.purpose, record.key_id) {
            return Err(KeyCheckError::WrongContext(repo.clone()));
        }
        let facts = self.facts(&record.kek).await?;
        if let Some(problem) = &facts.problem {
            return Err(KeyCheckError::KekUnusable(format!("{} {problem}", record.kek)));
        }
        // ReEncrypt to the same KEK under the same context: KMS refuses a
        // forged blob or a wrong context, and names the KEK that really
        // wrapped it. No plaintext leaves KMS.
        let ctx: std::collections::HashMap<String, String> =
            record.context.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(record.wrapped.clone()))
            .set_source_encryption_context(Some(ctx.clone()))
            .source_key_id(&facts.arn)
            .destination_key_id(&facts.arn)
            .set_destination_encryption_context(Some(ctx))
            .send()
            .await
            .map_err(|e| match &e {
                aws_sdk_kms::error::SdkError::ServiceError(_) => KeyCheckError::NotGenuine(record.kek.clone()),
                _ => {
                    KeyCheckError::Unavailable(format!("KMS ReEncrypt: {}", aws_sdk_kms::error::DisplayErrorContext(e)))
                }
            })?;
        if out.source_key_id() != Some(facts.arn.as_str()) {
            return Err(KeyCheckError::NotGenuine(record.kek.clone()));
        }
        Ok(())
    }

    async fn key_policy(&self, kek: &str) -> Result<Option<String>, KeyCheckError> {
        let facts = self.facts(kek).await?;
        let out = self.client.get_key_policy().key_id(&facts.arn).policy_name("default").send().await.map_err(|e| {
            KeyCheckError::Unavailable(format!("KMS GetKeyPolicy: {}", aws_sdk_kms::error::DisplayErrorContext(e)))
        })?;
        Ok(out.policy().map(str::to_string))
    }

    async fn describe(&self, kek: &str) -> Result<KekState, KeyCheckError> {
        let facts = self.facts(kek).await?;
        let rotation = self
            .client
            .get_key_rotation_status()
            .key_id(&facts.arn)
            .send()
            .await
            .ok()
            .map(|r| r.key_rotation_enabled());
        Ok(KekState { status: facts.problem.clone().unwrap_or_else(|| "ok".into()), rotation })
    }
}

#[cfg(test)]
mod tests {
    use super::arn_region;

    #[test]
    fn regions_from_arns() {
        assert_eq!(arn_region("arn:aws:kms:eu-west-1:123456789012:key/abc"), Some("eu-west-1"));
        assert_eq!(arn_region("arn:aws-us-gov:kms:us-gov-west-1:1:key/abc"), Some("us-gov-west-1"));
        assert_eq!(arn_region("alias/foo"), None);
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
    }
}
