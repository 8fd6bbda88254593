//! Governance calls (admin role + a fresh TOTP code): legal hold and lockdown.

use std::process::Command;

use coffer_proxy::access::mfa::code_at;
use coffer_tests::{bin, coffer, random_bytes, DevProxy};

use coffer_proxy::unix_now as now;

fn admin(p: &DevProxy, who: &str, code: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bin("coffer-proxy"));
    cmd.arg("admin").args(args).arg("--client-config").arg(p.config(who)).args(["--totp", code]);
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A second admin identity, so a test can make more than the two admin calls
/// one identity's TOTP window allows.
fn second_admin(p: &DevProxy) -> String {
    extra_admin(p, "admin2")
}

/// Issues, allows and enrolls admin identity `name`; returns its TOTP secret.
fn extra_admin(p: &DevProxy, name: &str) -> String {
    p.dev(&["issue", "--name", name, "--identity", &format!("spiffe://coffer.dev/{name}")]);
    let path = p.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[[rules]]\nname = \"{name}\"\ntrust_domain = \"dev\"\nidentity = \"spiffe://coffer.dev/{name}\"\nroles = [\"admin\"]\nrepos = [\"**\"]\n"),
    )
    .unwrap();
    assert!(p.reload());
    p.enroll(&format!("spiffe://coffer.dev/{name}"))
}

fn held(p: &DevProxy, object: &std::path::Path) -> bool {
    let rel = object.strip_prefix(p.objects()).unwrap();
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir.join("store/locks").join(rel)).unwrap()).unwrap();
    lock["legal_hold"] == true
}

#[test]
fn legal_holds_cover_what_a_snapshot_references_and_lifting_one_keeps_the_others() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let secret2 = second_admin(&p);
    coffer(&p.writer(), &["init", "--repo", "dev/legal"], None).ok();
    // 6 MiB: with cut points keyed per repository, 3 MiB was now and then
    // one chunk, which B (the same bytes and more) cuts elsewhere, sharing
    // nothing with A.
    let shared = random_bytes("shared", 6 << 20);
    let a = coffer(&p.writer(), &["backup", "--repo", "dev/legal", "-"], Some(&shared)).last_line();
    let mut more = shared.clone();
    more.extend_from_slice(&random_bytes("only in b", 3 << 20));
    let b = coffer(&p.writer(), &["backup", "--repo", "dev/legal", "-"], Some(&more)).last_line();
    let chunk_of_a_only: Vec<_> = {
        let idx = |id: &str| {
            let bytes = std::fs::read(p.dir.join(format!("store/objects/dev/legal/index/{id}"))).unwrap();
            coffer_proto::snapshot::IndexSegment::decode(&bytes)
                .unwrap()
                .chunks
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        };
        let (ia, ib) = (idx(&a), idx(&b));
        ia.into_iter().filter(|c| !ib.contains(c)).collect()
    };

    let t = now();
    let (ok, out) = admin(&p, "admin", "000000", &["hold", "set", "--repo", "dev/legal", "--snapshot", &a]);
    assert!(!ok && out.contains("mfa-failed"), "a wrong code: {out}");
    let (ok, out) =
        admin(&p, "admin", &code_at(&secret, t).unwrap(), &["hold", "set", "--repo", "dev/legal", "--snapshot", &a]);
    assert!(ok, "{out}");
    let root_a = p.dir.join(format!("store/objects/dev/legal/snapshots/{a}"));
    assert!(held(&p, &root_a));
    let chunks = p.stored("dev/legal/chunks");
    let a_chunks: Vec<_> = chunks
        .iter()
        .filter(|c| {
            let name = c.file_name().unwrap().to_string_lossy();
            let bytes = std::fs::read(p.dir.join(format!("store/objects/dev/legal/index/{a}"))).unwrap();
            coffer_proto::snapshot::IndexSegment::decode(&bytes)
                .unwrap()
                .chunks
                .iter()
                .any(|e| e.id.to_string() == name)
        })
        .collect();
    assert!(!a_chunks.is_empty() && a_chunks.iter().all(|c| held(&p, c)), "every chunk of A is held");
    assert!(held(&p, &p.dir.join("store/objects/dev/legal/config")), "the config (chunk-id key) is held too");
    // The data keys: A's own, and not the one only B's new chunks need.
    let keys_of = |id: &str| {
        let bytes = std::fs::read(p.dir.join(format!("store/objects/dev/legal/index/{id}"))).unwrap();
        coffer_proto::snapshot::IndexSegment::decode(&bytes).unwrap().keys.unwrap()
    };
    let (keys_a, keys_b) = (keys_of(&a), keys_of(&b));
    let key_path = |k: &coffer_proto::KeyId| p.dir.join(format!("store/objects/dev/legal/keys/{k}"));
    let b_only: Vec<_> = keys_b.iter().filter(|k| !keys_a.contains(k)).collect();
    assert!(keys_a.iter().all(|k| keys_b.contains(k)), "B reuses chunks sealed with A's key");
    assert!(!b_only.is_empty(), "B sealed its new chunks with a key of its own");
    assert!(keys_a.iter().all(|k| held(&p, &key_path(k))), "A's data key is held");
    assert!(b_only.iter().all(|k| !held(&p, &key_path(k))), "a hold covers only the keys its snapshot needs");

    let (ok, out) = admin(
        &p,
        "admin",
        &code_at(&secret, t + 30).unwrap(),
        &["hold", "set", "--repo", "dev/legal", "--snapshot", &b],
    );
    assert!(ok, "{out}");
    let (ok, out) = admin(
        &p,
        "admin2",
        &code_at(&secret2, t).unwrap(),
        &["hold", "clear", "--repo", "dev/legal", "--snapshot", &a],
    );
    assert!(ok, "{out}");
    assert!(!held(&p, &root_a), "A's own objects are released");
    for c in &a_chunks {
        let id = c.file_name().unwrap().to_string_lossy().into_owned();
        let only_a = chunk_of_a_only.iter().any(|x| x.to_string() == id);
        assert_eq!(held(&p, c), !only_a, "{id}: chunks B still needs stay held");
    }
    assert!(keys_a.iter().all(|k| held(&p, &key_path(k))), "B still needs A's key: it stays held");
    assert!(b_only.iter().all(|k| held(&p, &key_path(k))), "B's own key is held with B");
    let intents = p
        .audit_events()
        .into_iter()
        .filter(|e| {
            e["action"] == "admin-hold" && e["reason"].as_str().unwrap_or("").starts_with("authorized with TOTP")
        })
        .count();
    assert_eq!(intents, 3);
}

