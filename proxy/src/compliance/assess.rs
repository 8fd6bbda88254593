//! `coffer-proxy assess`: checks the deployment as an auditor's tool would
//! and says what to fix: the bucket's lock default, public access block and
//! TLS-only policy; KEKs unusable or not rotating, and key policies that
//! break the separation of duties; certificates close to
//! expiry; rules broader than needed; repositories without a policy; the
//! audit trail's signing key, chain and shipping.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::access::policy::Role;
use crate::config::{KeysConfig, ProxyConfig, StoreConfig};

/// Certificates expiring within this are a finding.
pub const CERT_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// Client certificates last seen longer ago than this are not checked.
pub const CLIENT_SEEN_WINDOW: Duration = Duration::from_secs(90 * 86_400);
/// Sealed audit segments left unshipped longer than this are a finding.
pub const UNSHIPPED_WARNING: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Level,
    pub check: &'static str,
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

fn finding(
    severity: Level,
    check: &'static str,
    subject: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding { severity, check, subject: subject.into(), problem: problem.into(), fix: fix.into() }
}

/// Certificates in `path` that expire within `CERT_WARNING` of `now`.
pub fn certificate_findings(what: &str, path: &Path, now: u64) -> Vec<Finding> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let Ok(certs) = crate::access::trust::read_certs(path) else {
        return vec![finding(
            Level::High,
            "certificates",
            path.display().to_string(),
            format!("the {what} certificate cannot be read"),
            "fix the path in the configuration",
        )];
    };
    let mut out = Vec::new();
    for der in certs {
        let Ok((_, cert)) = X509Certificate::from_der(&der) else { continue };
        let not_after = cert.validity().not_after.timestamp().max(0) as u64;
        let subject = format!("{} ({})", cert.subject(), path.display());
        out.extend(expiry_finding(what, subject, not_after, now, "reload (SIGHUP)"));
    }
    out
}

/// Agents' certificates as seen at handshakes (`clientcerts`) in the last
/// `CLIENT_SEEN_WINDOW`: one that stopped connecting long ago is gone, not
/// about to break.
pub fn client_certificate_findings(seen: &crate::access::clientcerts::Sightings, now: u64) -> Vec<Finding> {
    seen.iter()
        .filter(|(_, s)| now.saturating_sub(s.last_seen) <= CLIENT_SEEN_WINDOW.as_secs())
        .filter_map(|(who, s)| expiry_finding("client", who.clone(), s.not_after, now, "install it on the host"))
        .collect()
}

/// A finding if `not_after` has passed or is within `CERT_WARNING` of `now`.
fn expiry_finding(what: &str, subject: String, not_after: u64, now: u64, then: &str) -> Option<Finding> {
    let (problem, fix) = if not_after <= now {
        (format!("the {what} certificate has expired"), format!("issue a new one and {then}"))
    } else if not_after - now <= CERT_WARNING.as_secs() {
        let days = (not_after - now) / 86_400;
        (
            format!("the {what} certificate expires in {days} days"),
            format!("issue a new one and {then} before it expires"),
        )
    } else {
        return None;
    };
    Some(finding(Level::High, "certificates", subject, problem, fix))
}

/// Rules broader than a writer needs.
fn policy_findings(cfg: &ProxyConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
        if r.roles.contains(&Role::Writer) {
            if r.repos.iter().any(|p| p == "**" || p.starts_with('*')) {
                out.push(finding(
                    Level::Medium,
                    "policy",
                    &name,
                    "a writer may write to every repository",
                    "give each host its own repository pattern",
                ));
            }
            if r.identity.contains('*') {
                out.push(finding(
                    Level::Medium,
                    "policy",
                    &name,
                    "the writer rule matches many identities",
                    "name identities exactly, or give each its own repository",
                ));
            }
        }
    }
    for (i, g) in cfg.grants.iter().enumerate() {
        if g.repos.iter().any(|p| p == "**") {
            let name = g.name.clone().unwrap_or_else(|| format!("grants[{i}]"));
            out.push(finding(
                Level::Low,
                "policy",
                name,
                format!("trust domain {} may read every repository of {}", g.trust_domain, g.from_domain),
                "grant the repositories disaster recovery needs, not all",
            ));
        }
    }
    out
}

