//! Identities, roles and integrity: what each certificate may do, and that
//! tampering is caught.

use coffer_proto::api::DIGEST_HEADER;
use coffer_tests::{coffer, random_bytes, DevProxy};
use http::Method;

fn backup(p: &DevProxy, repo: &str, data: &[u8]) -> String {
    coffer(&p.writer(), &["init", "--repo", repo], None).ok();
    coffer(&p.writer(), &["backup", "--repo", repo, "-"], Some(data)).last_line()
}

#[test]
fn altered_chunk_fails_restore_and_verify_naming_snapshot_and_chunk() {
    let p = DevProxy::start();
    let data = random_bytes("tamper", 3 << 20);
    let id = backup(&p, "dev/t", &data);
    let chunks = p.stored("dev/t/chunks");
    assert!(chunks.len() >= 2, "expected several chunks, got {chunks:?}");
    // Alter the largest chunk (a data chunk, not the small manifest).
    let victim = chunks.iter().max_by_key(|c| std::fs::metadata(c).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    let chunk_id = victim.file_name().unwrap().to_str().unwrap();

    let out = p.dir.join("restored.bin");
    let restore = coffer(&p.reader(), &["restore", "--repo", "dev/t", &id, "-o", out.to_str().unwrap()], None);
    assert_eq!(restore.code(), 1);
    for needle in ["integrity error", id.as_str(), chunk_id] {
        assert!(restore.stderr.contains(needle), "missing {needle:?} in: {}", restore.stderr);
    }
    assert!(!out.exists(), "a failed restore must leave no output file");
    let leftovers: Vec<_> = std::fs::read_dir(&p.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary restore file left behind");

    let verify = coffer(&p.reader(), &["verify", "--repo", "dev/t", &id], None);
    assert_eq!(verify.code(), 1);
    assert!(verify.stderr.contains("integrity error") && verify.stderr.contains(chunk_id), "{}", verify.stderr);

    // Verifying the whole repository checks every snapshot, the damaged one
    // named, the sound one after it still checked.
    let sound =
        coffer(&p.writer(), &["backup", "--repo", "dev/t", "-"], Some(&random_bytes("sound", 1 << 20))).last_line();
    let all = coffer(&p.reader(), &["verify", "--repo", "dev/t"], None);
    assert_eq!(all.code(), 1);
    assert!(String::from_utf8_lossy(&all.stdout).contains(&format!("{sound}: ok")), "{}", all.stderr);
    assert!(all.stderr.contains(&format!("{id}: DAMAGED")), "{}", all.stderr);
    assert!(all.stderr.contains("1 of 2 snapshots are damaged"), "{}", all.stderr);
}

#[test]
fn writer_cannot_read_and_reader_cannot_write() {
    let p = DevProxy::start();
    let id = backup(&p, "dev/w", b"secret payroll data");
    for args in [
        vec!["restore", "--repo", "dev/w", id.as_str()],
        vec!["snapshots", "--repo", "dev/w"],
        vec!["verify", "--repo", "dev/w"],
    ] {
        let run = coffer(&p.writer(), &args, None);
        assert_eq!(run.code(), 1, "{args:?}");
        assert!(run.stderr.contains("403"), "{args:?}: {}", run.stderr);
        assert!(!String::from_utf8_lossy(&run.stdout).contains("payroll"));
    }
    let run = coffer(&p.reader(), &["backup", "--repo", "dev/w", "-"], Some(b"overwrite attempt"));
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    let log = p.audit_log();
    assert!(log.contains(r#""action":"get-snapshot","repo":"dev/w""#) && log.contains(r#""outcome":"denied""#));
}

#[test]
fn repo_outside_the_identity_patterns_is_refused() {
    let p = DevProxy::start();
    let run = coffer(&p.writer(), &["init", "--repo", "prod/db"], None);
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("may not put-config on repository prod/db"), "{}", run.stderr);
    assert!(p.stored("prod").is_empty(), "nothing may be stored for a refused repo");
}

#[test]
fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let a = DevProxy::start();
    let b = DevProxy::start();
    // B's writer certificate, trusting A's CA so that only the client side is wrong.
    let cfg = b.dir.join("cross.toml");
    std::fs::write(
        &cfg,
        format!(
            "proxy = \"https://{}\"\nca = \"{}\"\ncert = \"writer.pem\"\nkey = \"writer.key\"\n[keys]\nprovider = \"local\"\nmaster_key = \"master.key\"\n",
            a.addr,
            a.dir.join("ca.pem").display()
        ),
    )
    .unwrap();
    let run = coffer(&cfg, &["whoami"], None);
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("refused the TLS session"), "{}", run.stderr);
    assert!(!String::from_utf8_lossy(&run.stdout).contains("spiffe"));
    // The proxy records the failed handshake.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !a.audit_log().contains(r#""action":"handshake""#) {
        assert!(std::time::Instant::now() < deadline, "no handshake event in: {}", a.audit_log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test]
async fn malformed_envelopes_are_refused_and_nothing_is_stored() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/m"], None).ok();
    let client = coffer_tests::raw_client(&p.writer()).await;
    let id = "ab".repeat(32);
    let path = format!("/v1/repos/dev/m/chunks/{id}");
    let digest = |b: &[u8]| Some((DIGEST_HEADER, blake3::hash(b).to_hex().to_string()));

    let mut good_shape = b"CFR1\x01\x01\x00\x00".to_vec();
    good_shape.extend_from_slice(&[7u8; 16 + 12 + 40]);
    let mut bad_magic = good_shape.clone();
    bad_magic[..4].copy_from_slice(b"XXXX");
    let mut bad_alg = good_shape.clone();
    bad_alg[5] = 9;
    type Header = Option<(&'static str, String)>;
    let cases: Vec<(&str, Vec<u8>, Header, u16)> = vec![
        ("garbage", b"not an envelope".to_vec(), digest(b"not an envelope"), 400),
        ("bad magic", bad_magic.clone(), digest(&bad_magic), 400),
        ("unknown algorithm", bad_alg.clone(), digest(&bad_alg), 400),
        ("truncated", good_shape[..30].to_vec(), digest(&good_shape[..30]), 400),
        ("no digest", good_shape.clone(), None, 400),
        ("wrong digest", good_shape.clone(), digest(b"other"), 400),
        // Well-formed, but sealed under a key the repository does not hold.
        ("unknown key", good_shape.clone(), digest(&good_shape), 409),
    ];
    for (what, body, header, status) in cases {
        let err = client.raw(Method::PUT, &path, body, header).await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{what}: {err}");
    }
    let bad_id = client.raw(Method::PUT, "/v1/repos/dev/m/chunks/XYZ", good_shape.clone(), digest(&good_shape)).await;
    assert_eq!(bad_id.unwrap_err().status().map(|s| s.as_u16()), Some(400));
    let bad_commit = client.raw(Method::POST, "/v1/repos/dev/m/snapshots", b"CFC1 nope".to_vec(), None).await;
    assert_eq!(bad_commit.unwrap_err().status().map(|s| s.as_u16()), Some(400));
    assert!(p.stored("dev/m/chunks").is_empty(), "refused uploads must store nothing");
    assert!(p.stored("dev/m/snapshots").is_empty());
}

#[tokio::test]
async fn path_tricks_never_reach_the_store() {
    let p = DevProxy::start();
    let client = coffer_tests::raw_client(&p.writer()).await;
    for path in
        ["/v1/repos/dev/../config", "/v1/repos/dev/%2e%2e/config", "/v1/repos/dev//x/config", "/v1/repos/DEV/x/config"]
    {
        let err = client.raw(Method::PUT, path, b"{}".to_vec(), None).await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{path}: {err}");
    }
    assert!(p.stored_for_clients().is_empty());
}

#[test]
fn key_material_never_reaches_logs_errors_or_audit_events() {
    use coffer_proto::keys::{KeyRecord, LocalKek};
    let p = DevProxy::start_logging("trace");
    coffer(&p.writer(), &["init", "--repo", "dev/s"], None).ok();
    let backup = coffer_tests::coffer_with_env(
        &p.writer(),
        &["backup", "--repo", "dev/s", "-"],
        Some(&random_bytes("secret", 1 << 20)),
        &[("COFFER_LOG", "trace")],
    );
    let id = backup.last_line();
    let restore = coffer_tests::coffer_with_env(
        &p.reader(),
        &["restore", "--repo", "dev/s", &id],
        None,
        &[("COFFER_LOG", "trace")],
    );
    restore.ok();
    // A failing restore too: its error path must not leak either.
    let denied = coffer_tests::coffer_with_env(
        &p.writer(),
        &["restore", "--repo", "dev/s", &id],
        None,
        &[("COFFER_LOG", "trace")],
    );
    assert_eq!(denied.code(), 1);

    let master_file = std::fs::read_to_string(p.dir.join("master.key")).unwrap();
    let master_hex = master_file.lines().nth(1).unwrap().to_string();
    let kek = LocalKek::from_file_contents(&master_file).unwrap();
    let mut keys: Vec<Vec<u8>> = vec![hex::decode(&master_hex).unwrap()];
    for path in p.stored("dev/s/keys") {
        let record = KeyRecord::decode(&std::fs::read(path).unwrap()).unwrap();
        keys.push(kek.decrypt(&record.wrapped, &record.context).unwrap().expose_secret().to_vec());
    }
    assert!(keys.len() >= 2, "expected the master key and at least one data key");
    // Each key as it could be printed: hex (both cases), base64 (standard
    // and URL-safe), a Rust Debug array, and the first 8 bytes of each (a
    // truncated print leaks as much as it shows).
    let mut secrets = Vec::new();
    for k in &keys {
        use base64::Engine as _;
        for bytes in [&k[..], &k[..8]] {
            secrets.push(hex::encode(bytes));
            secrets.push(hex::encode_upper(bytes));
            secrets.push(format!("{bytes:?}").trim_end_matches(']').to_string());
        }
        secrets.push(base64::engine::general_purpose::STANDARD.encode(k));
        secrets.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k));
    }
    let outputs = [
        ("audit log", p.audit_log()),
        ("proxy log", p.stderr()),
        ("backup stderr", backup.stderr.clone()),
        ("restore stderr", restore.stderr.clone()),
        ("denied stderr", denied.stderr.clone()),
    ];
    assert!(outputs[1].1.len() > 100, "trace logging should have produced output");
    assert!(outputs[0].1.lines().count() > 5, "the audit log should hold this test's events");
    for secret in &secrets {
        for (what, text) in &outputs {
            assert!(!text.contains(secret.as_str()), "key material found in the {what}");
        }
    }
}