#[test]
fn lockdown_serves_reads_only_until_lifted_and_survives_restarts() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    coffer(&p.writer(), &["init", "--repo", "dev/lock"], None).ok();
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/lock", "-"], Some(b"before the incident")).last_line();
    let t = now();
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t).unwrap(), &["lockdown"]);
    assert!(ok, "{out}");

    let write = coffer(&p.writer(), &["backup", "--repo", "dev/lock", "-"], Some(b"during"));
    assert_eq!(write.code(), 1);
    assert!(write.stderr.contains("lockdown"), "{}", write.stderr);
    assert_eq!(coffer(&p.reader(), &["restore", "--repo", "dev/lock", &id], None).ok(), "before the incident");
    // The auditor lists (metadata only: it may not read roots) during lockdown.
    let listed = coffer(&p.config("auditor"), &["snapshots", "--repo", "dev/lock", "--json"], None);
    let ids: Vec<String> = listed.json().as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().into()).collect();
    assert_eq!(ids, std::slice::from_ref(&id), "{}", listed.stderr);
    assert!(listed.stderr.contains("metadata only"), "{}", listed.stderr);
    // Other admin calls are refused too (before their code is even checked).
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t + 30).unwrap(), &["reload"]);
    assert!(!ok && out.contains("lockdown"), "{out}");
    p.wait_for_event("lockdown alert", |e| {
        e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with("lockdown:"))
    });

    // Calls that only tighten still work during an incident: revoking an
    // identity and putting a legal hold. Lifting a hold loosens: refused.
    let revoke = ["revoke", "--trust-domain", "dev", "--identity", "spiffe://coffer.dev/auditor"];
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t + 30).unwrap(), &revoke);
    assert!(ok, "revoke in lockdown: {out}");
    let denied = coffer(&p.config("auditor"), &["snapshots", "--repo", "dev/lock"], None);
    assert!(denied.stderr.contains("revoked by an administrator"), "{}", denied.stderr);
    let secret2 = second_admin(&p);
    let hold = ["hold", "set", "--repo", "dev/lock", "--snapshot", &id];
    let (ok, out) = admin(&p, "admin2", &code_at(&secret2, t).unwrap(), &hold);
    assert!(ok, "a hold in lockdown: {out}");
    let clear = ["hold", "clear", "--repo", "dev/lock", "--snapshot", &id];
    let (ok, out) = admin(&p, "admin2", &code_at(&secret2, t + 30).unwrap(), &clear);
    assert!(!ok && out.contains("lifting a legal hold is refused"), "{out}");

    // A restart keeps the lockdown; lifting it lets writes through again.
    let secret3 = extra_admin(&p, "admin3");
    let p = p.restarted(|t| t);
    assert_eq!(coffer(&p.writer(), &["backup", "--repo", "dev/lock", "-"], Some(b"after restart")).code(), 1);
    let (ok, out) = admin(&p, "admin3", &code_at(&secret3, t).unwrap(), &["lockdown", "--lift"]);
    assert!(ok, "{out}");
    coffer(&p.writer(), &["backup", "--repo", "dev/lock", "-"], Some(b"after")).ok();
}

