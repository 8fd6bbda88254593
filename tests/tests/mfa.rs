//! TOTP on admin calls and on reads the policy marks: refused without a
//! code, with a wrong one and with a replayed one; accepted with a fresh one.

use std::process::Command;

use coffer_proxy::access::mfa::code_at;
use coffer_tests::{bin, coffer, coffer_with_env, DevProxy};

const ADMIN: &str = "spiffe://coffer.dev/admin";
const WRITER: &str = "spiffe://coffer.dev/writer";
const READER: &str = "spiffe://coffer.dev/reader";

use coffer_proxy::unix_now as now;

/// Runs an admin call as `who` with `code`; returns (success, output).
fn admin(p: &DevProxy, who: &str, code: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(bin("coffer-proxy"));
    cmd.arg("admin").arg(args[0]).arg("--client-config").arg(p.config(who)).args(&args[1..]);
    cmd.args(["--totp", code.unwrap_or("")]);
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// A six-digit string that is none of the codes valid around `t`.
fn wrong_code(secret: &str, t: u64) -> String {
    let valid: Vec<String> = [t - 30, t, t + 30].iter().map(|&s| code_at(secret, s).unwrap()).collect();
    (0..).map(|i| format!("{:06}", 123_456 + i)).find(|c| !valid.contains(c)).unwrap()
}

#[test]
fn admin_calls_need_a_fresh_totp_code_each_time() {
    let p = DevProxy::start();
    let secret = p.enroll(ADMIN);
    let revoke = ["revoke", "--trust-domain", "dev", "--identity", WRITER];
    let t = now();

    let (ok, out) = admin(&p, "admin", None, &revoke);
    assert!(!ok && out.contains("mfa-"), "without a code: {out}");
    let (ok, out) = admin(&p, "admin", Some(&wrong_code(&secret, t)), &revoke);
    assert!(!ok && out.contains("mfa-failed"), "with a wrong code: {out}");
    coffer(&p.writer(), &["whoami"], None).ok();

    let fresh = code_at(&secret, t).unwrap();
    let (ok, out) = admin(&p, "admin", Some(&fresh), &revoke);
    assert!(ok, "with a fresh code: {out}");
    let (ok, out) = admin(&p, "admin", Some(&fresh), &["reload"]);
    assert!(!ok && out.contains("already used"), "a replayed code: {out}");
    let (ok, out) = admin(&p, "admin", Some(&code_at(&secret, t + 30).unwrap()), &["reload"]);
    assert!(ok, "the next step's code is fresh: {out}");

    // The revocation took effect at once, and survives a restart.
    let denied = coffer(&p.writer(), &["whoami"], None);
    assert!(denied.stderr.contains("revoked by an administrator"), "{}", denied.stderr);
    let p = p.restarted(|text| text);
    let denied = coffer(&p.writer(), &["whoami"], None);
    assert!(denied.stderr.contains("revoked by an administrator"), "{}", denied.stderr);
    coffer(&p.reader(), &["whoami"], None).ok();

    // Each admin call left a durable intent event before acting.
    let intents: Vec<_> = p
        .audit_events()
        .into_iter()
        .filter(|e| {
            e["action"] == "admin-revoke" && e["reason"].as_str().unwrap_or("").starts_with("authorized with TOTP")
        })
        .collect();
    assert_eq!(intents.len(), 1, "{}", p.audit_log());
}

/// A stolen admin certificate guessing codes: after a handful of wrong
/// ones every code is refused, the right one included, a critical alert is
/// raised, and neither the count nor the used codes are forgotten by a
/// restart (they live in the store, shared by every proxy on it).
#[tokio::test(flavor = "multi_thread")]
async fn guessing_admin_codes_locks_the_identity_out_and_a_restart_forgets_nothing() {
    use coffer_proxy::access::mfa::FREE_FAILURES;
    let p = DevProxy::start();
    let secret = p.enroll(ADMIN);
    let reload = |code: String| {
        let config = p.config("admin");
        async move {
            let client = coffer_tests::raw_client(&config).await.with_totp(Some(code));
            client.admin(coffer_proto::endpoint::Action::AdminReload, &serde_json::json!({})).await
        }
    };
    let t = now();
    let used = code_at(&secret, t).unwrap();
    reload(used.clone()).await.expect("a fresh code");

    // A restart keeps the used code used.
    let p = p.restarted(|text| text);
    let reload = |code: String| {
        let config = p.config("admin");
        async move {
            let client = coffer_tests::raw_client(&config).await.with_totp(Some(code));
            client.admin(coffer_proto::endpoint::Action::AdminReload, &serde_json::json!({})).await
        }
    };
    let replay = reload(used).await.unwrap_err();
    assert!(replay.to_string().contains("already used"), "a code replayed after a restart: {replay}");

    let wrong = wrong_code(&secret, now());
    for i in 1..FREE_FAILURES {
        let e = reload(wrong.clone()).await.unwrap_err();
        assert!(e.to_string().contains("mfa-failed"), "wrong code {i}: {e}");
    }
    let e = reload(wrong.clone()).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "not retryable: {e}");
    assert!(e.to_string().contains("mfa-locked"), "wrong code {FREE_FAILURES} locks: {e}");
    let alert = p.wait_for_event("the lockout alert", |e| {
        e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with("mfa-lockout:"))
    });
    assert!(alert["reason"].as_str().unwrap_or_default().contains(ADMIN), "{alert}");

    // Locked out: the right code is refused too, also after a restart.
    let right = code_at(&secret, now() + 30).unwrap();
    let e = reload(right.clone()).await.unwrap_err();
    assert!(e.to_string().contains("mfa-locked"), "the right code while locked out: {e}");
    // Refusals are written behind the answer (only changes wait for the
    // disk), so wait for them before the restart kills the proxy.
    let refusals = |p: &DevProxy, n: usize| {
        let count = || {
            p.audit_events().into_iter().filter(|e| e["action"] == "admin-reload" && e["outcome"] == "denied").count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while count() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        count()
    };
    assert_eq!(refusals(&p, FREE_FAILURES + 2), FREE_FAILURES + 2, "every refusal is audited: {}", p.audit_log());
    let p = p.restarted(|text| text);
    let client = coffer_tests::raw_client(&p.config("admin")).await.with_totp(Some(right));
    let e = client.admin(coffer_proto::endpoint::Action::AdminReload, &serde_json::json!({})).await.unwrap_err();
    assert!(e.to_string().contains("mfa-locked"), "locked out after a restart: {e}");
    assert_eq!(refusals(&p, FREE_FAILURES + 3), FREE_FAILURES + 3, "every refusal is audited: {}", p.audit_log());
}

