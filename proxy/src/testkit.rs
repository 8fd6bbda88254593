//! For handler unit tests: the whole shared state of a dev proxy (its
//! config, filesystem store, local master key, policy, audit log) built in
//! a temporary folder, with no listener; and what an honest agent would
//! upload.

use std::sync::Arc;

use bytes::Bytes;
use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::keys::{DataKey, EncryptionContext, IdKey, KeyRecord, LocalKek, Purpose, KEY_RECORD_VERSION};
use coffer_proto::repo::{ChunkerParams, RepoConfig, CONFIG_VERSION};
use coffer_proto::snapshot::{CommitRequest, SnapshotStats};
use coffer_proto::{ChunkId, KeyId, RepoName, SnapshotId};

use crate::access::identity::Identity;
use crate::access::policy::Allowed;
use crate::app::App;
use crate::audit::{AuditWriter, Draft};

pub(crate) struct TestApp {
    pub app: Arc<App>,
    pub kek: LocalKek,
    pub dir: tempfile::TempDir,
    _writer: AuditWriter,
}

/// A dev proxy's state, on a fresh folder.
pub(crate) async fn app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::dev::prepare(dir.path(), None).unwrap();
    let cfg = crate::config::ProxyConfig::load(&path).unwrap();
    let (app, writer, _reloads) = crate::server::build_app(&cfg).await.unwrap();
    let master = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    let kek = LocalKek::from_file_contents(&master).unwrap();
    TestApp { app: Arc::new(app), kek, dir, _writer: writer }
}

/// Another proxy on the same folder and store (its own, empty, memory).
pub(crate) async fn app_on(t: &TestApp) -> Arc<App> {
    let mut cfg = crate::config::ProxyConfig::load(&t.dir.path().join("proxy.toml")).unwrap();
    // Its own audit log, as every proxy has.
    cfg.audit.path = t.dir.path().join("audit-2/audit.jsonl");
    let (app, writer, _reloads) = crate::server::build_app(&cfg).await.unwrap();
    // The writer thread ends when the App's log handle is dropped.
    drop(writer);
    Arc::new(app)
}

impl TestApp {
    /// A data key of `repo`, wrapped by the master key: what `coffer`
    /// uploads before its first chunk.
    pub fn data_key(&self, repo: &RepoName) -> (KeyId, DataKey, Bytes) {
        let (key, record) = self.wrapped(repo, Purpose::Data);
        (record.key_id, key, record.encode().into())
    }

    fn wrapped(&self, repo: &RepoName, purpose: Purpose) -> (DataKey, KeyRecord) {
        let key_id = KeyId::random();
        let context = EncryptionContext::new(repo, purpose, key_id);
        let (key, wrapped) = self.kek.generate_data_key(&context);
        let kek = self.kek.id().to_string();
        (key, KeyRecord { version: KEY_RECORD_VERSION, key_id, purpose, kek, context, wrapped })
    }

    /// `coffer init`: the repository's config, with its chunk-id key.
    pub async fn init(&self, repo: &RepoName) {
        let (idk, id_key) = self.wrapped(repo, Purpose::ChunkId);
        let mut config = RepoConfig {
            version: CONFIG_VERSION,
            repo: repo.clone(),
            chunker: ChunkerParams::default(),
            zstd_level: 3,
            id_key,
            created: crate::unix_now(),
            mac: None,
        };
        config.authenticate(&IdKey::from_data_key(idk));
        crate::api::repo::put_config(&self.app, &writer_grant(), repo, config.encode().into()).await.unwrap();
    }

    /// A chunk of `plain` sealed with `key`, under an id derived from it.
    pub fn chunk(&self, repo: &RepoName, key_id: KeyId, key: &DataKey, plain: &[u8]) -> (ChunkId, Bytes) {
        let id = ChunkId::from_bytes(*blake3::hash(plain).as_bytes());
        (id, coffer_proto::chunk::seal(plain, key, key_id, repo, &id, 3).into())
    }
}