#[test]
fn keys_report_says_which_kek_wrapped_what_and_who_uploaded_it() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/k1"], None).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/k1", "-"], Some(b"one")).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/k1", "-"], Some(b"two")).ok();
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["keys", "report", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keks = report["keks"].as_array().unwrap();
    assert_eq!(keks.len(), 1, "{report}");
    assert!(keks[0]["kek"].as_str().unwrap().starts_with("local:"));
    assert_eq!(keks[0]["state"]["status"], "ok");
    let keys = keks[0]["keys"].as_array().unwrap();
    let purposes: Vec<&str> = keys.iter().map(|k| k["purpose"].as_str().unwrap()).collect();
    assert_eq!(purposes.iter().filter(|p| **p == "chunk-id").count(), 1);
    assert_eq!(purposes.iter().filter(|p| **p == "data").count(), 2, "one data key per backup run");
    for k in keys {
        assert_eq!(k["repo"], "dev/k1");
        assert_eq!(k["uploaded_by"], "spiffe://coffer.dev/writer (dev)", "{k}");
        assert!(k["uploaded_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
}

const POLICIES: &str = r#"
[[repo_policies]]
repos = "dev/ok/**"
classification = "internal"
retention_days = 45

[[repo_policies]]
repos = "dev/eu/**"
classification = "restricted"
regions = ["eu-west-1"]

[[repo_policies]]
repos = "dev/k/**"
classification = "confidential"
keks = ["arn:aws:kms:eu-west-1:111122223333:key/only-this"]
"#;

fn retain_until(p: &DevProxy, key: &str) -> u64 {
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir.join("store/locks").join(key)).unwrap()).unwrap();
    lock["retain_until"].as_u64().unwrap()
}

#[test]
fn repository_policies_are_enforced_when_writing() {
    let p = DevProxy::start();
    std::fs::write(p.dir.join("proxy.toml"), std::fs::read_to_string(p.dir.join("proxy.toml")).unwrap() + POLICIES)
        .unwrap();
    assert!(p.reload(), "adding policies makes things stricter: a signal may do it");

    coffer(&p.writer(), &["init", "--repo", "dev/ok/db"], None).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/ok/db", "-"], Some(b"rows")).ok();
    let day = 86_400;
    assert!(retain_until(&p, "dev/ok/db/config") >= now() + 45 * day, "the policy's retention applies");

    for (repo, needle) in [
        ("dev/other", "no repository policy covers dev/other"),
        ("dev/eu/db", "requires one of [\"eu-west-1\"]"),
        ("dev/k/db", "is not allowed by the policy for dev/k/**"),
    ] {
        let run = coffer(&p.writer(), &["init", "--repo", repo], None);
        assert_eq!(run.code(), 1, "{repo}");
        assert!(run.stderr.contains(needle), "{repo}: {}", run.stderr);
        assert!(p.stored(repo).is_empty(), "{repo}: nothing may be stored");
    }
}

#[test]
fn loosening_a_repository_policy_needs_the_admin_api() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let path = p.dir.join("proxy.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, base.clone() + POLICIES).unwrap();
    assert!(p.reload());

    // Shorter retention by signal: refused, the running policy kept.
    std::fs::write(&path, base.clone() + &POLICIES.replace("retention_days = 45", "retention_days = 10")).unwrap();
    assert!(!p.reload(), "a signal may not loosen a policy");
    let refused = p.audit_events().into_iter().rev().find(|e| e["action"] == "reload").unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("shorter retention"), "{refused}");
    coffer(&p.writer(), &["init", "--repo", "dev/ok/a"], None).ok();
    assert!(retain_until(&p, "dev/ok/a/config") >= now() + 45 * 86_400, "the old policy still applies");

    // The admin API, with a fresh TOTP code, may; it is audited as such.
    let (ok, out) = admin(&p, "admin", &code_at(&secret, now()).unwrap(), &["reload"]);
    assert!(ok, "{out}");
    let loosened = p.audit_events().into_iter().rev().find(|e| e["action"] == "reload").unwrap();
    assert!(loosened["reason"].as_str().unwrap().contains("loosened by an admin"), "{loosened}");
    coffer(&p.writer(), &["init", "--repo", "dev/ok/b"], None).ok();
    let until = retain_until(&p, "dev/ok/b/config");
    assert!(until < now() + 45 * 86_400 && until >= now() + 10 * 86_400, "the new policy applies: {until}");
}

#[test]
fn the_compliance_report_matches_the_store() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let path = p.dir.join("proxy.toml");
    let policies = "\n[[repo_policies]]\nrepos = \"dev/fast/**\"\nclassification = \"internal\"\nrpo_secs = 1\n\n[[repo_policies]]\nrepos = \"dev/**\"\nclassification = \"confidential\"\nretention_days = 40\n";
    std::fs::write(&path, std::fs::read_to_string(&path).unwrap() + policies).unwrap();
    assert!(p.reload());
    coffer(&p.writer(), &["init", "--repo", "dev/fast/x"], None).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/fast/x", "-"], Some(b"quick")).ok();
    coffer(&p.writer(), &["init", "--repo", "dev/slow/y"], None).ok();
    let data = random_bytes("report", 2 << 20);
    let first = coffer(&p.writer(), &["backup", "--repo", "dev/slow/y", "-"], Some(&data)).last_line();
    coffer(&p.writer(), &["backup", "--repo", "dev/slow/y", "-"], Some(&data)).ok();
    let (ok, out) = admin(
        &p,
        "admin",
        &code_at(&secret, now()).unwrap(),
        &["hold", "set", "--repo", "dev/slow/y", "--snapshot", &first],
    );
    assert!(ok, "{out}");
    std::thread::sleep(std::time::Duration::from_secs(2)); // dev/fast/x is now past its RPO

    let file = p.dir.join("report.json");
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["report", "--format", "json", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(report["audit_chain"], "ok");
    assert_eq!(report["store"]["kind"], "fs");
    let repo = |name: &str| report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == name).unwrap().clone();
    let (fast, slow) = (repo("dev/fast/x"), repo("dev/slow/y"));
    assert_eq!(report["repos"].as_array().unwrap().len(), 2);

    assert_eq!(fast["classification"], "internal");
    assert_eq!(
        (fast["snapshots"].as_u64(), fast["rpo_secs"].as_u64(), fast["rpo_met"].as_bool()),
        (Some(1), Some(1), Some(false))
    );
    assert_eq!(slow["classification"], "confidential");
    assert_eq!((slow["snapshots"].as_u64(), slow["retention_days"].as_u64()), (Some(2), Some(40)));
    assert!(slow["rpo_met"].is_null(), "no RPO for dev/slow/**");
    assert_eq!(slow["bytes_in"].as_u64(), Some(2 * data.len() as u64));
    let dedup = slow["dedup_ratio"].as_f64().unwrap();
    assert!((0.45..=0.55).contains(&dedup), "the second backup was all duplicates: {dedup}");
    assert!(slow["compression_ratio"].as_f64().unwrap() >= 0.99, "random data does not compress");
    assert_eq!(slow["legal_holds"], serde_json::json!([first]));
    assert_eq!(slow["residency"], "ok");
    let keks = slow["keks"].as_array().unwrap();
    assert_eq!(keks.len(), 1);
    assert_eq!(keks[0]["state"]["status"], "ok");

    // The same report as a self-contained page, rendered by headless Chromium.
    let html = p.dir.join("report.html");
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(&path)
        .args(["report", "--format", "html", "-o"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("http://") && !page.contains("https://"), "the page must need no network");
    assert!(page.contains("dev/fast/x") && page.contains("overdue") && page.contains(&first));
    let (dom, console) = chromium(&html, &p.dir.join("report.png"));
    assert!(dom.contains("data-rendered=\"yes\""), "the page's script did not run: {console}");
    assert!(dom.contains("<svg"), "charts missing");
    let errors: Vec<&str> = console.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// Renders a file in headless Chromium (installed by tests/run.sh):
/// returns the DOM after scripts ran, and what Chromium logged.
fn chromium(page: &std::path::Path, screenshot: &std::path::Path) -> (String, String) {
    let exe = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| std::path::Path::new(p).exists());
    let exe = exe.expect("chromium is not installed: run the tests with tests/run.sh, which installs it");
    let profile = tempfile::tempdir().unwrap();
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ];
    let url = format!("file://{}", page.display());
    let dom = Command::new(exe)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let _ = Command::new(exe)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--window-size=1000,1600", &format!("--screenshot={}", screenshot.display()), &url])
        .output();
    (String::from_utf8_lossy(&dom.stdout).into_owned(), String::from_utf8_lossy(&dom.stderr).into_owned())
}

