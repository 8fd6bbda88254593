//! The production back ends against the S3/KMS emulator (moto): Object
//! Lock on every object, lock extension on dedup, KMS envelope keys, and
//! the proxy's own checks on key state, allowlists, residency and rotation.

use std::path::{Path, PathBuf};

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockMode};
use coffer_tests::{coffer_with_env, random_bytes, text_bytes, DevProxy, Moto, Run};

const BUCKET: &str = "coffer-backups";
const DAY: u64 = 86_400;

use coffer_proxy::unix_now as now;

struct Aws {
    moto: Moto,
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
}

impl Aws {
    async fn start() -> Self {
        let moto = Moto::start();
        let sdk = moto.sdk().await;
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
        let kms = aws_sdk_kms::Client::new(&sdk);
        Self { moto, s3, kms }
    }

    async fn bucket(&self, name: &str, object_lock: bool) {
        self.s3.create_bucket().bucket(name).object_lock_enabled_for_bucket(object_lock).send().await.unwrap();
    }

    /// A symmetric ENCRYPT_DECRYPT key (moto leaves the usage empty unless
    /// given), with rotation on unless told otherwise. Returns its ARN.
    async fn key(&self, rotation: bool) -> String {
        let key = self
            .kms
            .create_key()
            .key_usage(KeyUsageType::EncryptDecrypt)
            .key_spec(KeySpec::SymmetricDefault)
            .send()
            .await
            .unwrap();
        let meta = key.key_metadata().unwrap();
        if rotation {
            self.kms.enable_key_rotation().key_id(meta.key_id()).send().await.unwrap();
        }
        meta.arn().unwrap().to_string()
    }

    /// Disables a key (moto wants the bare key id here, not the ARN).
    async fn disable(&self, arn: &str) {
        let id = arn.rsplit('/').next().unwrap();
        self.kms.disable_key().key_id(id).send().await.unwrap();
    }

    async fn head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        self.s3.head_object().bucket(BUCKET).key(key).send().await.unwrap()
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.s3.list_objects_v2().bucket(BUCKET).prefix(prefix).send().await.unwrap();
        out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
    }
}

/// Certificates from a stopped dev proxy, reused by an S3/KMS proxy.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(DevProxy::start_in(dir.path()));
    dir
}

fn proxy_config(dir: &Path, aws: &Aws, extra_keys: &str, retention: (u64, u64)) -> PathBuf {
    let path = dir.join("s3.toml");
    let e = &aws.moto.endpoint;
    std::fs::write(
        &path,
        format!(
            r#"proxy_id = "s3"
listen = "127.0.0.1:0"
[tls]
cert = "proxy.pem"
key = "proxy.key"
[[trust_domains]]
name = "dev"
ca = "ca.pem"
repos = ["dev/**"]
[store]
kind = "s3"
bucket = "{BUCKET}"
endpoint = "{e}"
region = "us-east-1"
path_style = true
[keys]
provider = "kms"
endpoint = "{e}"
region = "us-east-1"
require_rotation = true
{extra_keys}
[audit]
path = "audit/audit.jsonl"
[retention]
days = {}
slack_days = {}
[[rules]]
name = "writer"
trust_domain = "dev"
identity = "spiffe://coffer.dev/writer"
roles = ["writer"]
repos = ["dev/**"]
[[rules]]
name = "reader"
trust_domain = "dev"
identity = "spiffe://coffer.dev/reader"
roles = ["reader"]
repos = ["dev/**"]
"#,
            retention.0, retention.1
        ),
    )
    .unwrap();
    path
}

/// An agent config for `who` using KMS key `kek`.
fn agent_config(p: &DevProxy, aws: &Aws, who: &str, kek: &str) -> PathBuf {
    let path = p.dir.join(format!("kms-{who}-{}.toml", blake3::hash(format!("{kek} {}", p.addr).as_bytes()).to_hex()));
    std::fs::write(
        &path,
        format!(
            "proxy = \"https://{}\"\nca = \"ca.pem\"\ncert = \"{who}.pem\"\nkey = \"{who}.key\"\n[keys]\nprovider = \"kms\"\nkey_id = \"{kek}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n",
            p.addr, aws.moto.endpoint
        ),
    )
    .unwrap();
    path
}

fn run(aws: &Aws, config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let env: Vec<(&str, String)> = aws.moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    coffer_with_env(config, args, stdin, &env)
}

