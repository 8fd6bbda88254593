//! Metrics on their own listener, and alerts to a webhook.
use coffer_tests::{coffer, free_port, http_get, random_bytes, DevProxy};

/// Restarts `p` with `toml` appended to its config.
fn reconfigured(p: DevProxy, toml: &str) -> DevProxy {
    p.restarted(|text| format!("{text}\n{toml}\n"))
}

#[test]
fn prometheus_metrics_count_what_happened() {
    let port = free_port();
    let p = reconfigured(DevProxy::start(), &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""));
    coffer(&p.writer(), &["init", "--repo", "dev/m"], None).ok();
    let data = random_bytes("metrics", 3 << 20);
    // The cut points are keyed per repository, so the number of chunks
    // varies from run to run: take it from what each backup reports.
    let report = |run: coffer_tests::Run| run.json();
    let first = report(coffer(&p.writer(), &["backup", "--repo", "dev/m", "--json", "-"], Some(&data)));
    let second = report(coffer(&p.writer(), &["backup", "--repo", "dev/m", "--json", "-"], Some(&data)));
    let uploads = first["chunks_new"].as_f64().unwrap();
    assert!(uploads > first["chunks"].as_f64().unwrap(), "the stream's chunks and the manifest's: {first}");
    assert_eq!(second["chunks_new"], 0, "the same stream again uploads nothing: {second}");
    assert_eq!(second["bytes_new"], 0, "{second}");
    assert!(first["bytes_new"].as_u64() <= first["bytes_in"].as_u64(), "the manifest is not new stream bytes: {first}");
    let denied = coffer(&p.writer(), &["snapshots", "--repo", "dev/m"], None);
    assert_eq!(denied.code(), 1);

    let text = http_get(port, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let value = |needle: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(needle)).unwrap_or_else(|| panic!("no {needle} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("coffer_requests_total{action=\"put-chunk\",outcome=\"ok\",trust_domain=\"dev\"}") >= 3.0);
    assert_eq!(value("coffer_requests_total{action=\"list-snapshots\",outcome=\"denied\",trust_domain=\"dev\"}"), 1.0);
    assert_eq!(value("coffer_refusals_total{kind=\"denied\"}"), 1.0);
    assert_eq!(value("coffer_chunks_total{kind=\"new\"}"), uploads);
    // The second snapshot references every chunk the first uploaded.
    assert_eq!(value("coffer_chunks_total{kind=\"dedup\"}"), uploads, "the second backup deduplicated");
    assert!(value("coffer_bytes_in_total") >= data.len() as f64 * 0.99);
    assert!(value("coffer_last_snapshot_timestamp_seconds{repo=\"dev/m\"}") > 1.7e9);
    assert_eq!(value("coffer_snapshots_committed_total{repo=\"dev/m\"}"), 2.0);
    assert!(value("coffer_store_seconds_count{op=\"put\",ok=\"true\"}") >= 3.0);
    assert!(text.contains("coffer_audit_backlog"), "{text}");
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
}

use coffer_tests::{text_bytes, Webhook};

fn alert_events(p: &DevProxy, kind: &str) -> Vec<serde_json::Value> {
    p.audit_events()
        .into_iter()
        .filter(|e| e["action"] == "alert" && e["object"].as_str().is_some_and(|o| o.starts_with(&format!("{kind}:"))))
        .collect()
}

#[test]
fn a_ransomware_run_raises_the_alert_and_normal_nights_do_not() {
    let hook = Webhook::start(0);
    let p = reconfigured(
        DevProxy::start(),
        &format!("[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{}/coffer\" }}", hook.port),
    );
    coffer(&p.writer(), &["init", "--repo", "dev/pg"], None).ok();
    // 32 MiB: a night's edit changes a chunk or two (keyed cut points make
    // them up to a few MiB), a small share of the dump whatever the key;
    // at 8 MiB two unlucky nights could look half new and hide the attack.
    let mut dump = text_bytes(7, 32 << 20);
    coffer(&p.writer(), &["backup", "--repo", "dev/pg", "-"], Some(&dump)).ok();
    // Normal nights of several kinds, each judged once the detector has its
    // baseline of three snapshots: rows edited, rows appended, rows deleted
    // (everything after them shifts), rows inserted, and no change at all.
    type Change = fn(&mut Vec<u8>, u64);
    let nights: [(&str, Change); 7] = [
        ("edit", |d, n| d[(8 << 20)..(8 << 20) + 3000].copy_from_slice(&text_bytes(1000 + n, 3000))),
        ("edit", |d, n| d[(16 << 20)..(16 << 20) + 3000].copy_from_slice(&text_bytes(1000 + n, 3000))),
        ("append", |d, n| d.extend_from_slice(&text_bytes(2000 + n, 1 << 20))),
        ("delete", |d, _| drop(d.drain((12 << 20)..(12 << 20) + (512 << 10)))),
        ("unchanged", |_, _| {}),
        ("insert", |d, n| {
            let at = 20 << 20;
            d.splice(at..at, text_bytes(3000 + n, 200 << 10));
        }),
        ("edit", |d, n| d[(24 << 20)..(24 << 20) + 3000].copy_from_slice(&text_bytes(1000 + n, 3000))),
    ];
    for (n, (kind, change)) in nights.iter().enumerate() {
        change(&mut dump, n as u64);
        coffer(&p.writer(), &["backup", "--repo", "dev/pg", "-"], Some(&dump)).ok();
        assert!(
            alert_events(&p, "ransomware").is_empty() && alert_events(&p, "anomalous-snapshot").is_empty(),
            "night {n} ({kind}) raised an alert:\n{}",
            p.audit_log()
        );
    }

    // Then the same size of random bytes: the database was encrypted.
    coffer(&p.writer(), &["backup", "--repo", "dev/pg", "-"], Some(&random_bytes("ransom", dump.len()))).ok();
    let alert = hook.wait_for("ransomware", 15);
    assert_eq!(alert["repo"], "dev/pg");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert_events(&p, "ransomware").len(), 1);
}