fn assess(p: &DevProxy) -> (i32, serde_json::Value) {
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["assess", "--json"])
        .output()
        .unwrap();
    let findings =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), findings)
}

fn has(findings: &serde_json::Value, check: &str, text: &str) -> bool {
    findings
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["check"] == check && f["problem"].as_str().unwrap_or("").contains(text))
}

#[test]
fn assess_names_what_an_auditor_would_flag() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/as"], None).ok();
    let (code, findings) = assess(&p);
    assert_eq!(code, 0, "only medium findings on a fresh dev proxy: {findings}");
    assert!(has(&findings, "kek", "local master key"), "{findings}");
    assert!(has(&findings, "repo-policy", "no repository policies"), "{findings}");
    assert!(!has(&findings, "policy", "every repository"), "dev/** is not every repository: {findings}");

    let path = p.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broad = text.replace("roles = [\"writer\"]\nrepos = [\"dev/**\"]", "roles = [\"writer\"]\nrepos = [\"**\"]");
    assert_ne!(broad, text);
    std::fs::write(&path, broad).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p.dir.join("audit/signing.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, findings) = assess(&p);
    assert!(has(&findings, "policy", "every repository"), "{findings}");
    assert!(has(&findings, "audit", "readable by group or others"), "{findings}");
    assert_eq!(code, 1, "a high finding fails the check");
}

#[test]
fn assess_warns_of_an_agent_certificate_about_to_expire() {
    let p = DevProxy::start();
    p.dev(&["issue", "--name", "short", "--identity", "spiffe://coffer.dev/writer", "--days", "10"]);
    let (_, findings) = assess(&p);
    assert!(!has(&findings, "certificates", "client certificate"), "not seen yet: {findings}");
    assert!(coffer(&p.config("short"), &["whoami"], None).ok().contains("spiffe://coffer.dev/writer"));
    let (code, findings) = assess(&p);
    let found = findings.as_array().unwrap().iter().find(|f| {
        f["check"] == "certificates" && f["problem"].as_str().unwrap_or("").contains("client certificate expires in")
    });
    let found = found.unwrap_or_else(|| panic!("the agent's 10-day certificate is flagged: {findings}"));
    assert!(found["subject"].as_str().unwrap().contains("spiffe://coffer.dev/writer"), "{found}");
    assert_eq!(code, 1, "a high finding");

    // Renewed: the next handshake replaces what was seen, and the finding goes.
    coffer(&p.writer(), &["whoami"], None).ok();
    let (_, findings) = assess(&p);
    assert!(!has(&findings, "certificates", "client certificate"), "{findings}");
}

#[test]
fn the_proxy_assesses_itself_and_alerts_once_per_new_high_finding() {
    let p = DevProxy::start().restarted(|t| format!("{t}\n[assess]\ninterval_secs = 1\n"));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p.dir.join("audit/signing.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let is_assess = |e: &serde_json::Value| {
        e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with("assess:"))
    };
    let alert = p.wait_for_event("assess alert", is_assess);
    assert!(alert["reason"].as_str().unwrap().contains("readable by group or others"), "{alert}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(p.audit_events().iter().filter(|e| is_assess(e)).count(), 1, "a finding alerts once");
}

/// Simulates a snapshot's retention running out: its index records a
/// retain-until in the past, and so do the locks of its objects and data
/// keys (raw access to the filesystem store, as time passing would leave
/// them). Returns the store keys of its data key records.
fn age(p: &DevProxy, repo: &str, id: &str) -> Vec<String> {
    let objects = p.objects();
    let index_path = objects.join(format!("{repo}/index/{id}"));
    let mut index = coffer_proto::snapshot::IndexSegment::decode(&std::fs::read(&index_path).unwrap()).unwrap();
    let past = now() - 60;
    // Time passes for the store alone: the hosts' memory of the snapshots
    // (state_dir) still holds their real locks, and would rightly call the
    // expiry of a snapshot locked until next month a listing gone backwards.
    let _ = std::fs::remove_dir_all(p.dir.join("state"));
    index.retain_until = past;
    let mut keys = vec![format!("{repo}/index/{id}"), format!("{repo}/snapshots/{id}")];
    for e in &mut index.chunks {
        e.retain_until = past;
        let hex = e.id.to_string();
        keys.push(format!("{repo}/chunks/{}/{hex}", &hex[..2]));
    }
    let key_records: Vec<String> =
        index.keys.as_ref().expect("a current index").iter().map(|k| format!("{repo}/keys/{k}")).collect();
    keys.extend(key_records.iter().cloned());
    std::fs::write(&index_path, index.encode()).unwrap();
    for key in keys {
        let lock_path = p.dir.join("store/locks").join(&key);
        let mut lock: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock_path).unwrap()).unwrap();
        lock["retain_until"] = past.into();
        std::fs::write(&lock_path, lock.to_string()).unwrap();
    }
    key_records
}

