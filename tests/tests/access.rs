//! Access control through the real proxy: every role against every
//! endpoint, trust domains, cross-domain grants, revoked and expired
//! certificates, source allowlists, KEK allowlists and reloads.

use std::path::{Path, PathBuf};

use coffer_tests::{coffer, DevProxy};
use http::Method;

/// An agent config for proxy `p` presenting `cert_dir/name.pem`.
fn foreign_config(p: &DevProxy, cert_dir: &Path, name: &str) -> PathBuf {
    let path = p.dir.join(format!("foreign-{name}.toml"));
    let d = cert_dir.display();
    let text = format!(
        "proxy = \"https://{}\"\nca = \"ca.pem\"\ncert = \"{d}/{name}.pem\"\nkey = \"{d}/{name}.key\"\n[keys]\nprovider = \"local\"\nmaster_key = \"master.key\"\n",
        p.addr
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A second CA: a stopped dev folder whose certificates we borrow.
fn other_domain() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(DevProxy::start_in(dir.path()));
    dir
}

const DR_SETUP: &str = r#"
[[trust_domains]]
name = "dr"
ca = "DR/ca.pem"
repos = ["dr/**"]

[[rules]]
name = "dr writer"
trust_domain = "dr"
identity = "spiffe://coffer.dev/writer"
roles = ["writer"]
repos = ["dr/**"]

[[grants]]
name = "dr reads dev/shared"
trust_domain = "dr"
identity = "spiffe://coffer.dev/reader"
from_domain = "dev"
repos = ["dev/shared/**"]
"#;

fn with_dr_domain(p: &DevProxy, dr: &Path) {
    p.append_config(&DR_SETUP.replace("DR/", &format!("{}/", dr.display())));
    assert!(p.reload(), "reload with a second trust domain failed:\n{}", p.audit_log());
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    DevWriter,
    DevReader,
    DevAuditor,
    DevAdmin,
    DrWriter,
    DrReader,
}

/// What the policy must answer, written out by hand from the issue's rules.
fn expected(who: Who, action: &str, repo: &str) -> bool {
    let writes = ["whoami", "put-config", "get-config", "put-key", "missing", "put-chunk", "commit"];
    let reads = ["whoami", "get-config", "get-key", "get-chunk", "list-copies", "list-snapshots", "get-snapshot"];
    let dev_repo = repo.starts_with("dev/");
    match who {
        Who::DevWriter => writes.contains(&action) && (action == "whoami" || dev_repo),
        Who::DevReader => reads.contains(&action) && (action == "whoami" || dev_repo),
        Who::DevAuditor => ["whoami", "list-snapshots"].contains(&action) && (action == "whoami" || dev_repo),
        Who::DevAdmin => ["whoami", "admin-revoke", "admin-quarantine", "admin-reload"].contains(&action),
        Who::DrWriter => writes.contains(&action) && (action == "whoami" || repo.starts_with("dr/")),
        Who::DrReader => reads.contains(&action) && (action == "whoami" || repo.starts_with("dev/shared/")),
    }
}

fn request(action: &str, repo: &str) -> (Method, String) {
    let chunk = "ab".repeat(32);
    let id16 = "cd".repeat(16);
    match action {
        "whoami" => (Method::GET, "/v1/whoami".into()),
        "put-config" => (Method::PUT, format!("/v1/repos/{repo}/config")),
        "get-config" => (Method::GET, format!("/v1/repos/{repo}/config")),
        "put-key" => (Method::PUT, format!("/v1/repos/{repo}/keys/{id16}")),
        "get-key" => (Method::GET, format!("/v1/repos/{repo}/keys/{id16}")),
        "missing" => (Method::POST, format!("/v1/repos/{repo}/chunks/missing")),
        "put-chunk" => (Method::PUT, format!("/v1/repos/{repo}/chunks/{chunk}")),
        "get-chunk" => (Method::GET, format!("/v1/repos/{repo}/chunks/{chunk}")),
        "list-copies" => (Method::GET, format!("/v1/repos/{repo}/chunks/{chunk}/copies")),
        "commit" => (Method::POST, format!("/v1/repos/{repo}/snapshots")),
        "list-snapshots" => (Method::GET, format!("/v1/repos/{repo}/snapshots")),
        "get-snapshot" => (Method::GET, format!("/v1/repos/{repo}/snapshots/{id16}")),
        "admin-revoke" => (Method::POST, "/v1/admin/revoke".into()),
        "admin-reload" => (Method::POST, "/v1/admin/reload".into()),
        "admin-quarantine" => (Method::POST, "/v1/admin/quarantine".into()),
        other => panic!("unknown action {other}"),
    }
}

const ACTIONS: [&str; 15] = [
    "whoami",
    "put-config",
    "get-config",
    "put-key",
    "get-key",
    "missing",
    "put-chunk",
    "get-chunk",
    "list-copies",
    "commit",
    "list-snapshots",
    "get-snapshot",
    "admin-revoke",
    "admin-quarantine",
    "admin-reload",
];

#[tokio::test(flavor = "multi_thread")]
async fn every_role_every_endpoint_own_repo_other_repo_other_domain() {
    let p = DevProxy::start();
    let dr = other_domain();
    with_dr_domain(&p, dr.path());
    let configs = [
        (Who::DevWriter, p.config("writer")),
        (Who::DevReader, p.config("reader")),
        (Who::DevAuditor, p.config("auditor")),
        (Who::DevAdmin, p.config("admin")),
        (Who::DrWriter, foreign_config(&p, dr.path(), "writer")),
        (Who::DrReader, foreign_config(&p, dr.path(), "reader")),
    ];
    let repos = ["dev/own", "prod/x", "dr/x", "dev/shared/x"];
    let mut denials = Vec::new();
    let mut identities = std::collections::HashMap::new();
    for (who, config) in &configs {
        let client = coffer_tests::raw_client(config).await;
        identities.insert(format!("{who:?}"), client.whoami().await.unwrap().identity);
        for action in ACTIONS {
            let global = action == "whoami" || action.starts_with("admin-");
            let targets: &[&str] = if global { &["-"] } else { &repos };
            for repo in targets {
                let (method, path) = request(action, repo);
                // Bodies are empty or junk: an allowed request fails later
                // (400/404), which still proves it was not denied.
                let body = if method == Method::GET { vec![] } else { b"junk".to_vec() };
                let status = match client.raw(method, &path, body, None).await {
                    Ok(_) => 200,
                    Err(e) => e.status().map_or(0, |s| s.as_u16()),
                };
                let want = expected(*who, action, repo);
                assert_eq!(status != 403, want, "{who:?} {action} on {repo}: got {status}");
                // Allowed means answered on its merits: a 4xx for the junk
                // body, never a dropped connection or a server error.
                assert!(!want || (200..500).contains(&status), "{who:?} {action} on {repo}: got {status}");
                if !want {
                    denials.push((*who, action, *repo));
                }
            }
        }
    }
    // Every denial is an audit event naming the action, repo and identity.
    let events = p.audit_events();
    for (who, action, repo) in denials {
        let domain = if matches!(who, Who::DrWriter | Who::DrReader) { "dr" } else { "dev" };
        let identity = &identities[&format!("{who:?}")];
        let found = events.iter().any(|e| {
            e["action"] == action
                && e["outcome"] == "denied"
                && e["trust_domain"] == domain
                && e["identity"] == identity.as_str()
                && (e["repo"] == repo || e["repo"].is_null())
        });
        assert!(found, "no denied audit event for {who:?} {action} on {repo}");
    }
    assert!(p.stored_for_clients().is_empty(), "junk bodies must store nothing");
}

#[test]
fn cross_domain_read_works_and_cross_domain_write_fails() {
    let p = DevProxy::start();
    let dr = other_domain();
    with_dr_domain(&p, dr.path());
    coffer(&p.writer(), &["init", "--repo", "dev/shared/db"], None).ok();
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/shared/db", "-"], Some(b"ledger rows")).last_line();

    let dr_reader = foreign_config(&p, dr.path(), "reader");
    let restored = coffer(&dr_reader, &["restore", "--repo", "dev/shared/db", &id], None);
    assert_eq!(restored.ok(), "ledger rows");
    // A repository outside the grant, initialised, so only the policy can
    // refuse it (an uninitialised one would fail with 404 whatever the grant).
    coffer(&p.writer(), &["init", "--repo", "dev/db"], None).ok();
    let outside = coffer(&dr_reader, &["snapshots", "--repo", "dev/db"], None);
    assert_eq!(outside.code(), 1, "the grant covers dev/shared/** only");
    assert!(outside.stderr.contains("403") && outside.stderr.contains("dev/db"), "{}", outside.stderr);

    let dr_writer = foreign_config(&p, dr.path(), "writer");
    let write = coffer(&dr_writer, &["backup", "--repo", "dev/shared/db", "-"], Some(b"overwrite"));
    assert_eq!(write.code(), 1);
    assert!(write.stderr.contains("403"), "{}", write.stderr);
    let init = coffer(&dr_writer, &["init", "--repo", "dev/shared/other"], None);
    assert!(init.stderr.contains("may not put-config on repository dev/shared/other"), "{}", init.stderr);
    // The same name in its own domain's namespace works.
    coffer(&dr_writer, &["init", "--repo", "dr/db"], None).ok();
}

#[test]
fn revoked_and_expired_certificates_fail_the_handshake() {
    let p = DevProxy::start();
    p.dev(&["issue", "--name", "host1", "--identity", "spiffe://coffer.dev/writer"]);
    p.dev(&["issue", "--name", "old", "--identity", "spiffe://coffer.dev/writer", "--days", "-1"]);
    let host1 = p.config("host1");
    assert!(coffer(&host1, &["whoami"], None).ok().contains("spiffe://coffer.dev/writer"));

    let old = coffer(&p.config("old"), &["whoami"], None);
    assert_eq!(old.code(), 1);
    assert!(old.stderr.contains("refused the TLS session"), "{}", old.stderr);
    p.wait_for_event("expired", |e| {
        e["action"] == "handshake" && e["reason"].as_str().unwrap_or("").contains("certificate expired")
    });

    // A valid certificate from the right CA, but issued for server use.
    p.dev(&["issue", "--name", "misused", "--identity", "spiffe://coffer.dev/writer", "--wrong-usage"]);
    let misused = coffer(&p.config("misused"), &["whoami"], None);
    assert_eq!(misused.code(), 1);
    assert!(misused.stderr.contains("refused the TLS session"), "{}", misused.stderr);
    p.wait_for_event("wrong key usage", |e| {
        e["action"] == "handshake" && e["reason"].as_str().unwrap_or("").to_lowercase().contains("usage")
    });

    p.dev(&["revoke", "--name", "host1"]);
    assert!(p.reload());
    let revoked = coffer(&host1, &["whoami"], None);
    assert_eq!(revoked.code(), 1, "{}", revoked.stdout.len());
    p.wait_for_event("revoked", |e| {
        e["action"] == "handshake" && e["reason"].as_str().unwrap_or("").to_lowercase().contains("revoked")
    });
    // Others are unaffected.
    coffer(&p.writer(), &["whoami"], None).ok();
}

#[test]
fn invalid_reload_keeps_the_running_configuration() {
    let p = DevProxy::start();
    let path = p.dir.join("proxy.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("roles = [\"writer\"]", "roles = [\"writer\"]\nbogus = 1")).unwrap();
    assert!(!p.reload(), "an invalid file must be refused");
    let event = p.audit_events().into_iter().rev().find(|e| e["action"] == "reload").unwrap();
    assert!(event["reason"].as_str().unwrap().contains("bogus"), "{event}");
    coffer(&p.writer(), &["init", "--repo", "dev/still"], None).ok();

    // A valid change applies at once: the writer loses dev/**.
    std::fs::write(
        &path,
        good.replace(
            "repos = [\"dev/**\"]\n\n[[rules]]\nname = \"dev reader\"",
            "repos = [\"dev/only/**\"]\n\n[[rules]]\nname = \"dev reader\"",
        ),
    )
    .unwrap();
    assert!(p.reload());
    let run = coffer(&p.writer(), &["init", "--repo", "dev/other"], None);
    assert!(run.stderr.contains("may not put-config on repository dev/other"), "{}", run.stderr);
    coffer(&p.writer(), &["init", "--repo", "dev/only/x"], None).ok();
}

#[test]
fn source_addresses_are_checked_before_tls_and_per_rule() {
    let p = DevProxy::start();
    let path = p.dir.join("proxy.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    // Per rule: the reader may only come from 10.0.0.0/8.
    let reader_only_from_10 = good.replace(
        "identity = \"spiffe://coffer.dev/reader\"\nroles = [\"reader\"]\nrepos = [\"dev/**\"]",
        "identity = \"spiffe://coffer.dev/reader\"\nroles = [\"reader\"]\nrepos = [\"dev/**\"]\nsource_cidrs = [\"10.0.0.0/8\"]",
    );
    assert_ne!(reader_only_from_10, good);
    std::fs::write(&path, &reader_only_from_10).unwrap();
    assert!(p.reload());
    coffer(&p.writer(), &["init", "--repo", "dev/net"], None).ok();
    let run = coffer(&p.reader(), &["snapshots", "--repo", "dev/net"], None);
    assert!(run.stderr.contains("from 127.0.0.1"), "{}", run.stderr);

    // Globally: nobody from loopback even gets a handshake.
    std::fs::write(&path, format!("{good}\n[network]\nallow_cidrs = [\"10.0.0.0/8\"]\n")).unwrap();
    assert!(p.reload());
    // The agent cannot tell a refused handshake from a proxy starting up,
    // so it retries until its deadline.
    let run = coffer_tests::coffer_retrying(&p.writer(), &["whoami"], None);
    assert_eq!(run.code(), 1);
    assert!(run.retries() > 0 && run.stderr.contains("TLS handshake"), "{}", run.stderr);
    p.wait_for_event("connect refusal", |e| e["action"] == "connect" && e["outcome"] == "denied");
}

#[test]
fn kek_allowlist_refuses_other_keys() {
    let p = DevProxy::start();
    let path = p.dir.join("proxy.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    let limited = good.replacen(
        "roles = [\"writer\"]",
        "roles = [\"writer\"]\nkms_keys = [\"arn:aws:kms:eu-west-1:1:key/only-this\"]",
        1,
    );
    std::fs::write(&path, limited).unwrap();
    assert!(p.reload());
    let run = coffer(&p.writer(), &["init", "--repo", "dev/k"], None);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr.contains("key-refused") && run.stderr.contains("not allowed by rule dev writer"),
        "{}",
        run.stderr
    );
    assert!(p.stored("dev/k").is_empty());
}

/// Restarts the proxy with `[limits]` set as given.
fn with_limits(p: DevProxy, limits: &str) -> DevProxy {
    p.restarted(|text| format!("{text}\n[limits]\n{limits}\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn over_rate_identity_gets_429_while_others_continue() {
    let p = with_limits(DevProxy::start(), "identity_rate = 1.0\nidentity_burst = 5.0");
    let writer = coffer_tests::raw_client(&p.writer()).await;
    let reader = coffer_tests::raw_client(&p.reader()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let w = writer.clone();
        tasks.spawn(async move { w.whoami().await.map_err(|e| e.status().map(|s| s.as_u16())) });
    }
    let mut limited = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => {}
            Err(Some(429)) => limited += 1,
            Err(other) => panic!("unexpected failure {other:?}"),
        }
    }
    assert!(limited >= 10, "only {limited} of 20 requests were limited");
    for _ in 0..3 {
        reader.whoami().await.expect("another identity is not limited");
    }
    p.wait_for_event("rate limit", |e| {
        e["action"] == "limit" && e["identity"] == "spiffe://coffer.dev/writer" && e["outcome"] == "denied"
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_cap_answers_503() {
    let p = with_limits(DevProxy::start(), "identity_in_flight = 1");
    coffer(&p.writer(), &["init", "--repo", "dev/busy"], None).ok();
    let writer = coffer_tests::raw_client(&p.writer()).await;
    // As many ids as one query may ask about: each request takes a while.
    let n = coffer_proto::endpoint::MISSING_IDS_MAX as u32;
    let ids: Vec<u8> = (0..n).flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes().to_vec()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (w, body) = (writer.clone(), ids.clone());
        tasks.spawn(async move {
            w.raw(Method::POST, "/v1/repos/dev/busy/chunks/missing", body, None)
                .await
                .map_err(|e| e.status().map(|s| s.as_u16()))
        });
    }
    let mut busy = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(answer) => assert_eq!(answer.len(), ids.len(), "all ids are missing"),
            Err(Some(503)) => busy += 1,
            Err(other) => panic!("unexpected failure {other:?}"),
        }
    }
    assert!(busy >= 1, "no request was turned away at an in-flight cap of 1");
}

#[tokio::test]
async fn a_client_that_never_reads_its_responses_is_cut_off() {
    let p = with_limits(DevProxy::start(), "idle_timeout_secs = 1");
    let cfg = coffer_client::ClientConfig::load(&p.writer()).unwrap();
    let tls = coffer_client::tls_stream(&cfg).await.unwrap();
    // A stream window of zero: the proxy may not send one byte of a body.
    let (mut h2, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut unread = Vec::new();
    for _ in 0..4 {
        h2 = h2.ready().await.unwrap();
        let req = http::Request::get(format!("https://{}/v1/whoami", p.addr)).body(()).unwrap();
        let (answer, _) = h2.send_request(req, true).unwrap();
        // Headers are not flow-controlled, so they arrive; the bodies are kept, never read.
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200);
        unread.push(answer.into_body());
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the proxy must drop a connection whose responses are never read");
    let event = p.wait_for_event("unread responses", |e| e["action"] == "connection");
    assert_eq!(event["identity"], "spiffe://coffer.dev/writer", "{event}");
    assert!(event["reason"].as_str().unwrap().contains("unread"), "{event}");
    drop(unread);
    // Everyone else, the same identity included, carries on.
    coffer(&p.writer(), &["whoami"], None).ok();
}

#[tokio::test]
async fn idle_and_silent_connections_are_closed() {
    let p = with_limits(DevProxy::start(), "idle_timeout_secs = 1\nhandshake_timeout_secs = 1");
    let writer = coffer_tests::raw_client(&p.writer()).await;
    writer.whoami().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let before = writer.connections().await;
    writer.whoami().await.expect("the client reconnects");
    assert_eq!(writer.connections().await, before + 1, "the idle connection must have been closed");

    // Slow-loris: connect and say nothing.
    use tokio::io::AsyncReadExt as _;
    let mut silent = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the proxy must hang up on a silent client: {n:?}");
    p.wait_for_event("handshake timeout", |e| e["action"] == "handshake" && e["reason"] == "handshake timed out");
}

/// A CA of the dev domain in the test's hands: the dev CA's own key, to
/// sign CRLs and an intermediate CA the proxy never heard of.
struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

impl TestCa {
    fn dev(dir: &std::path::Path) -> Self {
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
        let cert = ca_params("Coffer dev CA").self_signed(&key).unwrap();
        Self { key, cert }
    }

    /// (intermediate CA, its serial, its PEM) signed by this CA.
    fn intermediate(&self) -> (Self, Vec<u8>, String) {
        let mut p = ca_params("Coffer test intermediate");
        let serial = vec![0x42, 7, 7, 7];
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = cert.pem();
        (Self { key, cert }, serial, pem)
    }

    /// A client certificate for `identity`: (cert PEM, key PEM).
    fn leaf(&self, identity: &str) -> (String, String) {
        use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "intermediate's host");
        p.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        (p.signed_by(&key, &self.cert, &self.key).unwrap().pem(), key.serialize_pem())
    }

    /// A CRL revoking `serials`, valid until `next_update_days` from now
    /// (negative: already expired).
    fn crl(&self, serials: &[Vec<u8>], next_update_days: i64) -> String {
        use time::{Duration, OffsetDateTime};
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::days(2),
            next_update: now + Duration::days(next_update_days),
            crl_number: rcgen::SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.cert, &self.key).unwrap().pem().unwrap()
    }
}