/// `openssl s_client` against the proxy, offering only `version`.
fn openssl_handshake(p: &DevProxy, version: &str) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-brief", version, "-connect", &p.addr])
        .arg("-CAfile")
        .arg(p.dir.join("ca.pem"))
        .arg("-cert")
        .arg(p.dir.join("writer.pem"))
        .arg("-key")
        .arg(p.dir.join("writer.key"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is part of the base system");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && text.contains("CONNECTION ESTABLISHED"), text)
}

#[test]
fn only_tls_1_3_is_spoken() {
    let p = DevProxy::start();
    let (ok13, text13) = openssl_handshake(&p, "-tls1_3");
    assert!(ok13 && text13.contains("TLSv1.3"), "TLS 1.3 with a valid certificate must work: {text13}");
    let (ok12, text12) = openssl_handshake(&p, "-tls1_2");
    assert!(!ok12, "TLS 1.2 must be refused: {text12}");
}

/// Someone with raw store access deletes one snapshot's index segment and
/// alters another's root: the listing still shows the good snapshot, names
/// both damaged ones, exits 1, and the proxy raises an alert.
#[test]
fn one_damaged_snapshot_does_not_hide_the_others() {
    let p = DevProxy::start();
    let good = backup(&p, "dev/dmg", b"good");
    let more = |data: &[u8]| coffer(&p.writer(), &["backup", "--repo", "dev/dmg", "-"], Some(data)).last_line();
    let (no_index, bad_root) = (more(b"its index goes"), more(b"its root is altered"));
    let objects = p.objects().join("dev/dmg");
    std::fs::remove_file(objects.join(format!("index/{no_index}"))).unwrap();
    let root = objects.join(format!("snapshots/{bad_root}"));
    let mut bytes = std::fs::read(&root).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::remove_file(&root).unwrap();
    std::fs::write(&root, bytes).unwrap();

    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/dmg", "--json"], None);
    assert_eq!(listed.code(), 1, "{}", listed.stderr);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let ids: Vec<&str> = json.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [good.as_str()], "{}", listed.stderr);
    assert!(
        listed.stderr.contains(&format!("snapshot {bad_root}: the snapshot root failed authentication")),
        "{}",
        listed.stderr
    );
    assert!(listed.stderr.contains("1 of 2 snapshots could not be read"), "{}", listed.stderr);
    let alert = p.wait_for_event("the damaged-snapshot alert", |e| {
        e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with("damaged-snapshot:"))
    });
    assert!(alert["reason"].as_str().unwrap().contains(&no_index), "{alert}");
}