#[test]
fn non_admins_cannot_make_admin_calls_even_with_a_code() {
    let p = DevProxy::start();
    let secret = p.enroll(WRITER);
    let code = code_at(&secret, now()).unwrap();
    let (ok, out) = admin(&p, "writer", Some(&code), &["revoke", "--trust-domain", "dev", "--identity", READER]);
    assert!(!ok && out.contains("403"), "{out}");
    coffer(&p.reader(), &["whoami"], None).ok();
}

#[test]
fn mfa_for_backup_access() {
    let p = DevProxy::start();
    let path = p.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let marked = text.replace(
        &format!("identity = \"{READER}\"\nroles = [\"reader\"]\nrepos = [\"dev/**\"]"),
        &format!("identity = \"{READER}\"\nroles = [\"reader\"]\nrepos = [\"dev/**\"]\nmfa = true"),
    );
    assert_ne!(marked, text);
    std::fs::write(&path, marked).unwrap();
    assert!(p.reload());
    let secret = p.enroll(READER);
    coffer(&p.writer(), &["init", "--repo", "dev/pay"], None).ok();
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/pay", "-"], Some(b"payroll")).last_line();

    let without = coffer(&p.reader(), &["restore", "--repo", "dev/pay", &id], None);
    assert_eq!(without.code(), 64, "no terminal to ask on: {}", without.stderr);
    assert!(without.stderr.contains("pass --mfa-code"), "{}", without.stderr);
    let who = coffer(&p.reader(), &["whoami"], None);
    assert!(!who.status.success(), "whoami as a command also needs the code");

    // The proxy refuses by itself too, whatever the agent does.
    let secretless = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = coffer_tests::raw_client(&p.reader()).await;
        assert!(client.whoami().await.unwrap().mfa, "whoami tells the agent MFA is wanted");
        client.get_config(&"dev/pay".parse().unwrap()).await.unwrap_err()
    });
    assert_eq!(secretless.status().map(|s| s.as_u16()), Some(401), "{secretless}");

    // On a terminal the agent asks for the code.
    let code = code_at(&secret, now()).unwrap();
    let cmd = format!("{} restore --repo dev/pay {id} -o {}", bin("coffer").display(), p.dir.join("tty-out").display());
    let mut script = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COFFER_CONFIG", p.reader())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(script.stdin.take().unwrap(), "{code}").unwrap();
    let out = script.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("TOTP code:"), "{screen}");
    assert_eq!(std::fs::read(p.dir.join("tty-out")).unwrap(), b"payroll", "{screen}");

    // The next step's code is fresh (one step of skew is allowed).
    let code = code_at(&secret, now() + 30).unwrap();
    let with =
        coffer_with_env(&p.reader(), &["restore", "--repo", "dev/pay", &id], None, &[("COFFER_MFA_CODE", &code)]);
    assert_eq!(with.ok(), "payroll", "one code serves every request of the connection");
    let replay = coffer(&p.reader(), &["--mfa-code", &code, "restore", "--repo", "dev/pay", &id], None);
    assert_eq!(replay.code(), 1);
    assert!(replay.stderr.contains("already used"), "{}", replay.stderr);
    // The writer's rule does not ask for MFA.
    coffer(&p.writer(), &["backup", "--repo", "dev/pay", "-"], Some(b"more")).ok();
}

/// The code need not show in the process list: `--totp -` reads it from
/// stdin, and without one (and no terminal to ask on) the call says how to
/// give it instead of sending nothing.
#[test]
fn the_admin_code_can_come_from_stdin() {
    use std::io::Write as _;
    let p = DevProxy::start();
    let secret = p.enroll(ADMIN);
    let run = |totp: Option<&str>, stdin: &[u8]| {
        let mut cmd = Command::new(bin("coffer-proxy"));
        cmd.args(["admin", "reload", "--client-config"]).arg(p.config("admin"));
        cmd.env_remove("COFFER_MFA_CODE");
        if let Some(t) = totp {
            cmd.args(["--totp", t]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = run(None, b"");
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("--totp -") && out.contains("COFFER_MFA_CODE"), "{out}");
    let fresh = code_at(&secret, now()).unwrap();
    let (code, out) = run(Some("-"), format!("{fresh}\n").as_bytes());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("reload: ok"), "{out}");
    let reloads = p.audit_events().into_iter().filter(|e| e["action"] == "admin-reload" && e["outcome"] == "ok");
    assert_eq!(reloads.count(), 2, "the intent and the call: {}", p.audit_log());
}