#[test]
fn an_overdue_repo_alerts_once_and_a_down_webhook_gets_it_when_back() {
    let port = free_port(); // nothing listens here yet
    let config = format!(
        "[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{port}/hook\" }}\ncheck_secs = 1\n[[alerts.rpo]]\nrepos = \"dev/**\"\nsecs = 1"
    );
    let p = reconfigured(DevProxy::start(), &config);
    coffer(&p.writer(), &["init", "--repo", "dev/late"], None).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/late", "-"], Some(b"tonight's dump")).ok();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let raised = alert_events(&p, "overdue");
    assert_eq!(raised.len(), 1, "overdue must alert once, not every check: {raised:?}");
    let id = raised[0]["object"].as_str().unwrap().trim_start_matches("overdue:").to_string();

    // The proxy restarts while the webhook is still down: the alert is spooled.
    let dir = p.dir.clone();
    let tmp = p.into_tempdir();
    let spooled = std::fs::read_dir(dir.join("audit/alerts")).unwrap().count();
    assert!(spooled >= 1, "the undelivered alert must be on disk");
    let p = DevProxy::start_in(&dir).holding(tmp);
    let hook = Webhook::start(port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !hook.received.lock().unwrap().iter().any(|a| a["id"] == id.as_str()) {
        assert!(std::time::Instant::now() < deadline, "the spooled alert never arrived: {:?}", hook.kinds());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(p);
}

#[test]
fn alerts_test_command_reports_delivery() {
    let hook = Webhook::start(0);
    let p = reconfigured(
        DevProxy::start(),
        &format!("[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{}/\" }}", hook.port),
    );
    let run = |cfg: &std::path::Path| {
        std::process::Command::new(coffer_tests::bin("coffer-proxy"))
            .arg("--config")
            .arg(cfg)
            .args(["alerts", "test"])
            .output()
            .unwrap()
    };
    let ok = run(&p.dir.join("proxy.toml"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(hook.wait_for("test", 5)["severity"], "info");

    let path = p.dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(&hook.port.to_string(), &free_port().to_string());
    let down = p.dir.join("down.toml");
    std::fs::write(&down, text).unwrap();
    let failed = run(&down);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("not delivered"));
}

#[test]
fn scrub_finds_a_corrupted_and_a_missing_object() {
    let hook = Webhook::start(0);
    let p = reconfigured(
        DevProxy::start(),
        &format!(
            "[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{}/\" }}\n[scrub]\nobjects_per_run = 1000\ninterval_secs = 1",
            hook.port
        ),
    );
    coffer(&p.writer(), &["init", "--repo", "dev/s"], None).ok();
    let id =
        coffer(&p.writer(), &["backup", "--repo", "dev/s", "-"], Some(&random_bytes("scrub", 4 << 20))).last_line();
    let chunks = p.stored("dev/s/chunks");
    assert!(chunks.len() >= 3);
    let mut bytes = std::fs::read(&chunks[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&chunks[0], bytes).unwrap();
    std::fs::remove_file(&chunks[1]).unwrap();

    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = hook.received.lock().unwrap().clone();
        let about = |chunk: &str, problem: &str| {
            got.iter().any(|a| {
                let m = a["message"].as_str().unwrap_or("");
                a["kind"] == "scrub" && m.contains(chunk) && m.contains(problem) && m.contains(&id)
            })
        };
        if about(&name(&chunks[0]), "does not match") && about(&name(&chunks[1]), "is missing") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scrub alerts missing: {got:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(p.audit_log().contains("\"action\":\"scrub\""));
}

/// The store operations of kind `op` the proxy has made so far.
fn store_ops(port: u16, op: &str) -> f64 {
    let text = http_get(port, "/metrics");
    let needle = format!("coffer_store_seconds_count{{op=\"{op}\",ok=\"true\"}}");
    text.lines().find(|l| l.starts_with(&needle)).map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn a_listing_reads_each_index_segment_once_and_commits_reuse_them() {
    let port = free_port();
    let p = reconfigured(DevProxy::start(), &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""));
    coffer(&p.writer(), &["init", "--repo", "dev/many"], None).ok();
    for i in 0..6 {
        coffer(&p.writer(), &["backup", "--repo", "dev/many", "-"], Some(format!("night {i}").as_bytes())).ok();
    }
    // Each listing fetches every root (and its data key) for the agent; the
    // index segments, written once, the proxy reads only the first time.
    let before = store_ops(port, "get");
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/many", "--json"], None).json();
    assert_eq!(listed.as_array().unwrap().len(), 6);
    let first = store_ops(port, "get") - before;
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/many", "--json"], None).json();
    assert_eq!(listed.as_array().unwrap().len(), 6);
    let second = store_ops(port, "get") - before - first;
    // The commits already read them (for the anomaly detector's history),
    // so neither listing reads an index segment: the config, 6 roots and 6
    // data keys each (19 if the segments were read again).
    assert_eq!((first, second), (13.0, 13.0), "store GETs of two listings");
}