/// Someone with raw store access deletes the newest snapshot's root, then
/// puts back an older copy of the whole repository: the proxy's listing
/// looks whole both times, but the host that made and listed the snapshots
/// names each one it lacks, `snapshots` and `verify` fail, and deleting
/// the host's memory (a repository deliberately made anew) clears it.
#[test]
fn a_listing_that_goes_backwards_is_noticed_by_the_host_that_remembers() {
    let p = DevProxy::start();
    let first = backup(&p, "dev/back", b"first");
    let objects = p.objects().join("dev/back");
    let copy = p.dir.join("older-copy");
    assert!(std::process::Command::new("cp").arg("-a").arg(&objects).arg(&copy).status().unwrap().success());
    let second = coffer(&p.writer(), &["backup", "--repo", "dev/back", "-"], Some(b"second")).last_line();
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/back"], None);
    assert_eq!(listed.code(), 0, "{}", listed.stderr);

    // The newest root deleted behind the proxy's back.
    let root = objects.join(format!("snapshots/{second}"));
    let saved = std::fs::read(&root).unwrap();
    std::fs::remove_file(&root).unwrap();
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/back"], None);
    assert_eq!(listed.code(), 1, "{}", listed.stderr);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(out.contains(&first), "the rest is still listed: {out}");
    assert!(
        listed.stderr.contains(&format!("snapshot {second} of dev/back, which this host committed")),
        "{}",
        listed.stderr
    );
    assert!(listed.stderr.contains("went backwards"), "{}", listed.stderr);
    let audited = coffer(&p.dir.join("auditor.toml"), &["snapshots", "--repo", "dev/back"], None);
    assert_eq!(audited.code(), 1, "an auditor sharing the state folder sees it too: {}", audited.stderr);
    assert!(audited.stderr.contains(&second), "{}", audited.stderr);
    let verified = coffer(&p.reader(), &["verify", "--repo", "dev/back"], None);
    assert_eq!(verified.code(), 1, "{}", verified.stderr);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(out.contains(&format!("{first}: ok")), "what is there is still checked: {out}");
    assert!(verified.stderr.contains(&second) && verified.stderr.contains("went backwards"), "{}", verified.stderr);
    std::fs::write(&root, saved).unwrap();
    assert_eq!(coffer(&p.reader(), &["snapshots", "--repo", "dev/back"], None).code(), 0, "the root is back");

    // The whole repository put back as it was before the second backup.
    std::fs::remove_dir_all(&objects).unwrap();
    assert!(std::process::Command::new("cp").arg("-a").arg(&copy).arg(&objects).status().unwrap().success());
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/back", "--json"], None);
    assert_eq!(listed.code(), 1, "{}", listed.stderr);
    assert!(listed.stderr.contains(&second), "{}", listed.stderr);

    // A repository made anew on purpose: its memory removed, the listing is fine.
    let state = p.dir.join("state");
    assert!(state.is_dir(), "the dev configs keep the memory beside them");
    std::fs::remove_dir_all(&state).unwrap();
    assert_eq!(coffer(&p.reader(), &["snapshots", "--repo", "dev/back"], None).code(), 0);
}

