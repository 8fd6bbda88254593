//! The audit trail of a real proxy: `coffer-proxy audit verify` names the
//! exact seq of an edited, deleted or reordered event; sealed segments are
//! signed, shipped to the store, and verified there.

use std::process::Command;

use coffer_tests::{bin, coffer, random_bytes, DevProxy, Webhook};

fn audit(p: &DevProxy, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// The files (segments, not the checkpoints' folder) in a folder, in order.
fn segments_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// A proxy that has served a real workload, then stopped.
fn busy_proxy(extra: &str) -> DevProxy {
    let p = DevProxy::start().restarted(|text| text.replace("[audit]\n", &format!("[audit]\n{extra}\n")));
    coffer(&p.writer(), &["init", "--repo", "dev/a"], None).ok();
    let id =
        coffer(&p.writer(), &["backup", "--repo", "dev/a", "-"], Some(&random_bytes("audit", 3 << 20))).last_line();
    coffer(&p.reader(), &["restore", "--repo", "dev/a", &id], None).ok();
    coffer(&p.writer(), &["snapshots", "--repo", "dev/a"], None); // a denial
    p
}

#[test]
fn verify_names_the_exact_seq_of_an_edited_deleted_or_reordered_event() {
    let mut p = busy_proxy("");
    p.kill();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(ok, "{out}");
    let log = p.dir.join("audit/audit.jsonl");
    let good = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert!(lines.len() >= 12, "only {} events", lines.len());
    let join = |v: Vec<&str>| v.join("\n") + "\n";

    let mut edited = lines.clone();
    let changed = edited[4].replace("\"bytes\":", "\"bytes\":1");
    edited[4] = &changed;
    let mut deleted = lines.clone();
    deleted.remove(6);
    let mut reordered = lines.clone();
    reordered.swap(8, 9);
    for (what, text, seq) in
        [("edited", join(edited), 5), ("deleted", join(deleted), 7), ("reordered", join(reordered), 10)]
    {
        std::fs::write(&log, text).unwrap();
        let (ok, out) = audit(&p, &["verify"]);
        assert!(!ok, "{what} event not detected: {out}");
        assert!(out.contains(&format!("broken at seq {seq} ")), "{what}: {out}");
    }
    std::fs::write(&log, &good).unwrap();
    assert!(audit(&p, &["verify"]).0);
}

#[test]
fn sealed_segments_are_signed_shipped_and_verified_in_the_store() {
    let p = busy_proxy("segment_events = 5\nship_secs = 1");
    // Wait for the shipper.
    let shipped = p.dir.join("store/objects/audit/dev");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while segments_in(&shipped).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no audit segments shipped");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, out) = audit(&p, &["verify", "--store"]);
    assert!(ok && out.contains("sealed segments"), "{out}");
    let (ok, out) = audit(&p, &["verify"]);
    assert!(ok, "{out}");

    // Tamper with a shipped segment (raw access to the store's files).
    let segs = segments_in(&shipped);
    let text = std::fs::read_to_string(&segs[1]).unwrap();
    std::fs::write(&segs[1], text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"denied\"", 1)).unwrap();
    let (ok, out) = audit(&p, &["verify", "--store"]);
    assert!(!ok && out.contains("broken at seq"), "{out}");

    // Query: the denial is found by identity and action.
    let (ok, out) = audit(&p, &["query", "--identity", "spiffe://coffer.dev/writer", "--action", "list-snapshots"]);
    assert!(ok && out.lines().count() == 1 && out.contains("\"outcome\":\"denied\""), "{out}");
}

/// Root on the proxy host cuts the newest events off the local trail, or
/// deletes the whole spool: what is left verifies on its own, so `audit
/// verify` compares it with what was already shipped to the store.
#[test]
fn a_local_trail_shorter_than_what_was_shipped_is_truncation() {
    let mut p = busy_proxy("segment_events = 5\nship_secs = 1");
    let shipped = p.dir.join("store/objects/audit/dev");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while segments_in(&shipped).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no audit segments shipped");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.kill();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(ok, "{out}");

    // Everything local gone: the spool's sealed segments and the live log.
    let sealed = p.dir.join("audit/sealed");
    for seg in std::fs::read_dir(&sealed).unwrap().flatten() {
        std::fs::remove_file(seg.path()).unwrap();
    }
    std::fs::write(p.dir.join("audit/audit.jsonl"), b"").unwrap();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(!ok, "an emptied trail passed: {out}");
    assert!(out.contains("audit trail truncated") && out.contains("were shipped to the store"), "{out}");
}