fn expire(p: &DevProxy, who: &str, code: &str, dry_run: bool) -> serde_json::Value {
    let mut args = vec!["expire", "--repo", "dev/exp"];
    if dry_run {
        args.push("--dry-run");
    }
    let (ok, out) = admin(p, who, code, &args);
    assert!(ok, "{out}");
    let json = out.trim_start_matches("expire: ok ");
    serde_json::from_str(json.lines().next().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn expiry_deletes_only_what_retention_and_holds_no_longer_protect() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let secret2 = second_admin(&p);
    coffer(&p.writer(), &["init", "--repo", "dev/exp"], None).ok();
    let (x, w, y, z, v) = (
        // Long enough that a and b share chunks whatever the keyed cut points.
        random_bytes("x", 8 << 20),
        random_bytes("w", 2 << 20),
        random_bytes("y", 2 << 20),
        random_bytes("z", 2 << 20),
        random_bytes("v", 1 << 20),
    );
    let backup = |data: &[u8]| coffer(&p.writer(), &["backup", "--repo", "dev/exp", "-"], Some(data)).last_line();
    let a = backup(&[x.clone(), w.clone()].concat()); // old: will expire
    let b = backup(&[x.clone(), y.clone()].concat()); // new: shares x (sealed with a's key) with a
    let c = backup(&z); // old but held
    let d = backup(&v); // old, shares nothing: its data key goes too
    let t = now();
    let (ok, out) =
        admin(&p, "admin", &code_at(&secret, t).unwrap(), &["hold", "set", "--repo", "dev/exp", "--snapshot", &c]);
    assert!(ok, "{out}");
    let a_keys = age(&p, "dev/exp", &a);
    let c_keys = age(&p, "dev/exp", &c);
    let d_keys = age(&p, "dev/exp", &d);
    assert!(a_keys.len() == 1 && d_keys.len() == 1 && a_keys != d_keys, "one fresh data key per run");
    let before: Vec<_> = p.stored("dev/exp");

    let plan = expire(&p, "admin", &code_at(&secret, t + 30).unwrap(), true);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(p.stored("dev/exp"), before, "a dry run deletes nothing");
    let planned: Vec<String> =
        plan["deleted"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap().to_string()).collect();
    assert!(planned.contains(&format!("dev/exp/snapshots/{a}")) && planned.contains(&format!("dev/exp/index/{a}")));
    assert!(!planned.iter().any(|k| k.contains(&b) || k.contains(&c)), "{planned:?}");
    assert!(planned.iter().any(|k| k.contains("/chunks/")), "a's own chunks go: {planned:?}");
    assert_eq!(plan["held"], serde_json::json!([c]));
    assert!(planned.contains(&d_keys[0]), "no remaining snapshot needs d's data key: {planned:?}");
    assert!(!planned.contains(&a_keys[0]), "b still needs a's key for the chunks it reuses");
    assert!(!planned.contains(&c_keys[0]), "a held snapshot keeps its key");
    assert_eq!(planned.last(), Some(&d_keys[0]), "key records go last");

    let done = expire(&p, "admin2", &code_at(&secret2, t).unwrap(), false);
    let deleted: Vec<String> =
        done["deleted"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap().to_string()).collect();
    assert_eq!(deleted, planned, "the real run deletes exactly what the dry run listed");
    assert!(done["failed"].as_array().unwrap().is_empty(), "{done}");
    for key in &deleted {
        assert!(!p.objects().join(key).exists(), "{key} is still there");
    }

    // Every remaining snapshot restores bit-exact; the expired one is gone.
    let list = coffer(&p.reader(), &["snapshots", "--repo", "dev/exp", "--json"], None).json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&b.as_str()) && ids.contains(&c.as_str()) && !ids.contains(&a.as_str()), "{ids:?}");
    assert!(!ids.contains(&d.as_str()), "{ids:?}");
    assert!(coffer(&p.reader(), &["restore", "--repo", "dev/exp", &b], None).stdout == [x.clone(), y].concat());
    assert!(coffer(&p.reader(), &["restore", "--repo", "dev/exp", &c], None).stdout == z);
    coffer(&p.reader(), &["verify", "--repo", "dev/exp"], None).ok();

    // The compliance report agrees with the store after expiry.
    let out =
        Command::new(bin("coffer-proxy")).arg("--config").arg(p.dir.join("proxy.toml")).arg("report").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repo = report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == "dev/exp").unwrap().clone();
    assert_eq!(repo["snapshots"], 2, "{repo}");
    assert_eq!(repo["legal_holds"], serde_json::json!([c]));
    assert_eq!(repo["history"].as_array().unwrap().len(), 2);

    // The same data as the expired snapshot again: what expiry removed is
    // uploaded anew (the proxy's catalog forgot it), never referenced gone.
    let again =
        coffer(&p.writer(), &["backup", "--repo", "dev/exp", "--json", "-"], Some(&[x.clone(), w.clone()].concat()));
    let again = again.json();
    assert!(again["bytes_new"].as_u64().unwrap() >= w.len() as u64 / 2, "w's chunks were re-uploaded: {again}");
    let id = again["id"].as_str().unwrap();
    assert!(coffer(&p.reader(), &["restore", "--repo", "dev/exp", id], None).stdout == [x.clone(), w.clone()].concat());
}

