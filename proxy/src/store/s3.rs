//! The S3 store: every object written once with Object Lock.
//!
//! PutObject carries the lock mode and retain-until date and a CRC32C
//! checksum, with `If-None-Match: *` so an existing object is never
//! replaced (or, where the service lacks conditional writes, a HEAD
//! first). Locks are extended with PutObjectRetention, never shortened:
//! Coffer checks that itself, because not every S3 implementation refuses.
//! At start the bucket must have Object Lock and versioning enabled.
//!
//! Transient failures (5xx, SlowDown, timeouts, connection errors) are
//! retried by the SDK's standard retry strategy: exponential backoff with
//! jitter, at most `MAX_ATTEMPTS` attempts.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use serde::Deserialize;

use super::{ObjectMeta, ObjectStore, PutOutcome, Recorded, StoreError};

/// Attempts per S3 call, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// User metadata carrying the BLAKE3 recorded at write time (for scrub).
pub const DIGEST_METADATA: &str = "coffer-blake3";
/// User metadata carrying the id of the data key that sealed a chunk.
pub const SEALED_BY_METADATA: &str = "coffer-key";
/// User metadata carrying the upload scope that wrote a chunk.
pub const SCOPE_METADATA: &str = "coffer-scope";
/// The marker object the start-up probe writes (in the reserved `admin/` tree).
pub const STORE_CHECK: &str = "admin/store-check";

/// Ordered by strength: `Governance` < `Compliance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with s3:BypassGovernanceRetention can shorten or remove the lock; for trials only.
    Governance,
    /// Nobody, not even the account root, can shorten or remove the lock.
    #[default]
    Compliance,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key (e.g. `coffer/`).
    #[serde(default)]
    pub prefix: String,
    /// The bucket's region (default: the SDK's region chain).
    #[serde(default)]
    pub region: Option<String>,
    /// An explicit endpoint URL: a VPC interface endpoint, or an emulator.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), for endpoints that need it.
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub lock_mode: LockMode,
    /// Use `If-None-Match: *` on PutObject (S3 supports it); otherwise HEAD first.
    #[serde(default = "yes")]
    pub conditional_writes: bool,
    /// How long one attempt of an S3 call may take before it is abandoned
    /// and retried: without it a store that accepts a request and never
    /// answers holds it until the proxy's request timeout.
    #[serde(default = "default_attempt_timeout")]
    pub attempt_timeout_secs: u64,
    /// The AWS profile (in the shared config files) whose credentials
    /// delete what expiry and the lifecycle pass may delete; the proxy's
    /// own role may not (`packaging/aws/coffer.yaml`: a separate role that
    /// can only delete). Default: the proxy's own credentials.
    #[serde(default)]
    pub delete_profile: Option<String>,
}

fn default_attempt_timeout() -> u64 {
    60
}

fn yes() -> bool {
    true
}

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// Deletes only (`delete_profile`); the same as `client` by default.
    deleter: Client,
    bucket: String,
    prefix: String,
    mode: LockMode,
    conditional_writes: bool,
}

/// A retain-until as S3 takes it; a date past year 9999 cannot be written
/// (the SDK refuses to serialise it), so it is clamped.
fn to_datetime(secs: u64) -> DateTime {
    DateTime::from_secs(secs.min(super::LATEST_RETAIN_UNTIL) as i64)
}

fn from_datetime(dt: &DateTime) -> u64 {
    dt.secs().max(0) as u64
}

/// Maps an SDK failure to a store error with its retry class.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    key: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError {
    let (message, retryable) = match &e {
        SdkError::TimeoutError(_) => ("timed out".to_string(), true),
        // The credentials provider fails inside the dispatch: say so, and
        // do not retry what only an operator can mend.
        SdkError::DispatchFailure(d) if format!("{d:?}").contains("ProviderError") => {
            (format!("no usable AWS credentials for this call (check its profile or role): {d:?}"), false)
        }
        SdkError::DispatchFailure(d) => (format!("connection failed: {d:?}"), true),
        SdkError::ResponseError(_) => ("unreadable response".to_string(), true),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("unknown");
            let retry = status >= 500 || matches!(code, "SlowDown" | "InternalError" | "RequestTimeout");
            (format!("{status} {code}: {}", s.err().message().unwrap_or("")), retry)
        }
        other => (format!("{other:?}"), false),
    };
    StoreError::Backend { key: key.to_string(), message, retryable }
}

fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// Builds the client and checks the bucket: Object Lock and versioning
    /// must both be enabled, or the proxy refuses to start.
    pub async fn connect(cfg: &S3Config, sdk: &aws_config::SdkConfig) -> Result<Self, StoreError> {
        let store = Self::open(cfg, sdk).await?;
        store.probe().await?;
        Ok(store)
    }

    /// Opens the bucket for reading (reports, verification): Object Lock
    /// is checked, nothing is written.
    pub async fn open(cfg: &S3Config, sdk: &aws_config::SdkConfig) -> Result<Self, StoreError> {
        let client = Self::client(cfg, sdk);
        let deleter = match &cfg.delete_profile {
            None => client.clone(),
            Some(profile) => {
                let sdk =
                    aws_config::defaults(aws_config::BehaviorVersion::latest()).profile_name(profile).load().await;
                Self::client(cfg, &sdk)
            }
        };
        let bucket = &cfg.bucket;
        let unfit = |problem: String| StoreError::Unfit { bucket: bucket.clone(), problem };
        let no_lock = || {
            unfit("Object Lock is not enabled; Coffer refuses to write where objects could be deleted (create the bucket with Object Lock)".into())
        };
        let enabled = match client.get_object_lock_configuration().bucket(bucket).send().await {
            Ok(lock) => lock.object_lock_configuration().and_then(|c| c.object_lock_enabled()).cloned(),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ObjectLockConfigurationNotFoundError") => {
                None
            }
            Err(e) => return Err(unfit(format!("cannot read its Object Lock configuration: {}", classify(bucket, e)))),
        };
        if enabled != Some(ObjectLockEnabled::Enabled) {
            return Err(no_lock());
        }
        if !cfg.prefix.is_empty() && !cfg.prefix.ends_with('/') {
            tracing::warn!(
                prefix = %cfg.prefix,
                "store.prefix does not end with `/`: keys are glued to it, and listings also take in keys of \
                 any sibling that starts with it (docs/configuration.md)"
            );
        }
        let store = Self {
            client,
            deleter,
            bucket: bucket.clone(),
            prefix: cfg.prefix.clone(),
            mode: cfg.lock_mode,
            conditional_writes: cfg.conditional_writes,
        };
        Ok(store)
    }

    /// GetObject, of a byte range or of all of it; `None` when there is no
    /// such object.
    async fn fetch(&self, key: &str, range: Option<String>) -> Result<Option<Bytes>, StoreError> {
        match self.client.get_object().bucket(&self.bucket).key(self.full(key)).set_range(range).send().await {
            Ok(out) => {
                let data = out.body.collect().await.map_err(|e| StoreError::Backend {
                    key: key.to_string(),
                    message: format!("reading the body: {e}"),
                    retryable: true,
                })?;
                Ok(Some(data.into_bytes()))
            }
            Err(SdkError::ServiceError(s)) if s.err().is_no_such_key() => Ok(None),
            // 416: a range past the end, which S3 answers for an empty object.
            Err(e) if status_of(&e) == Some(416) => Ok(self.head(key).await?.map(|_| Bytes::new())),
            Err(e) => Err(classify(key, e)),
        }
    }

    /// An S3 client for `cfg` with the credentials and region of `sdk`.
    fn client(cfg: &S3Config, sdk: &aws_config::SdkConfig) -> Client {
        let mut b = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(cfg.path_style)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(cfg.attempt_timeout_secs))
                    .build(),
            );
        if let Some(region) = &cfg.region {
            b = b.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &cfg.endpoint {
            b = b.endpoint_url(endpoint);
        }
        Client::from_conf(b.build())
    }

    /// Proves the bucket keeps what Coffer writes: a marker written through
    /// the ordinary put path must come back with a version id (versioning
    /// on) and a retain-until date (the lock was applied). This stands in for
    /// GetBucketVersioning, whose answer some S3 implementations get wrong.
    async fn probe(&self) -> Result<(), StoreError> {
        let key = STORE_CHECK;
        let unfit = |problem: String| StoreError::Unfit { bucket: self.bucket.clone(), problem };
        let bucket = &self.bucket;
        self.put_new(key, Bytes::from_static(b"coffer store check\n"), crate::unix_now() + 86_400)
            .await
            .map_err(|e| unfit(format!("the test write failed: {e}")))?;
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| unfit(format!("reading back the test write: {}", classify(key, e))))?;
        if head.version_id().is_none_or(|v| v.is_empty() || v == "null") {
            return Err(unfit("versioning is not enabled".into()));
        }
        if head.object_lock_retain_until_date().is_none() {
            return Err(unfit("it did not apply an Object Lock to a test write".into()));
        }
        Ok(())
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_mode(&self) -> ObjectLockMode {
        match self.mode {
            LockMode::Compliance => ObjectLockMode::Compliance,
            LockMode::Governance => ObjectLockMode::Governance,
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        retain_until: u64,
        recorded: Recorded,
    ) -> Result<PutOutcome, StoreError> {
        if !self.conditional_writes && self.head(key).await?.is_some() {
            return Ok(PutOutcome::Exists);
        }
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .body(ByteStream::from(body))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .metadata(DIGEST_METADATA, hex::encode(recorded.digest))
            .object_lock_mode(self.lock_mode())
            .object_lock_retain_until_date(to_datetime(retain_until));
        if let Some(key_id) = recorded.sealed_by {
            put = put.metadata(SEALED_BY_METADATA, key_id.to_string());
        }
        if let Some(scope) = recorded.scope {
            put = put.metadata(SCOPE_METADATA, scope.to_string());
        }
        if self.conditional_writes {
            put = put.if_none_match("*");
        }
        match put.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            // 412: the object exists; 409: a concurrent conditional write won.
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(PutOutcome::Exists),
            Err(e) => Err(classify(key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.fetch(key, None).await
    }

    async fn get_head(&self, key: &str, len: usize) -> Result<Option<Bytes>, StoreError> {
        if len == 0 {
            return Ok(self.head(key).await?.map(|_| Bytes::new()));
        }
        let data = self.fetch(key, Some(format!("bytes=0-{}", len - 1))).await?;
        // A store that ignores the range sends it all.
        Ok(data.map(|d| d.slice(..len.min(d.len()))))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.client.head_object().bucket(&self.bucket).key(self.full(key)).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                retain_until: out.object_lock_retain_until_date().map(from_datetime),
                legal_hold: out.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
                digest: out.metadata().and_then(|m| m.get(DIGEST_METADATA)).and_then(|h| {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(h, &mut d).ok().map(|()| d)
                }),
                sealed_by: out.metadata().and_then(|m| m.get(SEALED_BY_METADATA)).and_then(|k| k.parse().ok()),
                scope: out.metadata().and_then(|m| m.get(SCOPE_METADATA)).and_then(|s| s.parse().ok()),
                modified: out.last_modified().map(from_datetime),
            })),
            Err(SdkError::ServiceError(s)) if s.err().is_not_found() => Ok(None),
            Err(e) => Err(classify(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages =
            self.client.list_objects_v2().bucket(&self.bucket).prefix(self.full(prefix)).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(prefix, e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(k.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn folders(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full(prefix))
            .delimiter("/")
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(prefix, e))?;
            for p in page.common_prefixes() {
                if let Some(k) = p.prefix().and_then(|k| k.strip_prefix(&self.prefix)) {
                    out.push(k.to_string());
                }
            }
        }
        Ok(out)
    }

    async fn rewritten(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        use std::collections::BTreeMap;
        // (versions, delete markers) per key.
        let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| classify(prefix, e))?;
            for v in page.versions() {
                if let Some(k) = v.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    seen.entry(k.to_string()).or_default().0 += 1;
                }
            }
            for m in page.delete_markers() {
                if let Some(k) = m.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    seen.entry(k.to_string()).or_default().1 += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        Ok(seen.into_iter().filter(|(_, (versions, markers))| *versions > 1 || *markers > 0).map(|(k, _)| k).collect())
    }

    async fn extend_retention(&self, key: &str, until: u64) -> Result<(), StoreError> {
        let meta = self.head(key).await?.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        // Never shorten, whatever the service would allow.
        if meta.retain_until.is_none_or(|current| current >= until) {
            return Ok(());
        }
        let mode = match self.mode {
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            LockMode::Governance => ObjectLockRetentionMode::Governance,
        };
        let retention = ObjectLockRetention::builder().mode(mode).retain_until_date(to_datetime(until)).build();
        self.client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(self.full(key))
            .retention(retention)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), StoreError> {
        let status = if on { ObjectLockLegalHoldStatus::On } else { ObjectLockLegalHoldStatus::Off };
        self.client
            .put_object_legal_hold()
            .bucket(&self.bucket)
            .key(self.full(key))
            .legal_hold(ObjectLockLegalHold::builder().status(status).build())
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str, now: u64) -> Result<(), StoreError> {
        let meta = self.head(key).await?.ok_or_else(|| StoreError::NotFound(key.to_string()))?;
        meta.deletable(key, now)?;
        // In a versioned bucket this deletes the version itself, not just
        // hiding it behind a delete marker.
        let version = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| classify(key, e))?
            .version_id()
            .map(str::to_string)
            .filter(|v| !v.is_empty() && v != "null")
            .ok_or_else(|| StoreError::Backend {
                key: key.to_string(),
                message: "no version id: a delete without one would only add a delete marker".into(),
                retryable: false,
            })?;
        self.deleter
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .version_id(version)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