/// Someone who can write in the restore's target folder plants symlinks
/// at the temporary name the agent used to use and at the target: the
/// restore writes neither the files they point to, and the file it makes
/// is readable by its owner only.
#[test]
fn restore_to_a_file_follows_no_planted_link_and_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = DevProxy::start();
    let id = backup(&p, "dev/link", b"secret payroll");
    let dir = p.dir.join("restores");
    std::fs::create_dir(&dir).unwrap();
    let victim = p.dir.join("victim");
    std::fs::write(&victim, b"do not overwrite").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join(".out.coffer-partial")).unwrap();
    let out = dir.join("out");
    coffer(&p.reader(), &["restore", "--repo", "dev/link", &id, "-o", out.to_str().unwrap()], None).ok();
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not overwrite", "the planted link was followed");
    assert_eq!(std::fs::read(&out).unwrap(), b"secret payroll");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a restore is private to its owner: {mode:o}");
    // Unless the caller says who else may read it: the mode is set as
    // asked, whatever the umask, and never with setuid bits.
    let shared = dir.join("shared");
    let restore = format!(
        "umask 077; exec {} --config {} restore --repo dev/link {id} -o {} --mode 0664 --json",
        coffer_tests::bin("coffer").display(),
        p.reader().display(),
        shared.display()
    );
    let out = std::process::Command::new("sh").args(["-c", &restore]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["mode"], "0664", "{said}");
    assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o664);
    let setuid = coffer(&p.reader(), &["restore", "--repo", "dev/link", &id, "-o", "x", "--mode", "4755"], None);
    assert_eq!(setuid.code(), 64, "{}", setuid.stderr);
    assert!(setuid.stderr.contains("at most 0777"), "{}", setuid.stderr);

    // A link at the target itself is replaced, not written through.
    let target = dir.join("linked");
    std::os::unix::fs::symlink(&victim, &target).unwrap();
    coffer(&p.reader(), &["restore", "--repo", "dev/link", &id, "-o", target.to_str().unwrap()], None).ok();
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not overwrite");
    assert!(!std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"secret payroll");
}