#[test]
fn a_commit_needs_every_data_key_its_reused_chunks_were_sealed_with() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/k"], None).ok();
    let data = random_bytes("k", 3 << 20);
    let first = coffer(&p.writer(), &["backup", "--repo", "dev/k", "-"], Some(&data)).last_line();
    let index = std::fs::read(p.objects().join(format!("dev/k/index/{first}"))).unwrap();
    let index = coffer_proto::snapshot::IndexSegment::decode(&index).unwrap();
    let sealed_with = index.keys.unwrap();
    assert_eq!(sealed_with.len(), 1, "one data key for the whole run");
    // The first run's key record goes (as a wrong expiry or a hand in the
    // bucket would): a second run reuses every chunk sealed with it.
    std::fs::remove_file(p.objects().join(format!("dev/k/keys/{}", sealed_with[0]))).unwrap();
    let second = coffer(&p.writer(), &["backup", "--repo", "dev/k", "-"], Some(&data));
    assert_ne!(second.code(), 0, "committed a snapshot whose chunks cannot be decrypted");
    assert!(second.stderr.contains(&format!("key {} is not stored", sealed_with[0])), "{}", second.stderr);
    let roots = std::fs::read_dir(p.objects().join("dev/k/snapshots")).unwrap().count();
    assert_eq!(roots, 1, "nothing half committed");
}

#[test]
fn repositories_cannot_reach_into_the_admin_tree() {
    // A writer allowed everything still cannot create a repository whose
    // objects would sit among the admin switches (lockdown, holds,
    // revocations) or the audit segments.
    let p = DevProxy::start().restarted(|t| {
        t.replace("roles = [\"writer\"]\nrepos = [\"dev/**\"]", "roles = [\"writer\"]\nrepos = [\"**\"]")
            .replace("repos = [\"dev/**\"]", "repos = [\"**\"]")
    });
    for repo in ["admin/lockdown", "admin/revocations/x", "audit/dev"] {
        let run = coffer(&p.writer(), &["init", "--repo", repo], None);
        assert_eq!(run.code(), 64, "{repo}: {}", run.stderr);
        assert!(run.stderr.contains("reserved"), "{repo}: {}", run.stderr);
    }
    assert!(p.stored("admin/lockdown").is_empty());
}

#[test]
fn key_rotation_starts_a_new_epoch_and_every_snapshot_still_restores() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/rot"], None).ok();
    let data = random_bytes("rotate", 3 << 20);
    let before = coffer(&p.writer(), &["backup", "--repo", "dev/rot", "--json", "-"], Some(&data)).json();
    let again = coffer(&p.writer(), &["backup", "--repo", "dev/rot", "--json", "-"], Some(&data)).json();
    assert_eq!(again["bytes_new"], 0, "same epoch: everything deduplicates");

    let out = coffer(&p.writer(), &["key", "rotate", "--repo", "dev/rot"], None).ok();
    assert!(out.contains("new chunk-id key epoch"), "{out}");
    assert_eq!(p.stored("dev/rot/epochs").len(), 1);
    let after = coffer(&p.writer(), &["backup", "--repo", "dev/rot", "--json", "-"], Some(&data)).json();
    assert!(after["bytes_new"].as_u64().unwrap() >= data.len() as u64, "a new epoch names chunks anew: {after}");
    let later = coffer(&p.writer(), &["backup", "--repo", "dev/rot", "--json", "-"], Some(&data)).json();
    assert_eq!(later["bytes_new"], 0, "and deduplicates within it");

    for r in [&before, &again, &after, &later] {
        let out = coffer(&p.reader(), &["restore", "--repo", "dev/rot", r["id"].as_str().unwrap()], None);
        assert!(out.stdout == data, "snapshot {} differs", r["id"]);
    }
    coffer(&p.reader(), &["verify", "--repo", "dev/rot"], None).ok();
    // A reader cannot add epochs; the writer's rotation is audited.
    assert_eq!(coffer(&p.reader(), &["key", "rotate", "--repo", "dev/rot"], None).code(), 1);
    assert!(p.audit_log().contains("\"action\":\"put-epoch\""));
}

/// Two proxies on one store: a revocation or a lockdown made through one
/// takes effect on the other within seconds, without a restart.
#[test]
fn revocation_and_lockdown_reach_every_proxy_on_the_store() {
    let p = DevProxy::start().restarted(|text| format!("{text}\n[admin]\npoll_secs = 1\n"));
    let text = std::fs::read_to_string(p.dir.join("proxy.toml")).unwrap();
    let second = p.dir.join("second.toml");
    std::fs::write(
        &second,
        text.replace("proxy_id = \"dev\"", "proxy_id = \"second\"")
            .replace("path = \"audit/audit.jsonl\"", "path = \"audit-second/audit.jsonl\""),
    )
    .unwrap();
    let q = DevProxy::start_config(&p.dir, &second, &[]);
    // The writer's config, pointed at the second proxy.
    let via_q = p.dir.join("writer-second.toml");
    let writer = std::fs::read_to_string(p.writer()).unwrap();
    std::fs::write(&via_q, writer.replace(&p.addr, &q.addr)).unwrap();
    assert_ne!(p.addr, q.addr);
    coffer(&p.writer(), &["init", "--repo", "dev/two"], None).ok();
    coffer(&via_q, &["backup", "--repo", "dev/two", "-"], Some(b"through the second proxy")).ok();

    let secret = p.enroll("spiffe://coffer.dev/admin");
    let t = now();
    let within_seconds = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what} did not reach the second proxy");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };

    let (ok, out) = admin(&p, "admin", &code_at(&secret, t).unwrap(), &["lockdown"]);
    assert!(ok, "{out}");
    within_seconds("lockdown", &|| {
        coffer(&via_q, &["backup", "--repo", "dev/two", "-"], Some(b"x")).stderr.contains("lockdown")
    });
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t + 30).unwrap(), &["lockdown", "--lift"]);
    assert!(ok, "{out}");
    within_seconds("lifting lockdown", &|| {
        coffer(&via_q, &["backup", "--repo", "dev/two", "-"], Some(b"y")).status.success()
    });

    let secret2 = second_admin(&p);
    let revoke = ["revoke", "--trust-domain", "dev", "--identity", "spiffe://coffer.dev/writer"];
    // A code of now: the waits above may have taken `t` out of its window.
    let (ok, out) = admin(&p, "admin2", &code_at(&secret2, now()).unwrap(), &revoke);
    assert!(ok, "{out}");
    within_seconds("the revocation", &|| {
        coffer(&via_q, &["whoami"], None).stderr.contains("revoked by an administrator")
    });
}

