use super::*;
use crate::store::ObjectStore as _;

fn draft(action: &'static str) -> Draft {
    Draft { identity: Some("w".into()), peer: "127.0.0.1:1".into(), action, ..Default::default() }
}

fn spool(dir: &Path, segment_events: u64) -> SpoolConfig {
    SpoolConfig {
        path: dir.join("audit.jsonl"),
        segment_events,
        segment_secs: 3600,
        checkpoint_secs: 0,
        signing_key: dir.join("signing.key"),
    }
}

fn record_all(cfg: &SpoolConfig, actions: &[&'static str]) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (log, w) = AuditLog::open(cfg, "p1").unwrap();
    for a in actions {
        rt.block_on(log.record(draft(a), true)).unwrap();
    }
    drop(log);
    w.join();
}

fn check(cfg: &SpoolConfig) -> Result<Report, ChainBreak> {
    let segments = segment::read_local(&cfg.sealed_dir()).unwrap();
    let live = std::fs::read_to_string(&cfg.path).unwrap_or_default();
    let key = hex::decode(std::fs::read_to_string(cfg.signing_key.with_extension("pub")).unwrap().trim()).unwrap();
    verify(&segments, Some(&live), Some(&key))
}

#[test]
fn chain_seals_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 3);
    record_all(&cfg, &["a", "b", "c", "d"]);
    record_all(&cfg, &["e", "f", "g"]);
    let report = check(&cfg).unwrap();
    assert_eq!((report.events, report.segments, report.last_seq), (7, 2, 7));
    assert_eq!(std::fs::read_to_string(&cfg.path).unwrap().lines().count(), 1, "event 7 is still live");
}

/// A crash after a segment was sealed and before the live file was cut:
/// on reopening, the live file still holds the sealed events (and a torn
/// half line). They must be dropped, not chained a second time.
#[test]
fn a_crash_between_sealing_and_truncating_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 3);
    record_all(&cfg, &["a", "b", "c"]);
    assert_eq!(std::fs::read_to_string(&cfg.path).unwrap(), "", "sealed at three events");
    let sealed = segment::read_local(&cfg.sealed_dir()).unwrap();
    assert_eq!(sealed.len(), 1);
    // The live file as it was just before the cut, plus a torn line.
    let before_cut = segment::parse(&sealed[0].1).unwrap().events_text.to_string();
    assert_eq!(before_cut.lines().count(), 3);
    std::fs::write(&cfg.path, format!("{before_cut}{{\"seq\":4,\"ti")).unwrap();

    record_all(&cfg, &["d"]);
    let live = std::fs::read_to_string(&cfg.path).unwrap();
    assert_eq!(live.lines().count(), 1, "only event 4 is live: {live}");
    let report = check(&cfg).unwrap();
    assert_eq!((report.events, report.segments, report.last_seq), (4, 1, 4));
    let fourth: Event = serde_json::from_str(live.lines().next().unwrap()).unwrap();
    assert_eq!((fourth.seq, fourth.action.as_str()), (4, "d"), "chained after the sealed events");
}

#[test]
fn edits_deletions_reorders_and_truncation_are_named_by_seq() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 1000);
    record_all(&cfg, &["a", "b", "c", "d", "e"]);
    let good = std::fs::read_to_string(&cfg.path).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let cases = [
        ("edit", good.replacen("\"action\":\"c\"", "\"action\":\"x\"", 1), 3),
        ("delete", [lines[0], lines[1], lines[3], lines[4]].join("\n") + "\n", 3),
        ("reorder", [lines[0], lines[2], lines[1], lines[3], lines[4]].join("\n") + "\n", 3),
    ];
    for (what, text, seq) in cases {
        std::fs::write(&cfg.path, text).unwrap();
        let brk = check(&cfg).unwrap_err();
        assert_eq!(brk.seq, seq, "{what}: {brk}");
    }
    std::fs::write(&cfg.path, &good).unwrap();
    assert_eq!(check(&cfg).unwrap().events, 5);
}

#[test]
fn sealed_segments_catch_rewrites_truncation_missing_segments_and_forged_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 2);
    record_all(&cfg, &["a", "b", "c", "d", "e", "f"]);
    let sealed = cfg.sealed_dir();
    let names: Vec<String> = segment::read_local(&sealed).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 3);
    let second = sealed.join(&names[1]);
    let good = std::fs::read_to_string(&second).unwrap();

    // Truncated: the seal line cut off.
    let no_seal: String = good.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&second, no_seal).unwrap();
    assert_eq!(check(&cfg).unwrap_err().seq, 3);

    // Missing segment.
    std::fs::remove_file(&second).unwrap();
    let brk = check(&cfg).unwrap_err();
    assert_eq!(brk.seq, 3, "{brk}");
    assert!(brk.reason.contains("missing"), "{brk}");

    // Bad signature: a seal signed by another key.
    std::fs::write(&second, &good).unwrap();
    let p = segment::parse(&good).unwrap();
    let other = signing_key(&dir.path().join("other.key")).unwrap();
    let resealed_dir = dir.path().join("reseal");
    std::fs::create_dir_all(&resealed_dir).unwrap();
    segment::write_sealed(&resealed_dir, &p.header, p.events_text, &other).unwrap();
    let forged = std::fs::read_to_string(resealed_dir.join(&names[1])).unwrap();
    std::fs::write(&second, forged).unwrap();
    let brk = check(&cfg).unwrap_err();
    assert!(brk.reason.contains("signature"), "{brk}");

    std::fs::write(&second, &good).unwrap();
    assert_eq!(check(&cfg).unwrap().events, 6);
}