/// A hostile proxy (or raw store access) serves the repository's config
/// with tiny chunker sizes, so that envelope sizes would reveal content:
/// the config's MAC catches it; stripping the MAC makes it a legacy config,
/// refused unless the agent's own config lists the repository, and then
/// only with sizes above the floors. And the cut points are keyed: the
/// same data cuts differently in two repositories.
#[test]
fn the_chunker_config_is_authenticated_and_the_cut_points_keyed() {
    let p = DevProxy::start();
    let data = random_bytes("keyed cuts", 8 << 20);
    let sizes = |repo: &str| -> Vec<u64> {
        let mut v: Vec<u64> =
            p.stored(&format!("{repo}/chunks")).iter().map(|c| std::fs::metadata(c).unwrap().len()).collect();
        v.sort();
        v
    };
    backup(&p, "dev/k1", &data);
    backup(&p, "dev/k2", &data);
    assert_ne!(sizes("dev/k1"), sizes("dev/k2"), "the same data cut the same way in two repositories");

    let config = p.objects().join("dev/k1/config");
    let good = std::fs::read_to_string(&config).unwrap();
    let replace = |text: String| {
        std::fs::remove_file(&config).unwrap();
        std::fs::write(&config, text).unwrap();
    };
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["chunker"] = serde_json::json!({"min_size": 64, "avg_size": 256, "max_size": 1024});
    replace(v.to_string());
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/k1", "-"], Some(&data));
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("do not match their MAC"), "{}", run.stderr);

    v.as_object_mut().unwrap().remove("mac");
    replace(v.to_string());
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/k1", "-"], Some(&data));
    assert!(run.stderr.contains("not authenticated") && run.stderr.contains("legacy_repos"), "{}", run.stderr);
    let legacy = p.dir.join("legacy-writer.toml");
    let text = std::fs::read_to_string(p.writer()).unwrap();
    std::fs::write(&legacy, format!("{text}\n[backup]\nlegacy_repos = [\"dev/k1\"]\n")).unwrap();
    let run = coffer(&legacy, &["backup", "--repo", "dev/k1", "-"], Some(&data));
    assert!(run.stderr.contains("chunks this small"), "{}", run.stderr);
    assert!(p.stored("dev/k1/snapshots").len() == 1, "nothing was committed under a tampered config");

    // A legacy config with sizes above the floors is accepted where listed.
    let mut legacy_ok: serde_json::Value = serde_json::from_str(&good).unwrap();
    legacy_ok.as_object_mut().unwrap().remove("mac");
    replace(legacy_ok.to_string());
    coffer(&legacy, &["backup", "--repo", "dev/k1", "-"], Some(b"legacy")).ok();
}

