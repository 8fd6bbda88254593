//! The compliance report as one self-contained HTML page: no network, no
//! external file, readable by someone who is not an engineer. Charts are
//! inline SVG: size per snapshot with the new part marked, and snapshot
//! times against the RPO.

use std::fmt::Write as _;

use crate::compliance::report::{ComplianceReport, RepoReport};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", units[u])
}

fn badge(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!("<span class=\"ok\">{yes}</span>")
    } else {
        format!("<span class=\"bad\">{no}</span>")
    }
}

/// Bars of bytes read per snapshot, the new part darker.
fn size_chart(r: &RepoReport) -> String {
    let n = r.history.len().max(1);
    let max = r.history.iter().map(|p| p.bytes_in).max().unwrap_or(1).max(1) as f64;
    let (w, h, bw) = (600.0, 120.0, (600.0 / n as f64).min(40.0));
    let mut svg =
        format!("<svg class=\"chart\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"snapshot sizes\">", h + 20.0);
    for (i, p) in r.history.iter().enumerate() {
        let x = i as f64 * bw;
        let total = p.bytes_in as f64 / max * h;
        let new = p.bytes_new.min(p.bytes_in) as f64 / max * h;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{total:.1}\" class=\"dedup\"><title>{}: {} read, {} new</title></rect><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{new:.1}\" class=\"new\"/>",
            h - total,
            bw * 0.8,
            when(p.committed),
            size(p.bytes_in),
            size(p.bytes_new),
            h - new,
            bw * 0.8
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Gaps between consecutive snapshots against the RPO line.
fn rpo_chart(r: &RepoReport, now: u64) -> String {
    let Some(rpo) = r.rpo_secs else { return String::new() };
    let mut times: Vec<u64> = r.history.iter().map(|p| p.committed).collect();
    times.push(now);
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    let max = gaps.iter().copied().max().unwrap_or(1).max(rpo) as f64 * 1.1;
    let (w, h) = (600.0, 80.0);
    let bw = (w / gaps.len().max(1) as f64).min(40.0);
    let mut svg =
        format!("<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"time between snapshots\">");
    for (i, g) in gaps.iter().enumerate() {
        let bh = *g as f64 / max * h;
        let class = if *g <= rpo { "ok-bar" } else { "bad-bar" };
        let _ = write!(svg, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" class=\"{class}\"><title>{g} s</title></rect>", i as f64 * bw, h - bh, bw * 0.8);
    }
    let y = h - rpo as f64 / max * h;
    let _ = write!(svg, "<line x1=\"0\" x2=\"{w}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"rpo\"/></svg>");
    svg
}

pub fn render(report: &ComplianceReport) -> String {
    let mut body = String::new();
    let missed = report.repos.iter().filter(|r| r.rpo_met == Some(false)).count();
    let alerts: usize = report.repos.iter().map(|r| r.alerts.len()).sum();
    let _ = write!(
        body,
        "<h1>Backup compliance report</h1><p class=\"meta\">Proxy <b>{}</b>, generated {}. Store: {} {} (locks: {}). Audit trail: {}.</p>\
         <p class=\"summary\">{} repositories; {} past their recovery point objective; {} alerts since {}.</p>",
        esc(&report.proxy_id),
        when(report.generated),
        report.store.kind,
        esc(report.store.bucket.as_deref().unwrap_or("")),
        esc(&report.store.lock_mode),
        badge(report.audit_chain == "ok", "intact", &esc(&report.audit_chain)),
        report.repos.len(),
        missed,
        alerts,
        when(report.since)
    );
    for r in &report.repos {
        let class = r.classification.map_or("unclassified".to_string(), |c| format!("{c:?}").to_lowercase());
        let rpo = match (r.rpo_secs, r.rpo_met) {
            (Some(s), Some(met)) => format!("{} (RPO {s} s)", badge(met, "on time", "overdue")),
            _ => "no RPO set".into(),
        };
        let _ = write!(
            body,
            "<section><h2>{}</h2><table>\
             <tr><th>Classification</th><td>{class}</td><th>Retention</th><td>{} days</td></tr>\
             <tr><th>Last snapshot</th><td>{}</td><th>Recovery point</th><td>{rpo}</td></tr>\
             <tr><th>Snapshots</th><td>{}</td><th>Data read</th><td>{}</td></tr>\
             <tr><th>Deduplicated</th><td>{:.0}%</td><th>Stored per new byte</th><td>{:.2}</td></tr>\
             <tr><th>Residency</th><td colspan=\"3\">{}</td></tr>\
             <tr><th>Legal holds</th><td colspan=\"3\">{}</td></tr>\
             <tr><th>Schedule</th><td colspan=\"3\">{}</td></tr>\
             <tr><th>Committed, now missing</th><td colspan=\"3\">{}</td></tr></table>",
            esc(&r.repo),
            r.retention_days,
            r.last_snapshot.map_or("never".into(), when),
            r.snapshots,
            size(r.bytes_in),
            r.dedup_ratio * 100.0,
            r.compression_ratio,
            badge(r.residency == "ok", "within its regions", &esc(&r.residency)),
            if r.legal_holds.is_empty() { "none".into() } else { esc(&r.legal_holds.join(", ")) },
            schedule(r),
            badge(
                r.missing_snapshots.is_empty(),
                "none: every snapshot the audit trail committed is stored",
                &esc(&r.missing_snapshots.join(", "))
            ),
        );
        body.push_str("<h3>Encryption keys</h3><ul>");
        for k in &r.keks {
            let state = match &k.state {
                Some(s) => format!(
                    "{}, rotation {}",
                    badge(s.status == "ok", "usable", &esc(&s.status)),
                    s.rotation.map_or("not reported".into(), |on| badge(on, "on", "off"))
                ),
                None => esc(k.state_error.as_deref().unwrap_or("unknown")),
            };
            let _ = write!(body, "<li><code>{}</code>: {state}</li>", esc(&k.kek));
        }
        body.push_str("</ul>");
        let _ = write!(body, "<h3>Size per snapshot</h3><p class=\"legend\"><span class=\"key new\"></span> new <span class=\"key dedup\"></span> already stored</p>{}", size_chart(r));
        let rpo_chart = rpo_chart(r, report.generated);
        if !rpo_chart.is_empty() {
            let _ =
                write!(body, "<h3>Time between snapshots</h3><p class=\"legend\">the line is the RPO</p>{rpo_chart}");
        }
        if !r.alerts.is_empty() {
            body.push_str("<h3>Alerts</h3><ul>");
            for a in &r.alerts {
                let _ =
                    write!(body, "<li>{} <b>{}</b>: {}</li>", when(a.time_ms / 1000), esc(&a.kind), esc(&a.message));
            }
            body.push_str("</ul>");
        }
        body.push_str("</section>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <title>Coffer compliance report</title><style>{CSS}</style></head><body>{body}\
         <script>document.body.dataset.rendered = \"yes\";</script></body></html>\n"
    )
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}.meta,.legend{color:#555}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eee}th{color:#555;font-weight:normal}\
.ok{color:#176f2c;font-weight:bold}.bad{color:#b00020;font-weight:bold}.chart{width:100%;height:auto;background:#fafafa}\
.dedup{fill:#9db8d9}.new{fill:#1f4e8c}.ok-bar{fill:#7cbf8e}.bad-bar{fill:#d9534f}.rpo{stroke:#b00020;stroke-dasharray:4 3}\
.key{display:inline-block;width:.8em;height:.8em;margin:0 .3em}.key.new{background:#1f4e8c}.key.dedup{background:#9db8d9}";

/// A repository's schedule in a line: its rules, how many snapshots they
/// keep, and when the next one they let go may be deleted.
fn schedule(r: &super::report::RepoReport) -> String {
    let Some(rules) = &r.schedule else { return "none: retention only".into() };
    let parts: Vec<String> = [
        ("last", rules.keep_last),
        ("hourly", rules.keep_hourly),
        ("daily", rules.keep_daily),
        ("weekly", rules.keep_weekly),
        ("monthly", rules.keep_monthly),
        ("yearly", rules.keep_yearly),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .chain((rules.keep_within_secs > 0).then(|| format!("within {} days", rules.keep_within_secs / 86_400)))
    .collect();
    let next = r.next_expiry.map_or("nothing to let go".into(), |t| format!("next expiry {}", when(t)));
    format!("{}; keeps {}; {next}", esc(&parts.join(", ")), r.kept.unwrap_or(0))
}