#[test]
fn torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 1000);
    record_all(&cfg, &["put-key"]);
    let mut f = OpenOptions::new().append(true).open(&cfg.path).unwrap();
    f.write_all(b"{\"seq\":2,\"ti").unwrap();
    drop(f);
    record_all(&cfg, &["commit"]);
    assert_eq!(check(&cfg).unwrap().events, 2);
}

/// A trail of one sealed segment and a live log, with its public key.
fn real_trail() -> (String, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = spool(dir.path(), 3);
    record_all(&cfg, &["a", "b", "c", "d", "e"]);
    let (segments, live) = local_trail(&cfg).unwrap();
    let key = hex::decode(std::fs::read_to_string(cfg.signing_key.with_extension("pub")).unwrap().trim()).unwrap();
    assert_eq!(segments.len(), 1);
    (segments[0].1.clone(), live, key)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]

    /// The verifier reads what the store gives back, so it must never
    /// panic, and no change to any byte of a sealed segment or the live log
    /// goes unnoticed: every position, flipped with a random mask. The
    /// libFuzzer target `audit_verify` (proxy/fuzz) runs the same verifier
    /// on arbitrary input.
    #[test]
    fn every_flipped_byte_is_caught(x in 1u8..) {
        static TRAIL: std::sync::OnceLock<(String, String, Vec<u8>)> = std::sync::OnceLock::new();
        let (segment, live, key) = TRAIL.get_or_init(real_trail);
        assert!(verify(&[("s".into(), segment.clone())], Some(live), Some(key)).is_ok());
        let whole = format!("{segment}{live}").into_bytes();
        for i in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[i] ^= x;
            let (seg, liv) = bytes.split_at(segment.len());
            let (seg, liv) = (String::from_utf8_lossy(seg).into_owned(), String::from_utf8_lossy(liv).into_owned());
            let verdict = verify(&[("s".into(), seg)], Some(&liv), Some(key));
            proptest::prop_assert!(verdict.is_err(), "byte {i} flipped with {x:#04x} went unnoticed");
        }
    }
}