/// The first review's poisoning attack: a stolen certificate of one host (a
/// writer, which holds the chunk-id key by design) uploads a valid envelope
/// of the wrong plaintext under the id of another host's next backup. That
/// backup does not count the planted upload, stores its own copy beside the
/// locked one, and restores and verifies bit-exact; and the dedup answer
/// tells the thief nothing of what the other host stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_host_certificate_cannot_poison_another_hosts_backups() {
    use coffer_agent::keys::LocalProvider;
    use coffer_agent::repo::OpenRepo;
    let p = DevProxy::start();
    p.dev(&["issue", "--name", "thief", "--identity", "spiffe://coffer.dev/thief"]);
    p.append_config(
        "\n[[rules]]\nname = \"second host\"\ntrust_domain = \"dev\"\nidentity = \"spiffe://coffer.dev/thief\"\n\
         roles = [\"writer\"]\nrepos = [\"dev/**\"]\n",
    );
    assert!(p.reload());
    coffer(&p.writer(), &["init", "--repo", "dev/pz"], None).ok();
    // Below the smallest chunk: each stream is one chunk, whose id the
    // thief can compute as the agent does.
    let yesterday = random_bytes("yesterday", 3000);
    coffer(&p.writer(), &["backup", "--repo", "dev/pz", "-"], Some(&yesterday)).ok();

    let name: coffer_proto::RepoName = "dev/pz".parse().unwrap();
    let provider = std::sync::Arc::new(LocalProvider::open(&p.dir.join("master.key")).unwrap());
    let thief = coffer_tests::raw_client(&p.config("thief")).await;
    let repo = OpenRepo::open(thief.clone(), provider, name.clone(), false).await.unwrap();
    let tomorrow = random_bytes("tomorrow", 3000);
    let planted = repo.id_key.chunk_id(&tomorrow);
    let (key_id, key) = repo.new_data_key().await.unwrap();
    let poison = coffer_proto::chunk::seal(b"pay up", &key, key_id, &name, &planted, 3);
    thief.put_chunk(&name, &planted, poison.into()).await.unwrap();
    let known = repo.id_key.chunk_id(&yesterday);
    assert_eq!(thief.missing(&name, &[known, planted]).await.unwrap(), vec![known], "no oracle on the other host");

    let run = coffer(&p.writer(), &["backup", "--repo", "dev/pz", "--json", "-"], Some(&tomorrow));
    let run: serde_json::Value = serde_json::from_str(&run.ok()).unwrap();
    assert_eq!(run["bytes_new"], 3000, "the planted upload did not count: {run}");
    let id = run["id"].as_str().unwrap().to_string();
    let copies: Vec<String> = p
        .stored("dev/pz/chunks")
        .iter()
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{planted}.")))
        .collect();
    assert_eq!(copies.len(), 1, "the host's copy beside the planted upload: {copies:?}");
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/pz", &id], None);
    assert_eq!(restored.code(), 0, "{}", restored.stderr);
    assert!(restored.stdout == tomorrow, "restored bytes differ");
    coffer(&p.reader(), &["verify", "--repo", "dev/pz"], None).ok();
}