/// What a writer of the dev policy is granted.
pub(crate) fn writer_grant() -> Allowed {
    Allowed { rule: "dev writer".into(), kms_keys: Vec::new(), mfa: false }
}

/// The dev writer, whose audit events [`draft`] makes.
pub(crate) fn writer() -> Identity {
    Identity::new(crate::dev::DOMAIN, "spiffe://coffer.dev/writer")
}

/// Whose uploads the dev writer counts on, never revoked or quarantined.
pub(crate) fn uploader() -> crate::catalog::Uploader {
    let w = writer();
    crate::catalog::Uploader { scope: coffer_proto::Scope::of(w.domain(), w.name(), 0), legacy: true }
}

pub(crate) fn admin() -> Identity {
    Identity::new(crate::dev::DOMAIN, "spiffe://coffer.dev/admin")
}

/// An audit event of `action` by the dev writer.
pub(crate) fn draft(action: &'static str) -> Draft {
    Draft {
        identity: Some("spiffe://coffer.dev/writer".into()),
        trust_domain: Some(crate::dev::DOMAIN.into()),
        peer: "127.0.0.1:1".into(),
        action,
        ..Default::default()
    }
}

/// A repository holding one data key and `n` chunks, and an honest
/// commit of them.
pub(crate) async fn staged(t: &TestApp, repo: &RepoName, n: u8) -> CommitRequest {
    staged_on(t, &t.app, repo, n).await
}

/// [`staged`] through `app`, another proxy on `t`'s store.
pub(crate) async fn staged_on(t: &TestApp, app: &App, repo: &RepoName, n: u8) -> CommitRequest {
    t.init(repo).await;
    let (key_id, key, record) = t.data_key(repo);
    crate::api::repo::put_key(app, &writer_grant(), repo, key_id, record).await.unwrap();
    let (mut chunks, mut stored) = (Vec::new(), 0);
    for i in 0..n {
        let (id, envelope) = t.chunk(repo, key_id, &key, &[i; 100]);
        stored += envelope.len() as u64;
        let digest = Some(blake3::hash(&envelope).to_hex().to_string());
        crate::api::chunks::put_chunk(app, repo, &uploader(), id, envelope, digest).await.unwrap();
        chunks.push(id);
    }
    let snapshot = SnapshotId::random();
    let root = envelope::seal(Kind::SnapshotRoot, Compression::None, key_id, &key, repo, snapshot.as_bytes(), b"{}");
    let stats = SnapshotStats {
        bytes_in: 100 * u64::from(n),
        bytes_new: 100 * u64::from(n),
        stored_new: stored,
        chunks: u64::from(n),
        chunks_new: u64::from(n),
    };
    CommitRequest { snapshot, root, stats, chunks }
}

/// A second snapshot of the same chunks as `req` (a re-backup of the same
/// stream): a root of its own, sealed with a new data key, nothing new.
pub(crate) async fn again(t: &TestApp, repo: &RepoName, req: &CommitRequest) -> CommitRequest {
    let (key_id, key, record) = t.data_key(repo);
    crate::api::repo::put_key(&t.app, &writer_grant(), repo, key_id, record).await.unwrap();
    let snapshot = SnapshotId::random();
    let root = envelope::seal(Kind::SnapshotRoot, Compression::None, key_id, &key, repo, snapshot.as_bytes(), b"{}");
    let stats = SnapshotStats { bytes_new: 0, stored_new: 0, chunks_new: 0, ..req.stats };
    CommitRequest { snapshot, root, stats, chunks: req.chunks.clone() }
}

/// The store operations of kind `op` (head, get, put…) the proxy made.
pub(crate) fn store_ops(app: &App, op: &str) -> u64 {
    let needle = format!("coffer_store_seconds_count{{op=\"{op}\",ok=\"true\"}}");
    app.metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(&needle))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// A store that fails on purpose: listings of keys ending in