/// An admin's rights stop at its trust domain and its rule's repositories,
/// as every role's do; a revocation can be lifted.
#[test]
fn admin_rights_stop_at_the_trust_domain_and_a_revocation_can_be_lifted() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let t = now();
    let other = ["revoke", "--trust-domain", "prod", "--identity", "spiffe://coffer.prod/writer"];
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t).unwrap(), &other);
    assert!(!ok && out.contains("403") && out.contains("own trust domain dev only"), "{out}");
    let (ok, out) = admin(&p, "admin", &code_at(&secret, t + 30).unwrap(), &["expire", "--repo", "prod/app"]);
    assert!(!ok && out.contains("403") && out.contains("may not admin-expire on repository prod/app"), "{out}");
    assert!(p.stored("admin/identities").is_empty());

    let secret2 = second_admin(&p);
    let revoke = ["revoke", "--trust-domain", "dev", "--identity", "spiffe://coffer.dev/writer"];
    let t2 = now();
    let (ok, out) = admin(&p, "admin2", &code_at(&secret2, t2).unwrap(), &revoke);
    assert!(ok, "{out}");
    assert!(coffer(&p.writer(), &["whoami"], None).stderr.contains("revoked by an administrator"));
    let lift = [&revoke[..], &["--lift"]].concat();
    let (ok, out) = admin(&p, "admin2", &code_at(&secret2, t2 + 30).unwrap(), &lift);
    assert!(ok, "{out}");
    coffer(&p.writer(), &["whoami"], None).ok();
    // Both records stay (write-once); the newest decides, also after a restart.
    assert_eq!(p.stored("admin/identities").len(), 2);
    let p = p.restarted(|text| text);
    coffer(&p.writer(), &["whoami"], None).ok();
}

/// A stolen writer certificate dating a chunk-id key epoch into the future
/// (so that it stays "newest" and the operator's `key rotate` changes
/// nothing) is refused; one stored before the proxy checked dates sorts
/// first, so a rotation still moves new backups to a fresh key.
#[tokio::test(flavor = "multi_thread")]
async fn epochs_are_dated_by_the_proxy_and_a_rotation_always_takes_effect() {
    use coffer_agent::keys::{new_key, LocalProvider};
    use coffer_proto::keys::Purpose;
    use coffer_proto::repo::Epoch;
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/ep"], None).ok();
    let repo: coffer_proto::RepoName = "dev/ep".parse().unwrap();
    let provider = LocalProvider::open(&p.dir.join("master.key")).unwrap();
    let client = coffer_tests::raw_client(&p.writer()).await;
    let epoch = |created: u64| {
        let (provider, repo) = (&provider, &repo);
        async move {
            let (_key, record) = new_key(provider, repo, Purpose::ChunkId).await.unwrap();
            (record.key_id, Epoch { version: 1, created, key: record })
        }
    };
    let now_ms = now() * 1000;
    for (created, why) in [(u64::MAX, "far future"), (now_ms + 3_600_000, "an hour ahead"), (1, "the distant past")] {
        let (id, e) = epoch(created).await;
        let refused = client.put_epoch(&repo, id, e.encode()).await.unwrap_err();
        assert_eq!(refused.status().map(|s| s.as_u16()), Some(400), "{why}: {refused}");
        assert!(refused.to_string().contains("proxy's clock"), "{why}: {refused}");
    }
    assert!(p.stored("dev/ep/epochs").is_empty());

    // One stored behind the proxy's back (or before it checked) ...
    let (future_id, future) = epoch(u64::MAX).await;
    let dir = p.objects().join("dev/ep/epochs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(future_id.to_string()), future.encode()).unwrap();
    // ... does not stop a rotation: the new epoch is newest.
    let out = coffer(&p.writer(), &["key", "rotate", "--repo", "dev/ep"], None).ok();
    let listed = client.list_epochs(&repo).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].key.key_id, future_id, "the future-dated epoch sorts first");
    assert!(out.contains(&listed[1].key.key_id.to_string()), "the rotated key is the newest: {out}");
    // A second epoch dated before the newest is refused too.
    let (id, e) = epoch(listed[1].created - 1).await;
    let refused = client.put_epoch(&repo, id, e.encode()).await.unwrap_err();
    assert!(refused.to_string().contains("not after the newest epoch"), "{refused}");
}

