//! Metrics on their own listener, and alerts to a webhook.

use std::io::{Read as _, Write as _};

use coffer_tests::{coffer, random_bytes, DevProxy};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Restarts `p` with `toml` appended to its config.
fn reconfigured(p: DevProxy, toml: &str) -> DevProxy {
    let dir = p.dir.clone();
    let tmp = p.into_tempdir();
    let path = dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{toml}\n")).unwrap();
    DevProxy::start_in(&dir).holding(tmp)
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn prometheus_metrics_count_what_happened() {
    let port = free_port();
    let p = reconfigured(DevProxy::start(), &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""));
    coffer(&p.writer(), &["init", "--repo", "dev/m"], None).ok();
    let data = random_bytes("metrics", 3 << 20);
    coffer(&p.writer(), &["backup", "--repo", "dev/m", "-"], Some(&data)).ok();
    coffer(&p.writer(), &["backup", "--repo", "dev/m", "-"], Some(&data)).ok();
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
    assert!(value("coffer_chunks_total{kind=\"new\"}") >= 3.0);
    assert!(value("coffer_chunks_total{kind=\"dedup\"}") >= 3.0, "the second backup deduplicated");
    assert!(value("coffer_bytes_in_total") >= data.len() as f64 * 0.99);
    assert!(value("coffer_last_snapshot_timestamp_seconds{repo=\"dev/m\"}") > 1.7e9);
    assert!(value("coffer_store_seconds_count{op=\"put\",ok=\"true\"}") >= 3.0);
    assert!(text.contains("coffer_audit_backlog"), "{text}");
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
}