async fn bucket_findings(s3: &crate::store::S3Config) -> Vec<Finding> {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(s3.path_style);
    if let Some(r) = &s3.region {
        b = b.region(aws_config::Region::new(r.clone()));
    }
    if let Some(e) = &s3.endpoint {
        b = b.endpoint_url(e);
    }
    let client = aws_sdk_s3::Client::from_conf(b.build());
    let bucket = &s3.bucket;
    let mut out = Vec::new();
    match client.get_object_lock_configuration().bucket(bucket).send().await {
        Ok(lock) => {
            let rule = lock.object_lock_configuration().and_then(|c| c.rule()).and_then(|r| r.default_retention());
            if rule.is_none() {
                out.push(finding(
                    Level::Medium,
                    "bucket",
                    bucket,
                    "no default Object Lock retention",
                    "set a COMPLIANCE default retention as a backstop for objects written by anything but Coffer",
                ));
            }
        }
        Err(_) => out.push(finding(
            Level::High,
            "bucket",
            bucket,
            "Object Lock is not enabled",
            "store backups only in a bucket created with Object Lock",
        )),
    }
    // Some S3 implementations answer GetBucketVersioning in a form the SDK
    // cannot read (moto): only a clear answer that it is off is a finding.
    if let Ok(v) = client.get_bucket_versioning().bucket(bucket).send().await {
        if v.status() != Some(&aws_sdk_s3::types::BucketVersioningStatus::Enabled) {
            out.push(finding(
                Level::High,
                "bucket",
                bucket,
                "versioning is not enabled",
                "enable versioning (Object Lock requires it)",
            ));
        }
    }
    let blocked = client
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .ok()
        .and_then(|r| r.public_access_block_configuration().cloned())
        .is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        });
    if !blocked {
        out.push(finding(
            Level::High,
            "bucket",
            bucket,
            "the public access block is missing or partial",
            "turn on all four public access block settings",
        ));
    }
    let policy =
        client.get_bucket_policy().bucket(bucket).send().await.ok().and_then(|p| p.policy().map(str::to_string));
    if !policy.as_deref().is_some_and(|p| denies_plain_http(p, bucket)) {
        out.push(finding(
            Level::High,
            "bucket",
            bucket,
            "no bucket policy denies access without TLS",
            "add a Deny statement on aws:SecureTransport = false (see docs/aws.md)",
        ));
    }
    out
}