fn start_proxy(certs: &Path, config: &Path, aws: &Aws) -> DevProxy {
    DevProxy::start_config(certs, config, &aws.moto.env())
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_through_s3_and_kms_with_object_lock() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    // Chunk-id keys under a KEK of their own (docs/aws.md, "KMS keys").
    let (kek, id_kek) = (aws.key(true).await, aws.key(true).await);
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, &format!("allowed_keys = [\"{kek}\", \"{id_kek}\"]"), (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let (writer, reader) = (agent_config(&p, &aws, "writer", &kek), agent_config(&p, &aws, "reader", &kek));
    for config in [&writer, &reader] {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(config, format!("{text}chunk_id_key_id = \"{id_kek}\"\n")).unwrap();
    }

    run(&aws, &writer, &["init", "--repo", "dev/db"], None).ok();
    let mut data = random_bytes("s3", 3 << 20);
    data.extend_from_slice(&text_bytes(1, 3 << 20));
    let id = run(&aws, &writer, &["backup", "--repo", "dev/db", "-"], Some(&data)).last_line();
    let restored = run(&aws, &reader, &["restore", "--repo", "dev/db", &id], None);
    restored.ok();
    assert!(restored.stdout == data, "restore through S3 differs");
    run(&aws, &reader, &["verify", "--repo", "dev/db"], None).ok();

    // Every object is in the bucket, locked in COMPLIANCE mode until about
    // now + retention + slack.
    let chunks = aws.keys("dev/db/chunks/").await;
    assert!(chunks.len() >= 4, "{chunks:?}");
    for key in
        chunks.iter().chain(aws.keys("dev/db/snapshots/").await.iter()).chain(aws.keys("dev/db/keys/").await.iter())
    {
        let head = aws.head(key).await;
        assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance), "{key}");
        let until = head.object_lock_retain_until_date().unwrap().secs() as u64;
        assert!(until >= now() + 37 * DAY - 600 && until <= now() + 37 * DAY + 600, "{key}: {until}");
    }
    // Each chunk records the upload scope of the identity that sent it,
    // which the dedup answers are scoped by (SPEC §9 "Dedup scopes").
    let scope = coffer_proto::Scope::of("dev", "spiffe://coffer.dev/writer", 0).to_string();
    for key in &chunks {
        let head = aws.head(key).await;
        let recorded = head.metadata().and_then(|m| m.get(coffer_proxy::store::SCOPE_METADATA));
        assert_eq!(recorded, Some(&scope), "{key}");
    }
    // The key record names the data-key KEK, and the repository's chunk-id
    // key the chunk-id KEK; each wrapped blob is KMS's.
    let s3 = &aws.s3;
    let read = |key: String| async move {
        let object = s3.get_object().bucket(BUCKET).key(&key).send().await.unwrap();
        String::from_utf8_lossy(&object.body.collect().await.unwrap().into_bytes()).to_string()
    };
    let record_key = aws.keys("dev/db/keys/").await[0].clone();
    let record = read(record_key.clone()).await;
    assert!(record.contains(&kek) && !record.contains(&id_kek), "{record}");
    let repo_config = read("dev/db/config".to_string()).await;
    assert!(repo_config.contains(&id_kek) && !repo_config.contains(&kek), "{repo_config}");

    // A locked object cannot be deleted: not through Coffer's store...
    let store = coffer_proxy::store::S3Store::connect(
        &toml::from_str(&format!(
            "bucket = \"{BUCKET}\"\nendpoint = \"{}\"\npath_style = true\nregion = \"us-east-1\"",
            aws.moto.endpoint
        ))
        .unwrap(),
        &aws.moto.sdk().await,
    )
    .await
    .unwrap();
    use coffer_proxy::store::ObjectStore as _;
    // Each chunk records the data key that sealed it (for expiry).
    let key_id: coffer_proto::KeyId = record_key.rsplit('/').next().unwrap().parse().unwrap();
    for key in &chunks {
        assert_eq!(store.head(key).await.unwrap().unwrap().sealed_by, Some(key_id), "{key}");
    }
    let err = store.delete(&chunks[0], now()).await.unwrap_err();
    assert!(matches!(err, coffer_proxy::store::StoreError::Locked { .. }), "{err}");
    // A legal hold outlives any lock date, and reads back from the bucket.
    store.set_legal_hold(&chunks[1], true).await.unwrap();
    assert!(store.head(&chunks[1]).await.unwrap().unwrap().legal_hold);
    let err = store.delete(&chunks[1], u64::MAX).await.unwrap_err();
    assert!(matches!(err, coffer_proxy::store::StoreError::Locked { until: u64::MAX, .. }), "{err}");
    store.set_legal_hold(&chunks[1], false).await.unwrap();
    assert!(!store.head(&chunks[1]).await.unwrap().unwrap().legal_hold);
    // ...nor by going around it, straight to the bucket's object version.
    let version = aws.head(&chunks[0]).await.version_id().unwrap().to_string();
    let raw = aws.s3.delete_object().bucket(BUCKET).key(&chunks[0]).version_id(version).send().await;
    let refused = raw.expect_err("the bucket itself must refuse to delete a locked version");
    let code = refused.as_service_error().and_then(|e| e.meta().code()).map(str::to_string);
    assert_eq!(code.as_deref(), Some("AccessDenied"), "refused for the lock, not for something else: {refused:?}");
    assert!(aws.head(&chunks[0]).await.version_id().is_some(), "and the version is still there");
    run(&aws, &reader, &["verify", "--repo", "dev/db"], None).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_commit_extends_old_locks_and_never_shortens() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    // First backup "long ago": retention of one day, no slack.
    let config = proxy_config(certs.path(), &aws, "", (1, 0));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/old"], None).ok();
    let data = random_bytes("old", 4 << 20);
    run(&aws, &writer, &["backup", "--repo", "dev/old", "-"], Some(&data)).ok();
    let chunks = aws.keys("dev/old/chunks/").await;
    for key in &chunks {
        let until = aws.head(key).await.object_lock_retain_until_date().unwrap().secs() as u64;
        assert!(until <= now() + DAY + 60, "{key} locked until {until}");
    }
    drop(p);

    // Today: retention 30 days + 7 slack; the same data deduplicates.
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    let report = run(&aws, &writer, &["backup", "--repo", "dev/old", "--json", "-"], Some(&data)).json();
    assert_eq!(report["bytes_new"], 0, "{report}");
    for key in aws
        .keys("dev/old/chunks/")
        .await
        .iter()
        .chain(aws.keys("dev/old/keys/").await.iter())
        .chain(aws.keys("dev/old/config").await.iter())
    {
        let until = aws.head(key).await.object_lock_retain_until_date().unwrap().secs() as u64;
        // 30 days of retention and 7 of slack, from about now.
        assert!(until + 120 >= now() + 37 * DAY, "{key} must be locked for the new snapshot and its slack: {until}");
    }
    let first = aws.head(&chunks[0]).await.object_lock_retain_until_date().unwrap().secs() as u64;
    drop(p);

    // Back to a one-day policy: a new snapshot never shortens a lock.
    let config = proxy_config(certs.path(), &aws, "", (1, 0));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["backup", "--repo", "dev/old", "-"], Some(&data)).ok();
    let after = aws.head(&chunks[0]).await.object_lock_retain_until_date().unwrap().secs() as u64;
    assert_eq!(after, first, "a lock must never be shortened");
}