/// The same attack with the victim host's own certificate: the plant
/// counts for that identity's next backup, which then does not restore,
/// and a reader's `verify --since` finds it. The admin quarantines the
/// identity's uploads; its next backup uploads its data again, beside the
/// locked plant, and restores bit-exact; so does the poisoned snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn quarantining_an_identitys_uploads_cures_its_own_poisoned_chunks() {
    use coffer_agent::keys::LocalProvider;
    use coffer_agent::repo::OpenRepo;
    let p = DevProxy::start();
    let secret = p.enroll("spiffe://coffer.dev/admin");
    coffer(&p.writer(), &["init", "--repo", "dev/q"], None).ok();
    let before = coffer(&p.writer(), &["backup", "--repo", "dev/q", "-"], Some(b"before the theft")).last_line();
    // Commit times are in seconds: the next snapshots are later ones.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let name: coffer_proto::RepoName = "dev/q".parse().unwrap();
    let provider = std::sync::Arc::new(LocalProvider::open(&p.dir.join("master.key")).unwrap());
    let stolen = coffer_tests::raw_client(&p.writer()).await;
    let repo = OpenRepo::open(stolen.clone(), provider, name.clone(), false).await.unwrap();
    let tomorrow = random_bytes("tomorrow", 3000);
    let planted = repo.id_key.chunk_id(&tomorrow);
    let (key_id, key) = repo.new_data_key().await.unwrap();
    let poison = coffer_proto::chunk::seal(b"pay up", &key, key_id, &name, &planted, 3);
    stolen.put_chunk(&name, &planted, poison.into()).await.unwrap();

    let backup = || {
        let run = coffer(&p.writer(), &["backup", "--repo", "dev/q", "--json", "-"], Some(&tomorrow));
        serde_json::from_str::<serde_json::Value>(&run.ok()).unwrap()
    };
    let poisoned = backup();
    assert_eq!(poisoned["bytes_new"], 0, "the plant counted for its own identity: {poisoned}");
    let broken = coffer(&p.reader(), &["restore", "--repo", "dev/q", poisoned["id"].as_str().unwrap()], None);
    assert_ne!(broken.code(), 0);
    assert!(broken.stderr.contains(&planted.to_string()), "{}", broken.stderr);

    // A reader's daily `verify --since` finds it among the recent
    // snapshots, and leaves the older ones alone.
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/q", "--json"], None).json();
    let first = listed.as_array().unwrap().iter().find(|s| s["id"] == before.as_str()).unwrap()["committed"].clone();
    let since = format!("{}s", coffer_proxy::unix_now() - first.as_u64().unwrap() - 1);
    let recent = coffer(&p.reader(), &["verify", "--repo", "dev/q", "--since", &since], None);
    assert_eq!(recent.code(), 1, "{}", recent.stderr);
    assert!(recent.stderr.contains("1 of 1 snapshots are damaged"), "{}", recent.stderr);
    assert!(recent.stderr.contains(poisoned["id"].as_str().unwrap()), "{}", recent.stderr);
    let all = coffer(&p.reader(), &["verify", "--repo", "dev/q"], None);
    assert!(all.stderr.contains("1 of 2 snapshots are damaged"), "{}", all.stderr);

    let out = std::process::Command::new(coffer_tests::bin("coffer-proxy"))
        .args(["admin", "quarantine", "--client-config"])
        .arg(p.config("admin"))
        .args(["--trust-domain", "dev", "--identity", "spiffe://coffer.dev/writer", "--totp"])
        .arg(coffer_proxy::access::mfa::code_at(&secret, coffer_proxy::unix_now()).unwrap())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("\"generation\":1"), "{said}");

    let cured = backup();
    assert_eq!(cured["bytes_new"], 3000, "nothing it uploaded before counts now: {cured}");
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/q", cured["id"].as_str().unwrap()], None);
    assert_eq!(restored.code(), 0, "{}", restored.stderr);
    assert!(restored.stdout == tomorrow, "restored bytes differ");
    let event = p.wait_for_event("the quarantine", |e| e["action"] == "admin-quarantine");
    assert_eq!(event["identity"], "spiffe://coffer.dev/admin", "{event}");

    // The poisoned snapshot heals too: its chunk's id now has a copy that
    // opens to it, which the reader finds beside the plant.
    let healed = coffer(&p.reader(), &["restore", "--repo", "dev/q", poisoned["id"].as_str().unwrap()], None);
    assert_eq!(healed.code(), 0, "{}", healed.stderr);
    assert!(healed.stdout == tomorrow, "restored bytes differ");
    assert!(healed.stderr.contains("its copy opened"), "{}", healed.stderr);
    coffer(&p.reader(), &["verify", "--repo", "dev/q"], None).ok();
}

/// A stolen writer certificate cannot make the bucket keep more than the
/// identity's daily upload quota: past it, the backup fails at once with
/// the reason, nothing is committed, and an alert is raised.
#[test]
fn an_identity_past_its_upload_quota_is_refused_and_alerted() {
    let p = DevProxy::start().restarted(|text| format!("{text}\n[limits]\nidentity_upload_bytes_per_day = 3000000\n"));
    let small = backup(&p, "dev/quota", &random_bytes("within the quota", 1 << 20));
    assert_eq!(small.len(), 32, "{small}");
    let started = std::time::Instant::now();
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/quota", "-"], Some(&random_bytes("past it", 8 << 20)));
    assert_ne!(run.code(), 0);
    assert!(run.stderr.contains("identity_upload_bytes_per_day"), "{}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "refused, not retried");
    assert_eq!(p.stored("dev/quota/snapshots").len(), 1, "nothing more committed");
    assert!(p.stored("dev/quota/chunks").iter().map(|c| std::fs::metadata(c).unwrap().len()).sum::<u64>() <= 3_000_000);
    p.wait_for_event("the quota alert", |e| {
        e["action"] == "alert" && e["object"].as_str().unwrap_or("").starts_with("upload-quota")
    });
}