/// Whether a bucket policy refuses every request made without TLS: a `Deny`
/// for every principal and every S3 action, on the bucket and all its
/// objects, when `aws:SecureTransport` is false. A statement that covers
/// less (some prefix, some principals, some actions) does not count.
fn denies_plain_http(policy: &str, bucket: &str) -> bool {
    use serde_json::Value;
    fn list(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    let Ok(doc) = serde_json::from_str::<Value>(policy) else { return false };
    let statements = match &doc["Statement"] {
        Value::Array(a) => a.iter().collect(),
        s @ Value::Object(_) => vec![s],
        _ => Vec::new(),
    };
    let arn = format!("arn:aws:s3:::{bucket}");
    let objects = format!("{arn}/*");
    statements.into_iter().any(|s| {
        let everyone = s["Principal"] == "*" || list(&s["Principal"]["AWS"]).contains(&"*");
        let all_actions = list(&s["Action"]).iter().any(|a| *a == "s3:*" || *a == "*");
        let resources = list(&s["Resource"]);
        let covers = |r: &str| resources.iter().any(|x| *x == r || *x == "*" || *x == "arn:aws:s3:::*");
        let plain = &s["Condition"]["Bool"]["aws:SecureTransport"];
        let when_plain = *plain == Value::Bool(false) || list(plain).contains(&"false");
        s["Effect"] == "Deny"
            && everyone
            && all_actions
            && covers(&arn)
            && covers(&objects)
            && when_plain
            && s.get("NotPrincipal").is_none()
            && s.get("NotAction").is_none()
            && s.get("NotResource").is_none()
    })
}

/// Runs every check.
pub async fn assess(cfg: &ProxyConfig) -> Result<Vec<Finding>, crate::parts::SetupError> {
    let now = crate::unix_now();
    let mut out = Vec::new();

    if let StoreConfig::S3(s3) = &cfg.store {
        out.extend(bucket_findings(s3).await);
    }
    out.extend(certificate_findings("proxy", &cfg.tls.cert, now));
    for d in &cfg.trust_domains {
        out.extend(certificate_findings(&format!("trust domain {} CA", d.name), &d.ca, now));
    }
    match crate::access::clientcerts::load(&cfg.audit.client_certs()) {
        Ok(seen) => out.extend(client_certificate_findings(&seen, now)),
        Err(e) => tracing::warn!("client certificates seen: {e}"),
    }
    out.extend(policy_findings(cfg));

    // KEKs in use, and the repositories' policies.
    let report = crate::compliance::report::keys_report(cfg).await?;
    for k in &report.keks {
        match &k.state {
            Some(s) if s.status != "ok" => out.push(finding(
                Level::High,
                "kek",
                &k.kek,
                format!("the KEK {}", s.status),
                "re-enable it or move its repositories to a usable KEK",
            )),
            Some(s) if s.rotation == Some(false) => out.push(finding(
                Level::High,
                "kek",
                &k.kek,
                "automatic rotation is off",
                "turn on automatic key rotation in KMS",
            )),
            None => out.push(finding(
                Level::Medium,
                "kek",
                &k.kek,
                format!("its state cannot be read: {}", k.state_error.as_deref().unwrap_or("")),
                "check the proxy's kms:DescribeKey rights",
            )),
            _ => {}
        }
    }
    // Who may use and manage each KEK in use (docs/aws.md, "KMS keys").
    let checker = crate::parts::key_checker(cfg).await?;
    for k in &report.keks {
        match checker.key_policy(&k.kek).await {
            Ok(Some(policy)) => out.extend(
                crate::compliance::keypolicy::findings(&policy)
                    .into_iter()
                    .map(|p| finding(Level::High, "kms-policy", &k.kek, p.problem, p.fix)),
            ),
            Ok(None) => {}
            Err(e) => out.push(finding(
                Level::Medium,
                "kms-policy",
                &k.kek,
                format!("its key policy cannot be read: {e}"),
                "grant the proxy kms:GetKeyPolicy on the KEKs (packaging/aws/coffer.yaml does)",
            )),
        }
    }
    if matches!(cfg.keys, KeysConfig::Local { .. }) {
        out.push(finding(
            Level::Medium,
            "kek",
            "local provider",
            "the local master key unwraps every data key; hosts holding it can read every backup",
            "use AWS KMS in production (docs/aws.md)",
        ));
    }
    let policies = cfg.repo_policies()?;
    let mut repos: Vec<String> = report.keks.iter().flat_map(|k| k.keys.iter().map(|e| e.repo.clone())).collect();
    repos.sort();
    repos.dedup();
    if policies.is_empty() {
        out.push(finding(
            Level::Medium,
            "repo-policy",
            "all repositories",
            "no repository policies: classification, per-repository retention and residency are not enforced",
            "add [[repo_policies]]",
        ));
    } else {
        for repo in &repos {
            if let Ok(name) = repo.parse() {
                if let Err(e) = policies.for_repo(&name) {
                    out.push(finding(
                        Level::High,
                        "repo-policy",
                        repo,
                        e.0,
                        "add a [[repo_policies]] entry covering it",
                    ));
                }
            }
        }
    }

    // The audit trail.
    let spool = cfg.audit.spool();
    {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::metadata(&spool.signing_key) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => out.push(finding(
                Level::High,
                "audit",
                spool.signing_key.display().to_string(),
                "the audit signing key is readable by group or others",
                "chmod 600",
            )),
            Ok(_) => {}
            Err(_) => out.push(finding(
                Level::High,
                "audit",
                spool.signing_key.display().to_string(),
                "no audit signing key: segments are not signed yet",
                "start the proxy once; pin the public key it writes",
            )),
        }
    }
    if let Ok((segments, live)) = crate::audit::local_trail(&spool) {
        let key = crate::audit::public_key(&spool).ok();
        if let Err(b) = crate::audit::verify(&segments, Some(&live), key.as_deref()) {
            out.push(finding(
                Level::High,
                "audit",
                "local audit trail",
                b.to_string(),
                "investigate (docs/incident-runbook.md)",
            ));
        }
    }
    let stale = std::fs::read_dir(spool.sealed_dir())
        .map(|it| {
            it.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter(|e| {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > UNSHIPPED_WARNING)
                })
                .count()
        })
        .unwrap_or(0);
    if stale > 0 {
        out.push(finding(
            Level::Medium,
            "audit",
            "audit segments",
            format!("{stale} sealed segments have not reached the store for over an hour"),
            "check the proxy's store rights and logs",
        ));
    }
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.check.cmp(b.check)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_near_expiry_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(10);
        let soon = dir.path().join("soon.pem");
        std::fs::write(&soon, p.clone().self_signed(&key).unwrap().pem()).unwrap();
        p.not_after = now + time::Duration::days(300);
        let later = dir.path().join("later.pem");
        std::fs::write(&later, p.self_signed(&key).unwrap().pem()).unwrap();
        let t = crate::unix_now();
        let found = certificate_findings("proxy", &soon, t);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].problem.contains("expires in 9 days") || found[0].problem.contains("expires in 10 days"),
            "{found:?}"
        );
        assert!(certificate_findings("proxy", &later, t).is_empty());
        assert!(certificate_findings("proxy", &later, t + 290 * 86_400)[0].problem.contains("expires"));
        assert!(certificate_findings("proxy", &later, t + 400 * 86_400)[0].problem.contains("expired"));
    }

    #[test]
    fn only_a_deny_on_the_whole_bucket_counts_as_tls_only() {
        let policy = |effect: &str, principal: &str, action: &str, resources: &str, secure: &str| {
            format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"TlsOnly","Effect":"{effect}","Principal":{principal},"Action":"{action}","Resource":{resources},"Condition":{{"Bool":{{"aws:SecureTransport":{secure}}}}}}}]}}"#
            )
        };
        let whole = r#"["arn:aws:s3:::b","arn:aws:s3:::b/*"]"#;
        assert!(denies_plain_http(&policy("Deny", r#""*""#, "s3:*", whole, r#""false""#), "b"));
        assert!(denies_plain_http(&policy("Deny", r#"{"AWS":"*"}"#, "s3:*", whole, "false"), "b"));
        assert!(denies_plain_http(&policy("Deny", r#""*""#, "*", r#""*""#, r#""false""#), "b"));
        for (why, text) in [
            ("an allow", policy("Allow", r#""*""#, "s3:*", whole, r#""false""#)),
            ("one principal", policy("Deny", r#"{"AWS":"arn:aws:iam::1:root"}"#, "s3:*", whole, r#""false""#)),
            ("some actions", policy("Deny", r#""*""#, "s3:GetObject", whole, r#""false""#)),
            (
                "a prefix",
                policy("Deny", r#""*""#, "s3:*", r#"["arn:aws:s3:::b","arn:aws:s3:::b/tmp/*"]"#, r#""false""#),
            ),
            ("the objects only", policy("Deny", r#""*""#, "s3:*", r#""arn:aws:s3:::b/*""#, r#""false""#)),
            ("another bucket", policy("Deny", r#""*""#, "s3:*", whole, r#""false""#).replace(":::b", ":::c")),
            ("with TLS", policy("Deny", r#""*""#, "s3:*", whole, r#""true""#)),
            ("not JSON", "Deny aws:SecureTransport".to_string()),
        ] {
            assert!(!denies_plain_http(&text, "b"), "{why} must not count: {text}");
        }
    }

    #[test]
    fn client_certificates_seen_recently_are_checked() {
        use crate::access::clientcerts::{Seen, Sightings};
        let now = crate::unix_now();
        let day = 86_400;
        let seen = Sightings::from([
            ("soon".to_string(), Seen { not_after: now + 5 * day, last_seen: now - day }),
            ("fine".to_string(), Seen { not_after: now + 100 * day, last_seen: now }),
            ("expired".to_string(), Seen { not_after: now - day, last_seen: now - 2 * day }),
            ("gone".to_string(), Seen { not_after: now + 5 * day, last_seen: now - 200 * day }),
        ]);
        let found = client_certificate_findings(&seen, now);
        let subjects: Vec<_> = found.iter().map(|f| (f.subject.as_str(), f.problem.as_str())).collect();
        assert_eq!(
            subjects,
            [("expired", "the client certificate has expired"), ("soon", "the client certificate expires in 5 days")],
        );
        assert!(found.iter().all(|f| f.severity == Level::High));
    }
}