/// Revocation covers the whole chain, not only the client's own
/// certificate: revoking an intermediate CA cuts off what it issued. And a
/// CRL past its nextUpdate is refused, not trusted as if it were current.
#[test]
fn a_revoked_intermediate_and_an_expired_crl_fail_the_handshake() {
    let p = DevProxy::start();
    let root = TestCa::dev(&p.dir);
    let (intermediate, serial, intermediate_pem) = root.intermediate();
    let (leaf, leaf_key) = intermediate.leaf("spiffe://coffer.dev/writer");
    std::fs::write(p.dir.join("via-intermediate.pem"), format!("{leaf}{intermediate_pem}")).unwrap();
    std::fs::write(p.dir.join("via-intermediate.key"), leaf_key).unwrap();
    let config = p.dir.join("via-intermediate.toml");
    let writer = std::fs::read_to_string(p.writer()).unwrap();
    std::fs::write(
        &config,
        writer.replace("writer.pem", "via-intermediate.pem").replace("writer.key", "via-intermediate.key"),
    )
    .unwrap();
    assert_ne!(std::fs::read_to_string(&config).unwrap(), writer);
    // The domain lists a CRL per CA: the root's and the intermediate's.
    std::fs::write(p.dir.join("intermediate-crl.pem"), intermediate.crl(&[], 30)).unwrap();
    let text = std::fs::read_to_string(p.dir.join("proxy.toml")).unwrap();
    std::fs::write(
        p.dir.join("proxy.toml"),
        text.replace("crls = [\"crl.pem\"]", "crls = [\"crl.pem\", \"intermediate-crl.pem\"]"),
    )
    .unwrap();
    assert!(p.reload());
    assert!(coffer(&config, &["whoami"], None).ok().contains("spiffe://coffer.dev/writer"));

    std::fs::write(p.dir.join("crl.pem"), root.crl(&[serial], 30)).unwrap();
    assert!(p.reload());
    let revoked = coffer(&config, &["whoami"], None);
    assert_eq!(revoked.code(), 1, "a certificate under a revoked intermediate CA: {}", revoked.stderr);
    p.wait_for_event("revoked intermediate", |e| {
        e["action"] == "handshake" && e["reason"].as_str().unwrap_or("").to_lowercase().contains("revoked")
    });
    coffer(&p.writer(), &["whoami"], None).ok();

    std::fs::write(p.dir.join("crl.pem"), root.crl(&[], -1)).unwrap();
    assert!(p.reload());
    let stale = coffer(&p.writer(), &["whoami"], None);
    assert_eq!(stale.code(), 1, "a CRL past its nextUpdate must not be trusted: {}", stale.stderr);
    p.wait_for_event("expired CRL", |e| {
        e["action"] == "handshake" && e["reason"].as_str().unwrap_or("").to_lowercase().contains("revocation list")
    });
}

/// A certificate revoked in the CRL while its connection is open: the
/// reload cuts that connection at once, not only the next handshake.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_revokes_a_certificate_closes_its_open_connections() {
    let p = DevProxy::start();
    p.dev(&["issue", "--name", "host2", "--identity", "spiffe://coffer.dev/writer"]);
    let client = coffer_tests::raw_client(&p.config("host2")).await;
    let bystander = coffer_tests::raw_client(&p.writer()).await;
    client.whoami().await.unwrap();
    bystander.whoami().await.unwrap();
    assert_eq!(client.connections().await, 1);

    p.dev(&["revoke", "--name", "host2"]);
    assert!(p.reload());
    let cut = p.wait_for_event("the open connection cut", |e| {
        e["action"] == "connection" && e["reason"].as_str().unwrap_or("").contains("no longer accepted after a reload")
    });
    assert_eq!(cut["identity"], "spiffe://coffer.dev/writer", "{cut}");
    assert!(client.whoami().await.is_err(), "the revoked certificate's requests fail");
    bystander.whoami().await.expect("other certificates' connections stay open");
    assert_eq!(bystander.connections().await, 1, "and were not reconnected");
}