/// `retention.upload_lock_hours`: what a backup uploads is locked for
/// hours until a commit references it. A backup that fails after uploading
/// (or a stolen writer certificate's junk) leaves objects that expiry may
/// take within hours, not after retention; the backup that commits the
/// same data locks them for retention and slack.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_locked_for_hours_until_a_commit_references_them() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("slack_days = 7\n", "slack_days = 7\nupload_lock_hours = 2\n")).unwrap();
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/short"], None).ok();
    let data = random_bytes("short", 4 << 20);
    let file = certs.path().join("data");
    std::fs::write(&file, &data).unwrap();
    let source = format!("cat {}; sleep 3; exit 3", file.display());
    let failed = run(&aws, &writer, &["backup", "--repo", "dev/short", "--", "sh", "-c", &source], None);
    assert_ne!(failed.code(), 0, "the source failed");
    let chunks = aws.keys("dev/short/chunks/").await;
    assert!(!chunks.is_empty(), "the failed backup uploaded before its source failed");
    assert!(aws.keys("dev/short/snapshots/").await.is_empty(), "and committed nothing");
    for key in &chunks {
        let until = aws.head(key).await.object_lock_retain_until_date().unwrap().secs() as u64;
        assert!(until <= now() + 2 * 3600 + 60, "{key} uploaded but not committed, locked until {until}");
    }
    let id = run(&aws, &writer, &["backup", "--repo", "dev/short", "-"], Some(&data)).last_line();
    assert_eq!(aws.keys("dev/short/snapshots/").await.len(), 1, "{id} committed");
    for key in aws.keys("dev/short/chunks/").await {
        let until = aws.head(&key).await.object_lock_retain_until_date().unwrap().secs() as u64;
        assert!(until + 120 >= now() + 37 * DAY, "{key} is referenced by {id}, locked only until {until}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kms_key_checks_refuse_bad_keys_with_a_clear_message() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let good = aws.key(true).await;
    let disabled = aws.key(true).await;
    aws.disable(&disabled).await;
    let not_listed = aws.key(true).await;
    let no_rotation = aws.key(false).await;
    let certs = certificates();
    let allowed = format!("allowed_keys = [\"{good}\", \"{disabled}\", \"{no_rotation}\"]");
    let config = proxy_config(certs.path(), &aws, &allowed, (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);

    for (kek, repo, needle) in [
        (&disabled, "dev/disabled", "is not enabled"),
        (&not_listed, "dev/unlisted", "is not allowed here"),
        (&no_rotation, "dev/norotation", "rotation off"),
    ] {
        let writer = agent_config(&p, &aws, "writer", kek);
        let run = run(&aws, &writer, &["init", "--repo", repo], None);
        assert_eq!(run.code(), 1, "{repo}");
        assert!(run.stderr.contains("key-refused") && run.stderr.contains(needle), "{repo}: {}", run.stderr);
        p.wait_for_event(repo, |e| e["action"] == "put-config" && e["repo"] == repo && e["outcome"] == "denied");
    }
    assert!(aws.keys("dev/").await.is_empty(), "refused configs must not be stored");
    let writer = agent_config(&p, &aws, "writer", &good);
    run(&aws, &writer, &["init", "--repo", "dev/good"], None).ok();
    drop(p);

    // The keys report reads the KEK's state and rotation from KMS.
    let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
        .arg("--config")
        .arg(&config)
        .args(["keys", "report", "--json"])
        .envs(aws.moto.env())
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let kek = report["keks"].as_array().unwrap().iter().find(|k| k["kek"] == good.as_str()).unwrap().clone();
    assert_eq!(kek["state"]["status"], "ok", "{kek}");
    assert_eq!(kek["state"]["rotation"], true, "{kek}");
    assert_eq!(kek["keys"][0]["purpose"], "chunk-id");

    // Data residency: keys here are in us-east-1; a policy for eu-west-1 refuses them.
    let config = proxy_config(certs.path(), &aws, "allowed_regions = [\"eu-west-1\"]", (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &good);
    let run = run(&aws, &writer, &["init", "--repo", "dev/residency"], None);
    assert!(run.stderr.contains("outside the allowed regions"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_or_misbound_key_records_are_refused() {
    use coffer_proto::keys::{EncryptionContext, KeyRecord, Purpose, KEY_RECORD_VERSION};
    use coffer_proto::KeyId;

    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/f"], None).ok();
    run(&aws, &writer, &["init", "--repo", "dev/g"], None).ok();

    let client = coffer_tests::raw_client(&writer).await;
    let repo: coffer_proto::RepoName = "dev/f".parse().unwrap();
    let key_id = KeyId::random();
    let forged = KeyRecord {
        version: KEY_RECORD_VERSION,
        key_id,
        purpose: Purpose::Data,
        kek: kek.clone(),
        context: EncryptionContext::new(&repo, Purpose::Data, key_id),
        wrapped: random_bytes("forged", 180),
    };
    let err = client.put_key(&repo, key_id, forged.encode()).await.unwrap_err();
    assert!(err.to_string().contains("not made by"), "{err}");

    // A genuine KMS blob, but made for another repository's context.
    let other: coffer_proto::RepoName = "dev/g".parse().unwrap();
    let ctx_g = EncryptionContext::new(&other, Purpose::Data, key_id);
    let blob = aws
        .kms
        .generate_data_key()
        .key_id(&kek)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .set_encryption_context(Some(ctx_g.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap()
        .into_inner();
    let moved = KeyRecord { wrapped: blob, ..forged };
    let err = client.put_key(&repo, key_id, moved.encode()).await.unwrap_err();
    assert!(err.to_string().contains("not made by"), "a blob wrapped under another context must fail ReEncrypt: {err}");
    assert!(aws.keys("dev/f/keys/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_without_object_lock_stops_the_proxy_from_starting() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, false).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
        .arg("--config")
        .arg(&config)
        .envs(aws.moto.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Object Lock is not enabled"), "{err}");
    let lock = aws.s3.get_object_lock_configuration().bucket(BUCKET).send().await;
    assert!(lock
        .map(|l| l.object_lock_configuration().and_then(|c| c.object_lock_enabled().cloned())
            != Some(ObjectLockEnabled::Enabled))
        .unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxies_on_one_bucket() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let base = proxy_config(certs.path(), &aws, "", (30, 7));
    let text = std::fs::read_to_string(&base).unwrap();
    let mut proxies = Vec::new();
    let mut metrics = Vec::new();
    for name in ["east", "west"] {
        let path = certs.path().join(format!("{name}.toml"));
        let port = coffer_tests::free_port();
        let cfg = text.replace("proxy_id = \"s3\"", &format!("proxy_id = \"{name}\"")).replace(
            "path = \"audit/audit.jsonl\"",
            &format!("path = \"audit-{name}/audit.jsonl\"\nsegment_events = 5\nship_secs = 1"),
        ) + &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
        std::fs::write(&path, cfg).unwrap();
        proxies.push((path.clone(), start_proxy(certs.path(), &path, &aws)));
        metrics.push(port);
    }
    let (ea, we) =
        (agent_config(&proxies[0].1, &aws, "writer", &kek), agent_config(&proxies[1].1, &aws, "writer", &kek));
    run(&aws, &ea, &["init", "--repo", "dev/shared"], None).ok();

    // The same data through both at once: both commit, the chunks are shared.
    let data = random_bytes("two proxies", 6 << 20);
    let (d1, d2) = (data.clone(), data.clone());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&aws, &ea, &["backup", "--repo", "dev/shared", "--json", "-"], Some(&d1)));
        let b = s.spawn(|| run(&aws, &we, &["backup", "--repo", "dev/shared", "--json", "-"], Some(&d2)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (a.json(), b.json());
    let reader = agent_config(&proxies[1].1, &aws, "reader", &kek);
    for id in [&a["id"], &b["id"]] {
        let out = run(&aws, &reader, &["restore", "--repo", "dev/shared", id.as_str().unwrap()], None);
        out.ok();
        assert!(out.stdout == data);
    }
    let chunks = aws.keys("dev/shared/chunks/").await.len() as u64;
    assert!(
        chunks <= a["chunks_new"].as_u64().unwrap().max(b["chunks_new"].as_u64().unwrap()) + 1,
        "dedup across proxies: {chunks} chunks"
    );

    // What one proxy committed, the other dedups against (asking the
    // bucket, as its catalog does not know it), and then knows: a third run
    // HEADs no chunk.
    let heads = |port: u16| -> f64 {
        let text = coffer_tests::http_get(port, "/metrics");
        let needle = "coffer_store_seconds_count{op=\"head\",ok=\"true\"}";
        text.lines().find(|l| l.starts_with(needle)).map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    let more = random_bytes("east only", 16 << 20);
    let east = run(&aws, &ea, &["backup", "--repo", "dev/shared", "--json", "-"], Some(&more)).json();
    let west = run(&aws, &we, &["backup", "--repo", "dev/shared", "--json", "-"], Some(&more)).json();
    assert_eq!(west["bytes_new"], 0, "west sees east's chunks: {west}");
    let before = heads(metrics[1]);
    let again = run(&aws, &we, &["backup", "--repo", "dev/shared", "--json", "-"], Some(&more)).json();
    assert_eq!(again["bytes_new"], 0);
    let per_run = heads(metrics[1]) - before;
    assert!(
        per_run < east["chunks"].as_f64().unwrap(),
        "{per_run} HEADs for {} known chunks: the catalog answers for them",
        east["chunks"]
    );
    let out = run(&aws, &reader, &["restore", "--repo", "dev/shared", again["id"].as_str().unwrap()], None);
    assert!(out.stdout == more);

    // Each proxy's audit chain, as shipped to the bucket, verifies.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for (path, _) in &proxies {
        let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
            .arg("--config")
            .arg(path)
            .args(["audit", "verify", "--store"])
            .envs(aws.moto.env())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains(" 0 events"), "{}: {text}", path.display());
    }
    assert!(
        !aws.keys("audit/east/").await.is_empty() && !aws.keys("audit/west/").await.is_empty(),
        "{:?}",
        aws.keys("").await
    );
}

/// A proxy whose S3 traffic goes through `relay` (KMS straight to moto).
fn relayed_config(dir: &Path, aws: &Aws, relay: &coffer_tests::FaultRelay) -> PathBuf {
    let path = proxy_config(dir, aws, "", (30, 7));
    let text = std::fs::read_to_string(&path).unwrap();
    let store_endpoint = format!("bucket = \"{BUCKET}\"\nendpoint = \"{}\"", aws.moto.endpoint);
    assert!(text.contains(&store_endpoint));
    let text = text.replace(&store_endpoint, &format!("bucket = \"{BUCKET}\"\nendpoint = \"{}\"", relay.endpoint));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_slowdowns_are_retried_and_a_dead_store_commits_nothing() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let is_chunk_put = |m: &http::Method, path: &str| m == http::Method::PUT && path.contains("/chunks/");

    // The first four chunk PUTs are refused with 503 SlowDown: retried, and the backup succeeds.
    let relay = coffer_tests::FaultRelay::start(&aws.moto.endpoint, {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move |m, path, _| is_chunk_put(m, path) && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 4
    })
    .await;
    let certs = certificates();
    let config = relayed_config(certs.path(), &aws, &relay);
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/slow"], None).ok();
    let data = random_bytes("slowdown", 3 << 20);
    let id = run(&aws, &writer, &["backup", "--repo", "dev/slow", "-"], Some(&data)).last_line();
    assert_eq!(relay.faults.load(std::sync::atomic::Ordering::SeqCst), 4);
    // Every refused PUT was made again, and its chunk is in the bucket.
    let stored = aws.keys("dev/slow/chunks/").await;
    for path in relay.faulted.lock().unwrap().iter() {
        assert!(stored.iter().any(|k| path.ends_with(k.as_str())), "{path} was never stored: {stored:?}");
    }
    let reader = agent_config(&p, &aws, "reader", &kek);
    assert!(run(&aws, &reader, &["restore", "--repo", "dev/slow", &id], None).stdout == data);
    drop(p);
    drop(relay);

    // Every chunk PUT refused: a clear error, no snapshot, no stray object.
    let relay = coffer_tests::FaultRelay::start(&aws.moto.endpoint, move |m, path, _| is_chunk_put(m, path)).await;
    let config = relayed_config(certs.path(), &aws, &relay);
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    let before = aws.keys("dev/slow/").await;
    // The proxy's own retries of a 503 may end within the agent's 2 s
    // deadline, and then the agent retries the 500 too: only that.
    let env: Vec<(&str, String)> = aws.moto.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(coffer_tests::EXPECT_RETRIES);
    let failed = coffer_tests::coffer_with_env(
        &writer,
        &["backup", "--repo", "dev/slow", "-"],
        Some(&random_bytes("doomed", 2 << 20)),
        &env,
    );
    let retried: Vec<&str> = failed.stderr.lines().filter(|l| l.contains("retrying in")).collect();
    assert!(retried.iter().all(|l| l.contains("500 Internal Server Error store")), "{retried:#?}");
    assert_eq!(failed.code(), 1);
    assert!(failed.stderr.contains("500") && failed.stderr.contains("no snapshot was committed"), "{}", failed.stderr);
    let after = aws.keys("dev/slow/").await;
    let added: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
    assert!(added.iter().all(|k| k.contains("/keys/")), "only the run's key record may be new: {added:?}");
    p.wait_for_event("store alert", |e| {
        e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with("store-error:"))
    });
}

/// An S3 that accepts chunk uploads and never answers: each attempt is
/// abandoned after `store.attempt_timeout_secs` and retried, then the
/// agent gets a clear error and no snapshot is committed, instead of every
/// upload hanging until the proxy's 300 s request timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_s3_times_out_and_commits_nothing() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let relay = coffer_tests::FaultRelay::stalling(&aws.moto.endpoint, |m, path, _| {
        m == http::Method::PUT && path.contains("/chunks/")
    })
    .await;
    let certs = certificates();
    let config = relayed_config(certs.path(), &aws, &relay);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        &format!("bucket = \"{BUCKET}\""),
        &format!("bucket = \"{BUCKET}\"\nattempt_timeout_secs = 1"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/hang"], None).ok();
    let started = std::time::Instant::now();
    let failed = run(&aws, &writer, &["backup", "--repo", "dev/hang", "-"], Some(&random_bytes("hang", 2 << 20)));
    assert_eq!(failed.code(), 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("no snapshot was committed"), "{}", failed.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "the hang must be cut short");
    // Some chunk's PUT was abandoned and tried again (the same path stalled
    // twice), not merely several chunks stalled once each.
    let faulted = relay.faulted.lock().unwrap().clone();
    assert!(
        faulted.iter().any(|p| faulted.iter().filter(|q| *q == p).count() >= 2),
        "each attempt is abandoned and retried: {faulted:#?}"
    );
    assert!(aws.keys("dev/hang/snapshots/").await.is_empty());
    assert!(aws.keys("dev/hang/chunks/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn assess_checks_the_bucket_and_the_keys() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let no_rotation = aws.key(false).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7))
        .to_string_lossy()
        .replace("require_rotation = true", "require_rotation = false");
    let config = std::path::PathBuf::from(config);
    let text = std::fs::read_to_string(&config).unwrap().replace("require_rotation = true", "require_rotation = false");
    std::fs::write(&config, text).unwrap();
    let p = start_proxy(certs.path(), &config, &aws);
    run(&aws, &agent_config(&p, &aws, "writer", &no_rotation), &["init", "--repo", "dev/as"], None).ok();
    let assess = || {
        let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
            .arg("--config")
            .arg(&config)
            .args(["assess", "--json"])
            .envs(aws.moto.env())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        v.as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{}: {}", f["check"].as_str().unwrap(), f["problem"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    let before = assess();
    for needle in ["default Object Lock retention", "public access block", "without TLS", "rotation is off"] {
        assert!(before.iter().any(|f| f.contains(needle)), "{needle} not found in {before:?}");
    }
    // The emulator's default key policy lets the account do anything with
    // the key: every separation-of-duty rule is broken.
    for needle in ["for any repository", "re-encrypt to or from other keys", "kms:ScheduleKeyDeletion to all but"] {
        assert!(before.iter().any(|f| f.starts_with("kms-policy") && f.contains(needle)), "{needle}: {before:?}");
    }

    // Fix the bucket and the key: those findings go away. (moto refuses a
    // default retention on a bucket that has objects, so that one stays.)
    use aws_sdk_s3::types::PublicAccessBlockConfiguration;
    let block = PublicAccessBlockConfiguration::builder()
        .block_public_acls(true)
        .ignore_public_acls(true)
        .block_public_policy(true)
        .restrict_public_buckets(true)
        .build();
    aws.s3.put_public_access_block().bucket(BUCKET).public_access_block_configuration(block).send().await.unwrap();
    // A deny on one prefix is not TLS-only. (The emulator is reached over
    // plain HTTP and enforces policies, so the whole-bucket form that passes
    // is checked in the unit tests of `assess`.)
    let part = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::{BUCKET}/quarantine/*"],"Condition":{{"Bool":{{"aws:SecureTransport":"false"}}}}}}]}}"#
    );
    aws.s3.put_bucket_policy().bucket(BUCKET).policy(part).send().await.unwrap();
    aws.kms.enable_key_rotation().key_id(no_rotation.rsplit('/').next().unwrap()).send().await.unwrap();
    // The template's shape of a chunk-id KEK's policy (packaging/aws/coffer.yaml).
    let role = |name: &str| format!("arn:aws:iam::123456789012:role/{name}");
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": role("admin")},
         "Action": ["kms:Describe*", "kms:Get*", "kms:List*"], "Resource": "*"},
        {"Sid": "BreakGlass", "Effect": "Allow", "Principal": {"AWS": role("glass")}, "Resource": "*",
         "Action": ["kms:Describe*", "kms:Create*", "kms:Put*", "kms:Disable*", "kms:Delete*",
                    "kms:ScheduleKeyDeletion", "kms:UpdatePrimaryRegion"]},
        {"Sid": "NobodyElse", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": coffer_proxy::compliance::keypolicy::BREAK_GLASS_ACTIONS,
         "Condition": {"ArnNotEquals": {"aws:PrincipalArn": role("glass")}}},
        {"Sid": "Writers", "Effect": "Allow", "Principal": {"AWS": role("writer")},
         "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*",
         "Condition": {"StringLike": {"kms:EncryptionContext:coffer:repo": "dev/*"},
                       "StringEquals": {"kms:EncryptionContext:coffer:purpose": "chunk-id"}}},
        {"Sid": "Proxy", "Effect": "Allow", "Principal": {"AWS": role("proxy")},
         "Action": ["kms:DescribeKey", "kms:GetKeyRotationStatus", "kms:GetKeyPolicy", "kms:ReEncrypt*"],
         "Resource": "*", "Condition": {"Bool": {"kms:ReEncryptOnSameKey": "true"}}}]});
    aws.kms
        .put_key_policy()
        .key_id(no_rotation.rsplit('/').next().unwrap())
        .policy_name("default")
        .policy(policy.to_string())
        .send()
        .await
        .unwrap();
    let after = assess();
    assert!(after.iter().any(|f| f.contains("without TLS")), "{after:?}");
    for needle in ["public access block", "rotation is off", "kms-policy"] {
        assert!(!after.iter().any(|f| f.contains(needle)), "{needle} still reported: {after:?}");
    }
}

/// Every admin call on the S3 store: what the calls store (revocations,
/// switches, MFA records) must be writable with Object Lock and readable
/// after a restart. Four admin identities, because each may make two calls
/// in one TOTP window.
#[tokio::test(flavor = "multi_thread")]
async fn every_admin_call_works_on_s3_and_survives_a_restart() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let admins = ["admin", "admin2", "admin3", "admin4"];
    let mut rules = String::new();
    for name in admins {
        if name != "admin" {
            let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
                .args(["dev", "--dir"])
                .arg(certs.path())
                .args(["issue", "--name", name, "--identity", &format!("spiffe://coffer.dev/{name}")])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        rules.push_str(&format!(
            "[[rules]]\nname = \"{name}\"\ntrust_domain = \"dev\"\nidentity = \"spiffe://coffer.dev/{name}\"\nroles = [\"admin\"]\nrepos = [\"**\"]\n"
        ));
    }
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{rules}")).unwrap();
    let p = start_proxy(certs.path(), &config, &aws);
    let secrets: Vec<String> = admins.iter().map(|a| p.enroll(&format!("spiffe://coffer.dev/{a}"))).collect();
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/adm"], None).ok();
    let id = run(&aws, &writer, &["backup", "--repo", "dev/adm", "-"], Some(b"held")).last_line();

    // Calls in order; call i uses admin i/2 with the code of step t + 30*(i%2).
    let t = now();
    let mut calls = 0;
    let mut call = |p: &DevProxy, what: &str, body: serde_json::Value| {
        let (who, secret) = (admins[calls / 2], secrets[calls / 2].clone());
        let code = coffer_proxy::access::mfa::code_at(&secret, t + 30 * (calls as u64 % 2)).unwrap();
        calls += 1;
        let config = agent_config(p, &aws, who, &kek);
        let what = what.to_string();
        async move {
            let client = coffer_tests::raw_client(&config).await.with_totp(Some(code));
            let action = coffer_proto::endpoint::Action::parse(&format!("admin-{what}")).expect("an admin call");
            client.admin(action, &body).await.unwrap_or_else(|e| panic!("admin {what} on S3: {e}"))
        }
    };

    call(&p, "hold", serde_json::json!({ "repo": "dev/adm", "snapshot": id, "on": true })).await;
    let root = aws.head(&format!("dev/adm/snapshots/{id}")).await;
    assert_eq!(root.object_lock_legal_hold_status(), Some(&aws_sdk_s3::types::ObjectLockLegalHoldStatus::On));
    call(&p, "hold", serde_json::json!({ "repo": "dev/adm", "snapshot": id, "on": false })).await;
    let root = aws.head(&format!("dev/adm/snapshots/{id}")).await;
    assert_eq!(root.object_lock_legal_hold_status(), Some(&aws_sdk_s3::types::ObjectLockLegalHoldStatus::Off));

    call(&p, "lockdown", serde_json::json!({ "on": true })).await;
    let refused = run(&aws, &writer, &["backup", "--repo", "dev/adm", "-"], Some(b"during lockdown"));
    assert!(refused.stderr.contains("lockdown"), "{}", refused.stderr);
    call(&p, "lockdown", serde_json::json!({ "on": false })).await;
    run(&aws, &writer, &["backup", "--repo", "dev/adm", "-"], Some(b"after lockdown")).ok();

    call(&p, "reload", serde_json::json!({})).await;
    let plan = call(&p, "expire", serde_json::json!({ "repo": "dev/adm", "dry_run": true })).await;
    let plan: serde_json::Value = serde_json::from_slice(&plan).unwrap();
    assert_eq!(plan["deleted"], serde_json::json!([]), "nothing has expired yet: {plan}");
    let writer_id = serde_json::json!({ "trust_domain": "dev", "identity": "spiffe://coffer.dev/writer" });
    let quarantined = call(&p, "quarantine", writer_id).await;
    let quarantined: serde_json::Value = serde_json::from_slice(&quarantined).unwrap();
    assert_eq!(quarantined["generation"], 1, "{quarantined}");
    let again = run(&aws, &writer, &["backup", "--repo", "dev/adm", "--json", "-"], Some(b"held")).ok();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["bytes_new"], 4, "its earlier upload no longer counts: {again}");
    call(&p, "revoke", serde_json::json!({ "trust_domain": "dev", "identity": "spiffe://coffer.dev/writer" })).await;
    let denied = run(&aws, &writer, &["whoami"], None);
    assert!(denied.stderr.contains("revoked by an administrator"), "{}", denied.stderr);

    // The records are locked for a real, far date...
    let revocations = aws.keys("admin/identities/").await;
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    let until = aws.head(&revocations[0]).await.object_lock_retain_until_date().unwrap().secs() as u64;
    assert!(until > now() + 99 * 365 * DAY && until < now() + 101 * 365 * DAY, "{until}");
    assert_eq!(aws.keys("admin/lockdown/").await.len(), 2);
    let quarantines = aws.keys("admin/quarantine/").await;
    assert_eq!(quarantines.len(), 1, "{quarantines:?}");
    let until = aws.head(&quarantines[0]).await.object_lock_retain_until_date().unwrap().secs() as u64;
    assert!(until > now() + 99 * 365 * DAY, "{until}");
    assert_eq!(aws.keys("admin/mfa/").await.len(), 8, "one used-step record per call");

    // ...and read back by a restarted proxy: the revocation holds, lockdown is off.
    drop(p);
    let p = start_proxy(certs.path(), &config, &aws);
    let denied = run(&aws, &agent_config(&p, &aws, "writer", &kek), &["whoami"], None);
    assert!(denied.stderr.contains("revoked by an administrator"), "{}", denied.stderr);
    let reader = agent_config(&p, &aws, "reader", &kek);
    assert_eq!(run(&aws, &reader, &["restore", "--repo", "dev/adm", &id], None).stdout, b"held");
}

/// Root on the proxy host holds the audit signing key and the proxy's
/// PutObject right: in a versioned bucket a put over a shipped segment adds
/// a version over the locked one, and one re-chained and re-signed would
/// verify on its own. Here the copy is byte-identical (the perfect forgery);
/// `audit verify --store` must still fail, naming the segment, and so must a
/// delete marker hiding one.
#[tokio::test(flavor = "multi_thread")]
async fn a_shipped_audit_segment_written_again_fails_verification() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("path = \"audit/audit.jsonl\"", "path = \"audit/audit.jsonl\"\nsegment_events = 5\nship_secs = 1"),
    )
    .unwrap();
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/aud"], None).ok();
    run(&aws, &writer, &["backup", "--repo", "dev/aud", "-"], Some(b"audited")).ok();
    let verify = || {
        let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
            .arg("--config")
            .arg(&config)
            .args(["audit", "verify", "--store"])
            .envs(aws.moto.env())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let segments = loop {
        // Segments only: the checkpoints beside them are another test's.
        let keys: Vec<String> =
            aws.keys("audit/s3/").await.into_iter().filter(|k| !k.contains("/checkpoints/")).collect();
        if keys.len() >= 2 {
            break keys;
        }
        assert!(std::time::Instant::now() < deadline, "no audit segments shipped: {keys:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let (code, out) = verify();
    assert_eq!(code, Some(0), "{out}");

    let first = &segments[0];
    let body = aws.s3.get_object().bucket(BUCKET).key(first).send().await.unwrap().body.collect().await.unwrap();
    aws.s3.put_object().bucket(BUCKET).key(first).body(body.into_bytes().into()).send().await.unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("written again or deleted") && out.contains(first.as_str()), "{out}");

    let last = segments.last().unwrap();
    aws.s3.delete_object().bucket(BUCKET).key(last).send().await.unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(last.as_str()), "a delete marker is named too: {out}");
}

/// A record naming another KEK than the agent's (a hostile proxy pointing
/// the agent at a key of its choosing, or simply another tenant's) is
/// refused before KMS is asked, unless the agent's config allows that key.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_unwraps_only_with_its_own_or_allowed_keks() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let (a, b) = (aws.key(true).await, aws.key(true).await);
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "", (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let under_a = agent_config(&p, &aws, "writer", &a);
    run(&aws, &under_a, &["init", "--repo", "dev/pin"], None).ok();
    run(&aws, &under_a, &["backup", "--repo", "dev/pin", "-"], Some(b"one")).ok();

    let under_b = agent_config(&p, &aws, "writer", &b);
    let refused = run(&aws, &under_b, &["backup", "--repo", "dev/pin", "-"], Some(b"two"));
    assert_eq!(refused.code(), 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!("was wrapped by {a}, but this agent's key provider is {b}")),
        "{}",
        refused.stderr
    );

    let text = std::fs::read_to_string(&under_b).unwrap();
    std::fs::write(&under_b, format!("{text}allowed_keys = [\"{a}\"]\n")).unwrap();
    run(&aws, &under_b, &["backup", "--repo", "dev/pin", "-"], Some(b"two")).ok();

    // A repository made before chunk-id keys had a KEK of their own keeps
    // its chunk-id key under the data-key KEK: an agent that now names a
    // chunk-id KEK still opens it, and a third key is still refused.
    let c = aws.key(true).await;
    let split = agent_config(&p, &aws, "writer", &a);
    let text = std::fs::read_to_string(&split).unwrap();
    std::fs::write(&split, format!("{text}chunk_id_key_id = \"{c}\"\n")).unwrap();
    run(&aws, &split, &["backup", "--repo", "dev/pin", "-"], Some(b"three")).ok();
    let other = agent_config(&p, &aws, "writer", &b);
    let text = std::fs::read_to_string(&other).unwrap();
    std::fs::write(&other, format!("{text}chunk_id_key_id = \"{c}\"\n")).unwrap();
    let refused = run(&aws, &other, &["backup", "--repo", "dev/pin", "-"], Some(b"four"));
    assert_eq!(refused.code(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains(&format!("was wrapped by {a}")), "{}", refused.stderr);
}

/// Someone with the proxy's write access puts over a stored chunk (a new
/// version above the locked one, with a digest of their choosing): the
/// digest check passes, the version history does not, and scrub raises a
/// critical alert naming the chunk and the snapshot that needs it.
#[tokio::test(flavor = "multi_thread")]
async fn scrub_finds_a_chunk_written_again_in_the_bucket() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let config = proxy_config(certs.path(), &aws, "[scrub]\nobjects_per_run = 1000\ninterval_secs = 1", (30, 7));
    let p = start_proxy(certs.path(), &config, &aws);
    let writer = agent_config(&p, &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/scrub"], None).ok();
    let id = run(&aws, &writer, &["backup", "--repo", "dev/scrub", "-"], Some(b"scrubbed")).last_line();
    let chunk = aws.keys("dev/scrub/chunks/").await.remove(0);
    let head = aws.head(&chunk).await;
    let digest = head.metadata().and_then(|m| m.get("coffer-blake3")).unwrap().clone();
    let body = aws.s3.get_object().bucket(BUCKET).key(&chunk).send().await.unwrap().body.collect().await.unwrap();
    aws.s3
        .put_object()
        .bucket(BUCKET)
        .key(&chunk)
        .metadata("coffer-blake3", digest)
        .body(body.into_bytes().into())
        .send()
        .await
        .unwrap();
    let alert = p.wait_for_event("the scrub alert", |e| {
        e["action"] == "alert"
            && e["reason"].as_str().is_some_and(|r| r.contains("written again") && r.contains(&chunk))
    });
    assert!(alert["reason"].as_str().unwrap().contains(&id), "{alert}");
}

/// Deletes go through their own credentials (`store.delete_profile`, the
/// shipped template's delete-only role): with a profile that has none,
/// every delete fails, saying so, while writes and reads work; with the
/// proxy's own, an object whose lock ended is deleted, version and all, and
/// the folder walk that finds repositories sees it gone.
#[tokio::test(flavor = "multi_thread")]
async fn deletes_use_their_own_credentials() {
    use coffer_proxy::store::ObjectStore as _;
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let config = |extra: &str| -> coffer_proxy::store::S3Config {
        toml::from_str(&format!(
            "bucket = \"{BUCKET}\"\nendpoint = \"{}\"\npath_style = true\nregion = \"us-east-1\"\n{extra}",
            aws.moto.endpoint
        ))
        .unwrap()
    };
    let sdk = aws.moto.sdk().await;
    let own = coffer_proxy::store::S3Store::connect(&config(""), &sdk).await.unwrap();
    let apart = coffer_proxy::store::S3Store::connect(&config("delete_profile = \"coffer-no-such-profile\""), &sdk)
        .await
        .unwrap();
    let until = now() + 2;
    for key in ["dev/a/config", "dev/b/c/config", "dev/a/chunks/ab/x"] {
        apart.put_new(key, bytes::Bytes::from_static(b"x"), until).await.unwrap();
    }
    assert_eq!(apart.folders("dev/").await.unwrap(), ["dev/a/", "dev/b/"]);
    apart.put_new("dev/a/long", bytes::Bytes::from_static(b"0123456789"), until).await.unwrap();
    apart.put_new("dev/a/empty", bytes::Bytes::new(), until).await.unwrap();
    let head = |key: &'static str, len: usize| {
        let apart = apart.clone();
        async move { apart.get_head(key, len).await.unwrap().map(|b| b.to_vec()) }
    };
    assert_eq!(head("dev/a/long", 4).await.as_deref(), Some(&b"0123"[..]), "a ranged read");
    assert_eq!(head("dev/a/long", 64).await.as_deref(), Some(&b"0123456789"[..]));
    assert_eq!(head("dev/a/long", 0).await.as_deref(), Some(&b""[..]));
    assert_eq!(head("dev/a/empty", 76).await.as_deref(), Some(&b""[..]), "S3 answers 416 for an empty object");
    assert!(head("dev/a/nothing", 4).await.is_none());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let key = "dev/a/chunks/ab/x";
    let refused = apart.delete(key, now()).await.unwrap_err();
    assert!(
        refused.to_string().contains(key) && refused.to_string().contains("no usable AWS credentials"),
        "{refused}"
    );
    assert!(!refused.retryable(), "an operator must mend it");
    assert!(apart.head(key).await.unwrap().is_some(), "still there");
    own.delete(key, now()).await.unwrap();
    assert!(own.head(key).await.unwrap().is_none());
    let versions = aws.s3.list_object_versions().bucket(BUCKET).prefix(key).send().await.unwrap();
    assert!(versions.versions().is_empty() && versions.delete_markers().is_empty(), "{versions:?}");
}

/// The lifecycle pass on S3, two proxies on one bucket, each trying a pass
/// every second: this month's keeper under `monthly = 12` is locked to the
/// end of its twelfth month, as S3 itself reports it (HeadObject), and each
/// interval has one lease, so one pass.
#[tokio::test(flavor = "multi_thread")]
async fn the_lifecycle_pass_extends_keepers_locks_in_the_bucket() {
    let aws = Aws::start().await;
    aws.bucket(BUCKET, true).await;
    let kek = aws.key(true).await;
    let certs = certificates();
    let base = proxy_config(certs.path(), &aws, "", (30, 7));
    let text = std::fs::read_to_string(&base).unwrap()
        + "\n[lifecycle]\ninterval_secs = 1\njitter_secs = 0\n\n[[repo_policies]]\nrepos = \"dev/**\"\n\
           classification = \"internal\"\nkeep = { daily = 7, monthly = 12 }\n";
    let mut proxies = Vec::new();
    for name in ["east", "west"] {
        let path = certs.path().join(format!("{name}.toml"));
        let cfg = text
            .replace("proxy_id = \"s3\"", &format!("proxy_id = \"{name}\""))
            .replace("path = \"audit/audit.jsonl\"", &format!("path = \"audit-{name}/audit.jsonl\""));
        std::fs::write(&path, cfg).unwrap();
        proxies.push(start_proxy(certs.path(), &path, &aws));
    }
    let writer = agent_config(&proxies[0], &aws, "writer", &kek);
    run(&aws, &writer, &["init", "--repo", "dev/life"], None).ok();
    let id =
        run(&aws, &writer, &["backup", "--repo", "dev/life", "-"], Some(&random_bytes("kept", 2 << 20))).last_line();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let events = || -> Vec<serde_json::Value> {
        ["east", "west"]
            .iter()
            .flat_map(|name| {
                let log = certs.path().join(format!("audit-{name}/audit.jsonl"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect::<Vec<serde_json::Value>>()
            })
            .collect()
    };
    let promoted = loop {
        if let Some(e) = events().into_iter().find(|e| e["action"] == "lifecycle" && e["repo"] == "dev/life") {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no lifecycle pass recorded a promotion: {:?}", events());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(promoted["reason"].as_str().unwrap().contains(&id), "{promoted}");
    let year = now() + 334 * DAY;
    let keys: Vec<String> =
        aws.keys("dev/life/chunks/").await.into_iter().chain([format!("dev/life/snapshots/{id}")]).collect();
    for key in keys {
        let until = aws.head(&key).await.object_lock_retain_until_date().unwrap().secs() as u64;
        assert!(until >= year, "{key}: locked until {until}, not to the twelfth month");
    }
    // One lease per interval: names are distinct interval numbers, never
    // two for one interval.
    // Two proxies each probe the clock every interval, but each interval
    // has at most one lease.
    let keys = aws.keys("admin/lifecycle/").await;
    let leases: Vec<&String> = keys.iter().filter(|k| !k.contains("/clock/")).collect();
    let probes = keys.len() - leases.len();
    assert!(!leases.is_empty() && probes >= leases.len(), "{keys:?}");
    let probe_intervals: std::collections::BTreeSet<&str> =
        keys.iter().filter_map(|k| k.strip_prefix("admin/lifecycle/clock/")).map(|k| &k[..20]).collect();
    for lease in &leases {
        assert!(probe_intervals.contains(&lease["admin/lifecycle/".len()..]), "{lease}: no proxy probed first");
    }
}