/// `list_fails_for`, and lock extensions and deletions of keys containing
/// `extend_fails_for` and `delete_fails_for`.
pub(crate) struct Faulty {
    inner: Arc<dyn crate::store::ObjectStore>,
    pub list_fails_for: std::sync::Mutex<Option<String>>,
    pub extend_fails_for: std::sync::Mutex<Option<String>>,
    pub delete_fails_for: std::sync::Mutex<Option<String>>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn crate::store::ObjectStore>) -> Self {
        Self {
            inner,
            list_fails_for: Default::default(),
            extend_fails_for: Default::default(),
            delete_fails_for: Default::default(),
        }
    }
}

fn refused(key: &str) -> crate::store::StoreError {
    crate::store::StoreError::Backend { key: key.into(), message: "refused on purpose".into(), retryable: false }
}

#[async_trait::async_trait]
impl crate::store::ObjectStore for Faulty {
    async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        until: u64,
        r: crate::store::Recorded,
    ) -> Result<crate::store::PutOutcome, crate::store::StoreError> {
        self.inner.put_object(key, body, until, r).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>, crate::store::StoreError> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<crate::store::ObjectMeta>, crate::store::StoreError> {
        self.inner.head(key).await
    }
    async fn get_head(&self, key: &str, len: usize) -> Result<Option<Bytes>, crate::store::StoreError> {
        self.inner.get_head(key, len).await
    }
    async fn folders(&self, prefix: &str) -> Result<Vec<String>, crate::store::StoreError> {
        self.inner.folders(prefix).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, crate::store::StoreError> {
        if self.list_fails_for.lock().unwrap().as_deref().is_some_and(|s| prefix.ends_with(s)) {
            return Err(refused(prefix));
        }
        self.inner.list(prefix).await
    }
    async fn extend_retention(&self, key: &str, until: u64) -> Result<(), crate::store::StoreError> {
        if self.extend_fails_for.lock().unwrap().as_deref().is_some_and(|s| key.contains(s)) {
            return Err(refused(key));
        }
        self.inner.extend_retention(key, until).await
    }
    async fn set_legal_hold(&self, key: &str, on: bool) -> Result<(), crate::store::StoreError> {
        self.inner.set_legal_hold(key, on).await
    }
    async fn delete(&self, key: &str, now: u64) -> Result<(), crate::store::StoreError> {
        if self.delete_fails_for.lock().unwrap().as_deref().is_some_and(|s| key.contains(s)) {
            return Err(refused(key));
        }
        self.inner.delete(key, now).await
    }
}

/// The proxy of `t` on another store (its policy, audit log and detector).
pub(crate) fn app_with_store(t: &TestApp, store: Arc<dyn crate::store::ObjectStore>) -> App {
    App::new(crate::app::AppParts {
        policy: crate::config::ProxyConfig::load(&t.dir.path().join("proxy.toml")).unwrap().policy().unwrap(),
        store: store.clone(),
        audit: t.app.audit.clone(),
        checker: t.app.checker.clone(),
        retention: t.app.retention,
        upload_lock: t.app.upload_lock,
        commit_max_bytes: t.app.commit_max_bytes,
        fan_out: t.app.fan_out,
        catalog_chunks: crate::catalog::DEFAULT_MAX_CHUNKS,
        store_requests: 256,
        mfa: crate::access::mfa::MfaVerifier::new(t.dir.path().join("totp.toml"), store),
        reload: tokio::sync::mpsc::channel(1).0,
        metrics: t.app.metrics.clone(),
        watch: t.app.watch.clone(),
        client_certs: crate::access::clientcerts::ClientCerts::open(t.dir.path().join("certs.json")),
        packs_enabled: t.app.packs_enabled,
        upload_quota: t.app.upload_quota.per_day(),
    })
}

/// Waits (10 s at most) for an audit event whose line mentions `needle`.
pub(crate) async fn wait_for_audit(t: &TestApp, needle: &str) -> String {
    let log = t.dir.path().join("audit/audit.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no audit event with {needle:?}:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