/// A checkpoint names the newest event on disk; the trail must reach every
/// checkpoint with that very event, and only the audit key's signature, on
/// a checkpoint stored under its own seq, counts.
#[test]
fn checkpoints_vouch_for_the_newest_event_and_catch_a_cut_or_rewritten_trail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig { checkpoint_secs: 1, ..spool(dir.path(), 1000) };
    record_all(&cfg, &["a", "b", "c"]);
    record_all(&cfg, &["d"]);
    let mut names: Vec<String> = std::fs::read_dir(cfg.sealed_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(checkpoint::SUFFIX))
        .collect();
    names.sort();
    // The first event is checkpointed at once, and the newest at the end
    // (a reopened spool checkpoints at once too); more if a second passed.
    assert_eq!(names.first(), Some(&format!("{}.ckpt", segment::name(1))));
    assert_eq!(names.last(), Some(&format!("{}.ckpt", segment::name(4))));
    let stored: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let key = format!("audit/p1/checkpoints/{}", n.trim_end_matches(".ckpt"));
            (key, std::fs::read_to_string(cfg.sealed_dir().join(n)).unwrap())
        })
        .collect();
    let key = hex::decode(std::fs::read_to_string(cfg.signing_key.with_extension("pub")).unwrap().trim()).unwrap();
    let all = checkpoint::open_all(&stored, &key).unwrap();
    let live = std::fs::read_to_string(&cfg.path).unwrap();
    let hashes = verify::hashes_at(&[], Some(&live), &(1..=4).collect());
    assert_eq!(hashes.len(), 4, "every event's hash, in one pass");
    let hash_at = |seq| hashes.get(&seq).cloned();
    assert_eq!((all[0].seq, Some(all[0].hash.clone())), (4, hash_at(4)), "newest first");
    assert_eq!(checkpoint::check(&all, 4, hash_at), None, "the whole trail");
    let cut = checkpoint::check(&all, 3, hash_at).unwrap();
    assert!(cut.contains("truncated") && cut.contains("event 4"), "{cut}");
    let rewritten =
        checkpoint::check(&all, 4, |seq| if seq == 1 { Some("0".repeat(64)) } else { hash_at(seq) }).unwrap();
    assert!(
        rewritten.contains("rewritten") && rewritten.contains("event 1 "),
        "an older checkpoint counts too: {rewritten}"
    );

    // Root on the proxy host holds the key: it cuts the trail to event 3
    // and adds a checkpoint of event 3 under a name that sorts last. The
    // real checkpoint of event 4 is still read.
    let signing = signing_key(&cfg.signing_key).unwrap();
    let forged_dir = tempfile::tempdir().unwrap();
    let three = checkpoint::Checkpoint { seq: 3, hash: hash_at(3).unwrap(), ..all[0].clone() };
    checkpoint::write(forged_dir.path(), &three, &signing).unwrap();
    let forged_text = std::fs::read_to_string(forged_dir.path().join(format!("{}.ckpt", segment::name(3)))).unwrap();
    let mut with_forged = stored.clone();
    with_forged.push(("audit/p1/checkpoints/99999999999999999999".into(), forged_text.clone()));
    let e = checkpoint::open_all(&with_forged, &key).unwrap_err();
    assert!(matches!(e, checkpoint::CheckpointError::Misnamed { seq: 3, .. }), "{e}");
    with_forged.pop();
    with_forged.push((format!("audit/p1/checkpoints/{}", segment::name(3)), forged_text));
    let all = checkpoint::open_all(&with_forged, &key).unwrap();
    assert!(checkpoint::check(&all, 3, hash_at).unwrap().contains("truncated"), "the real newest one still counts");
    // Its own checkpoint dated past year 9999 is reported, not a panic.
    let far = checkpoint::Checkpoint { time_ms: u64::MAX, ..all[0].clone() };
    assert!(checkpoint::check(&[far], 3, hash_at).unwrap().contains("9999-12-31"));

    // Signed by another key, or spelt otherwise: not a checkpoint.
    let other = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let other = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(other.as_ref()).unwrap();
    checkpoint::write(forged_dir.path(), &checkpoint::Checkpoint { seq: 9, ..three }, &other).unwrap();
    let foreign = std::fs::read_to_string(forged_dir.path().join(format!("{}.ckpt", segment::name(9)))).unwrap();
    assert!(matches!(checkpoint::open("f", &foreign, &key), Err(checkpoint::CheckpointError::Signature(_))));
    let respelt = stored[0].1.replacen("{\"checkpoint\":{", "{\"checkpoint\": {", 1);
    assert!(matches!(checkpoint::open("r", &respelt, &key), Err(checkpoint::CheckpointError::Unreadable(_))));
}

/// A restarted proxy checkpoints its newest event again, at another time:
/// that ships. A checkpoint of another event under a stored seq (a second
/// proxy with this proxy_id) is an error, and holds back neither the other
/// checkpoints nor the segments.
#[test]
fn a_checkpoint_again_after_a_restart_ships_and_a_clash_holds_nothing_back() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = crate::store::FsStore::open(store_dir.path()).unwrap();
    let cfg = SpoolConfig { checkpoint_secs: 1, ..spool(dir.path(), 2) };
    let ship = || rt.block_on(ship::ship_pending(&cfg.sealed_dir(), &store, "p1", crate::unix_now() + 3600));
    record_all(&cfg, &["a"]);
    assert!(ship().failed.is_none());
    let stored = |seq: u64| rt.block_on(store.get(&format!("audit/p1/checkpoints/{}", segment::name(seq)))).unwrap();
    let first = stored(1).expect("checkpoint of event 1 shipped");
    // Reopened with no new event: checkpoint 1 is written again, and ships.
    record_all(&cfg, &[]);
    assert!(ship().failed.is_none());
    assert_eq!(stored(1), Some(first.clone()), "the stored one stays");
    assert_eq!(ship::unshipped(&cfg.sealed_dir()), 0, "nothing left behind");

    // Another event under seq 1; then events 2 and 3, which seal events 1
    // and 2 into a segment and are checkpointed.
    let other = String::from_utf8(first.to_vec()).unwrap();
    let hash =
        serde_json::from_str::<serde_json::Value>(&other).unwrap()["checkpoint"]["hash"].as_str().unwrap().to_string();
    let clash = other.replace(&hash, &"0".repeat(64));
    std::fs::write(cfg.sealed_dir().join(format!("{}.ckpt", segment::name(1))), clash).unwrap();
    record_all(&cfg, &["b", "c"]);
    let pass = ship();
    assert!(matches!(pass.failed, Some(ship::ShipError::Clash(_))), "{pass:?}");
    assert_eq!(pass.shipped.len(), 1, "the segment shipped before the clash is reported, to be announced");
    assert!(
        rt.block_on(store.get(&format!("audit/p1/{}", segment::name(1)))).unwrap().is_some(),
        "the segment shipped"
    );
    assert!(stored(3).is_some(), "the later checkpoint shipped");
    assert_eq!(ship::unshipped(&cfg.sealed_dir()), 1, "the clashing one stays, for the alert");
}