/// Root on the proxy host cuts the newest events off the live log before
/// any segment was sealed (one an hour): no shipped segment shows it, but
/// the signed checkpoint shipped within a minute does; so does deleting the
/// whole live log.
#[test]
fn a_live_log_cut_below_the_stores_newest_checkpoint_is_truncation() {
    let mut p = busy_proxy("ship_secs = 1\ncheckpoint_secs = 1");
    let checkpoints = p.dir.join("store/objects/audit/dev/checkpoints");
    let log = p.dir.join("audit/audit.jsonl");
    let events = || std::fs::read_to_string(&log).unwrap().lines().count() as u64;
    // Wait until a checkpoint covers every event written so far.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let newest = loop {
        let newest: u64 =
            segments_in(&checkpoints).iter().filter_map(|p| p.file_name()?.to_str()?.parse().ok()).max().unwrap_or(0);
        if newest > 0 && newest >= events() {
            break newest;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint shipped");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    p.kill();
    assert!(segments_in(&p.dir.join("store/objects/audit/dev")).is_empty(), "nothing sealed yet");
    let (ok, out) = audit(&p, &["verify"]);
    assert!(ok, "{out}");

    let good = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = good.lines().take(newest as usize - 3).collect();
    std::fs::write(&log, kept.join("\n") + "\n").unwrap();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(!ok, "a cut trail passed: {out}");
    assert!(out.contains("audit trail truncated") && out.contains(&format!("checkpoint of event {newest}")), "{out}");
    std::fs::write(&log, b"").unwrap();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(!ok && out.contains("audit trail truncated"), "an emptied trail passed: {out}");
    std::fs::write(&log, &good).unwrap();
    let (ok, out) = audit(&p, &["verify"]);
    assert!(ok, "{out}");
    let (ok, out) = audit(&p, &["verify", "--store"]);
    assert!(ok && out.contains("checkpoints vouch for events past the sealed segments"), "{out}");
}

/// Segments a proxy ships as it stops (sealed, and not yet shipped) are
/// announced too: their alerts wait in the spool and go to the webhook
/// when the proxy starts again, so `--seals` covers the trail up to the
/// stop.
#[test]
fn segments_shipped_at_shutdown_are_announced_at_the_next_start() {
    let hook = Webhook::start(0);
    let mut p = DevProxy::start().restarted(|text| {
        text.replace("[audit]\n", "[audit]\nsegment_events = 5\nship_secs = 3600\n")
            + &format!("\n[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{}/\" }}\n", hook.port)
    });
    coffer(&p.writer(), &["init", "--repo", "dev/a"], None).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/a", "-"], Some(b"sealed, shipped at the stop")).ok();
    let seals = || -> Vec<String> {
        hook.received.lock().unwrap().iter().filter(|a| a["kind"] == "audit-seal").map(|a| a.to_string()).collect()
    };
    let segments = |p: &DevProxy| {
        let segment = |f: &std::path::PathBuf| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            name.len() == 20
                && name.bytes().all(|b| b.is_ascii_digit())
                && !f.to_string_lossy().contains("/checkpoints/")
        };
        p.stored("audit/").into_iter().filter(segment).count()
    };
    // (Shipping runs at start and then hourly: what is sealed now ships at
    // the stop.)
    let before = segments(&p);
    p.stop();
    let shipped = segments(&p);
    assert!(shipped > before, "the stop shipped the sealed segments ({before} before, {shipped} after)");
    let p = p.restarted(|text| text);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seals().len() < shipped {
        assert!(std::time::Instant::now() < deadline, "{} audit-seal alerts for {shipped} segments", seals().len());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let file = p.dir.join("seals.jsonl");
    std::fs::write(&file, seals().join("\n")).unwrap();
    let (ok, out) = audit(&p, &["verify", "--store", "--seals", file.to_str().unwrap()]);
    assert!(ok && out.contains("match the hashes the webhook received"), "{out}");
}

/// Each shipped segment's BLAKE3 also goes to the alert webhook, a place
/// root on the proxy host cannot rewrite. A stored trail cut short (its
/// newest segment deleted: what is left verifies on its own) is caught by
/// checking the store against the hashes the webhook received.
#[test]
fn the_webhook_keeps_each_shipped_segments_hash() {
    let hook = Webhook::start(0);
    let mut p = DevProxy::start().restarted(|text| {
        text.replace("[audit]\n", "[audit]\nsegment_events = 5\nship_secs = 1\n")
            + &format!("\n[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{}/\" }}\n", hook.port)
    });
    coffer(&p.writer(), &["init", "--repo", "dev/a"], None).ok();
    for i in 0..4 {
        coffer(&p.writer(), &["backup", "--repo", "dev/a", "-"], Some(format!("seal {i}").as_bytes())).ok();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seals = loop {
        let seals: Vec<String> =
            hook.received.lock().unwrap().iter().filter(|a| a["kind"] == "audit-seal").map(|a| a.to_string()).collect();
        if seals.len() >= 3 {
            break seals;
        }
        assert!(std::time::Instant::now() < deadline, "{} audit-seal alerts", seals.len());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    p.kill();
    let file = p.dir.join("seals.jsonl");
    std::fs::write(&file, seals.join("\n")).unwrap();
    let file = file.to_str().unwrap();
    let (ok, out) = audit(&p, &["verify", "--store", "--seals", file]);
    assert!(ok && out.contains("match the hashes the webhook received"), "{out}");

    // The trail cut at the newest announced segment: it is deleted from the
    // store, and so is anything shipped after it (each audit-seal alert is
    // itself an event, so shipping goes on while the proxy runs).
    let newest = seals.iter().filter_map(|s| s.split("audit segment ").nth(1)?.split(' ').next()).max().unwrap();
    let folder = p.objects().join(newest).parent().unwrap().to_path_buf();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) && *name >= *newest.rsplit('/').next().unwrap()
        {
            std::fs::remove_file(&path).unwrap();
        }
    }
    assert!(!p.objects().join(newest).exists());
    let (ok, _) = audit(&p, &["verify", "--store"]);
    assert!(ok, "a trail cut at a segment boundary verifies on its own");
    let (ok, out) = audit(&p, &["verify", "--store", "--seals", file]);
    assert!(!ok && out.contains(newest) && out.contains("is missing"), "{out}");
}