/// Raw store access deletes the newest snapshot's root (or rolls the
/// repository back to an older copy): what is left verifies, and the
/// report reconciles the audit trail's commits with the stored roots and
/// names the missing one (as does the host that committed it).
#[test]
fn the_report_names_committed_snapshots_that_are_gone() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/roll"], None).ok();
    let old = coffer(&p.writer(), &["backup", "--repo", "dev/roll", "-"], Some(b"older")).last_line();
    let new = coffer(&p.writer(), &["backup", "--repo", "dev/roll", "-"], Some(b"newer")).last_line();
    let report = || {
        let out = Command::new(bin("coffer-proxy"))
            .arg("--config")
            .arg(p.dir.join("proxy.toml"))
            .args(["report", "--format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["repos"].as_array().unwrap().iter().find(|r| r["repo"] == "dev/roll").unwrap().clone()
    };
    assert_eq!(report()["missing_snapshots"], serde_json::json!([]));
    std::fs::remove_file(p.objects().join(format!("dev/roll/snapshots/{new}"))).unwrap();
    std::fs::remove_file(p.objects().join(format!("dev/roll/index/{new}"))).unwrap();
    let verified = coffer(&p.reader(), &["verify", "--repo", "dev/roll"], None);
    assert!(String::from_utf8_lossy(&verified.stdout).contains(&format!("{old}: ok")), "{}", verified.stderr);
    assert!(verified.code() == 1 && verified.stderr.contains(&new), "the host remembers it: {}", verified.stderr);
    let r = report();
    assert_eq!(r["missing_snapshots"], serde_json::json!([new]), "{r}");
    assert_eq!(r["snapshots"], 1, "{r}");
    assert_ne!(old, new);
}

/// A revocation stored by an earlier version (one flat object per
/// identity) still holds after the upgrade, and can be lifted.
#[test]
fn a_revocation_from_before_switches_holds_and_can_be_lifted() {
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    let who = "spiffe://coffer.dev/writer";
    let name = blake3::hash(format!("dev\0{who}").as_bytes()).to_hex();
    let legacy = p.objects().join(format!("admin/revocations/{name}"));
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    let record = serde_json::json!({"trust_domain": "dev", "identity": who, "by": "admin (dev)", "time": 1});
    std::fs::write(&legacy, record.to_string()).unwrap();
    let p = p.restarted(|text| text);
    assert!(coffer(&p.writer(), &["whoami"], None).stderr.contains("revoked by an administrator"));
    let lift = ["revoke", "--trust-domain", "dev", "--identity", who, "--lift"];
    let (ok, out) = admin(&p, "admin", &code_at(&secret, now()).unwrap(), &lift);
    assert!(ok, "{out}");
    coffer(&p.writer(), &["whoami"], None).ok();
}

/// A schedule in a repo policy: `lifecycle plan` says which snapshots it
/// keeps and why, and which it lets go, changing nothing.
#[test]
fn lifecycle_plan_shows_what_the_schedule_keeps() {
    let p = DevProxy::start().restarted(|text| {
        text + "\n[[repo_policies]]\nrepos = \"dev/**\"\nclassification = \"internal\"\nkeep = { last = 2, daily = 1 }\n"
    });
    coffer(&p.writer(), &["init", "--repo", "dev/lc"], None).ok();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct commit seconds
            coffer(&p.writer(), &["backup", "--repo", "dev/lc", "-"], Some(format!("day {i}").as_bytes())).last_line()
        })
        .collect();
    let before = p.stored("dev/lc");
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["lifecycle", "plan", "--repo", "dev/lc", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept: Vec<&str> = plan["keep"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(kept, [ids[2].as_str(), ids[1].as_str()], "the two newest: {plan}");
    let reasons = &plan["keep"][0]["reasons"];
    assert!(reasons[0] == "last 1" && reasons[1].as_str().unwrap().starts_with("daily "), "{reasons}");
    assert_eq!(plan["let_go"][0]["id"], ids[0].as_str());
    assert_eq!(plan["let_go"][0]["held"], false);
    assert_eq!(plan["due_now"]["objects"], 0, "every lock is still running: {plan}");
    let all = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["lifecycle", "plan", "--json"])
        .output()
        .unwrap();
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let repos: Vec<&serde_json::Value> = all.as_array().unwrap().iter().map(|p| &p["repo"]).collect();
    assert_eq!(repos, ["dev/lc"], "every repository with a schedule: {all}");
    assert_eq!(p.stored("dev/lc"), before, "a plan changes nothing");
    // The compliance report shows the schedule and when the next snapshot
    // it lets go may be deleted.
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["report", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let repo = report["repos"].as_array().unwrap().iter().find(|r| r["repo"] == "dev/lc").unwrap();
    assert_eq!(repo["schedule"]["keep_last"], 2, "{repo}");
    assert_eq!(repo["kept"], 2);
    assert_eq!(repo["next_expiry"], plan["let_go"][0]["retain_until"], "{repo}");

    // A repository whose policy has no schedule is told so.
    let none = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["lifecycle", "plan", "--repo", "prod/db"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(64));
}

/// The lifecycle pass runs by itself: with a one-second interval, the
/// newest snapshot, this month's keeper under `monthly = 12`, has its root
/// and chunks locked to the end of its twelfth month, one audit event says
/// so, the interval's lease is in the store, and the snapshot restores.
#[test]
fn the_lifecycle_pass_runs_by_itself_and_locks_keepers_to_their_periods_end() {
    let p = DevProxy::start().restarted(|text| {
        // The dev config has a [lifecycle] section of its own.
        text.replace("[lifecycle]\n", "[lifecycle]\ninterval_secs = 1\njitter_secs = 0\n")
            + "\n[[repo_policies]]\nrepos = \"dev/**\"\n\
                classification = \"internal\"\nkeep = { daily = 7, monthly = 12 }\n"
    });
    coffer(&p.writer(), &["init", "--repo", "dev/life"], None).ok();
    let data = random_bytes("kept for a year", 3 << 20);
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/life", "-"], Some(&data)).last_line();
    let event = p.wait_for_event("the pass", |e| e["action"] == "lifecycle" && e["repo"] == "dev/life");
    assert_eq!(event["outcome"], "ok", "{event}");
    let reason = event["reason"].as_str().unwrap();
    assert!(reason.contains(&id) && reason.contains("0 objects deleted"), "{event}");
    // The twelfth month from this one starts at least 334 days from now.
    let lock = |key: &str| {
        let path = p.dir.join("store/locks").join(key);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["retain_until"].as_u64().unwrap()
    };
    let year = now() + 334 * 86_400;
    assert!(lock(&format!("dev/life/snapshots/{id}")) >= year, "the root");
    for chunk in p.stored("dev/life/chunks") {
        let rel = chunk.strip_prefix(p.objects()).unwrap().to_string_lossy().into_owned();
        assert!(lock(&rel) >= year, "{rel}");
    }
    assert!(!p.stored("admin/lifecycle").is_empty(), "the interval's lease");
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/life", &id], None);
    assert!(restored.stdout == data, "restored bytes differ");
}
