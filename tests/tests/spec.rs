//! docs/SPEC.md §13 lists the named constants; this reads the table and
//! checks every row against the code, so the spec cannot drift from it.

use std::collections::BTreeMap;
use std::time::Duration;

/// A constant's value in base units: bytes and counts as they are, times
/// in milliseconds.
fn code_values() -> BTreeMap<&'static str, u64> {
    let ms = |d: Duration| d.as_millis() as u64;
    let secs = |s: u64| s * 1000;
    use coffer_agent::backup as b;
    use coffer_proto as p;
    use coffer_proxy as x;
    BTreeMap::from([
        ("CHUNK_MIN", u64::from(p::CHUNK_MIN)),
        ("CHUNK_AVG", u64::from(p::CHUNK_AVG)),
        ("CHUNK_MAX", u64::from(p::CHUNK_MAX)),
        ("ENVELOPE_MAX", p::ENVELOPE_MAX as u64),
        ("HEADER_LEN", p::envelope::HEADER_LEN as u64),
        ("TAG_LEN", p::envelope::TAG_LEN as u64),
        ("CHUNKS_PER_DATA_KEY", p::keys::CHUNKS_PER_DATA_KEY),
        ("ROOT_MAX", p::snapshot::ROOT_MAX as u64),
        ("REPO_NAME_MAX", p::REPO_NAME_MAX as u64),
        ("REPO_SEGMENTS_MAX", p::REPO_SEGMENTS_MAX as u64),
        ("DEFAULT_ZSTD_LEVEL", p::repo::DEFAULT_ZSTD_LEVEL as u64),
        ("LEGACY_CHUNK_MIN_FLOOR", u64::from(p::repo::LEGACY_CHUNK_MIN_FLOOR)),
        ("LEGACY_CHUNK_AVG_FLOOR", u64::from(p::repo::LEGACY_CHUNK_AVG_FLOOR)),
        ("MISSING_IDS_MAX", p::endpoint::MISSING_IDS_MAX as u64),
        ("SMALL_BODY_MAX", p::endpoint::SMALL_BODY_MAX as u64),
        ("COMMIT_BYTES_PER_SEC", p::endpoint::COMMIT_BYTES_PER_SEC as u64),
        ("SEEN_SLACK", p::snapshot::SEEN_SLACK),
        ("STORED_SURGE_FACTOR", x::monitor::detect::STORED_SURGE_FACTOR as u64),
        ("STORED_SURGE_MIN", x::monitor::detect::STORED_SURGE_MIN),
        ("PACK_SNAPSHOTS_MAX", p::snapshot::pack::PACK_SNAPSHOTS_MAX as u64),
        ("PACK_BYTES_MAX", p::snapshot::pack::PACK_BYTES_MAX as u64),
        ("KEY_RECORD_MAX", p::snapshot::pack::KEY_RECORD_MAX as u64),
        ("PACK_MIN", x::api::packs::PACK_MIN as u64),
        ("PACK_LIFE_MIN_SECS", secs(x::api::packs::PACK_LIFE_MIN_SECS)),
        ("PACK_SPAN_SECS", secs(x::api::packs::PACK_SPAN_SECS)),
        ("LISTING_ROOTS_MAX", x::api::packs::LISTING_ROOTS_MAX as u64),
        ("PACKED_PER_RUN", x::api::packs::PACKED_PER_RUN as u64),
        ("PACK_ROOT_MAX", x::api::packs::PACK_ROOT_MAX as u64),
        ("PACK_KEY_MAX", x::api::packs::PACK_KEY_MAX as u64),
        ("EPOCH_CLOCK_SKEW_MS", x::api::repo::EPOCH_CLOCK_SKEW_MS),
        ("FREE_FAILURES", x::access::mfa::FREE_FAILURES as u64),
        ("LOCKOUT_FIRST_SECS", secs(x::access::mfa::LOCKOUT_FIRST_SECS)),
        ("LOCKOUT_MAX_SECS", secs(x::access::mfa::LOCKOUT_MAX_SECS)),
        ("FAILURE_WINDOW_SECS", secs(x::access::mfa::FAILURE_WINDOW_SECS)),
        ("LONGEST_LOCK_SECS", secs(x::store::LONGEST_LOCK_SECS)),
        ("LATEST_RETAIN_UNTIL", secs(x::store::LATEST_RETAIN_UNTIL)),
        ("CHUNK_QUEUE", b::CHUNK_QUEUE as u64),
        ("DEDUP_BATCH_MAX", b::DEDUP_BATCH_MAX as u64),
        ("DEDUP_BATCH_BYTES", b::DEDUP_BATCH_BYTES as u64),
        ("DEDUP_BATCH_LINGER", ms(b::DEDUP_BATCH_LINGER)),
        ("DEFAULT_UPLOADS_IN_FLIGHT", coffer_agent::config::DEFAULT_UPLOADS_IN_FLIGHT as u64),
        ("PIPELINE_BYTES", b::PIPELINE_BYTES as u64),
        ("DEDUP_QUERIES_IN_FLIGHT", b::DEDUP_QUERIES_IN_FLIGHT as u64),
        ("FETCH_BYTES_IN_FLIGHT", coffer_agent::restore::FETCH_BYTES_IN_FLIGHT),
        ("AUDIT_QUEUE", x::audit::AUDIT_QUEUE as u64),
        ("MAX_CONNECTIONS", x::server::MAX_CONNECTIONS as u64),
        ("MAX_STREAMS_PER_CONNECTION", u64::from(x::server::MAX_STREAMS_PER_CONNECTION)),
        ("ADMIN_RESERVED", x::server::conns::ADMIN_RESERVED as u64),
        ("REFUSALS_AUDITED_PER_MINUTE", u64::from(x::server::conns::REFUSALS_AUDITED_PER_MINUTE)),
        ("SHUTDOWN_GRACE", ms(x::server::SHUTDOWN_GRACE)),
        ("DEFAULT_COMMIT_MAX_BYTES", x::config::DEFAULT_COMMIT_MAX_BYTES as u64),
    ])
}

/// A value as SPEC writes it, in base units; `known` resolves a reference
/// to another constant (`` `CHUNK_MAX` + 52 ``).
fn parse_value(text: &str, known: &BTreeMap<String, u64>) -> Option<u64> {
    let text = text.trim();
    if let Some((a, b)) = text.split_once(" + ") {
        return Some(parse_value(a, known)? + parse_value(b, known)?);
    }
    if let Some(name) = text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
        return known.get(name).copied();
    }
    if let Some((base, exp)) = text.split_once('^') {
        return base.parse::<u64>().ok()?.checked_pow(exp.parse().ok()?);
    }
    if let Some(date) = text.strip_suffix('Z') {
        return Some(unix_secs(date)? * 1000);
    }
    let (number, unit) = text.split_once(' ').map_or((text, ""), |(n, u)| (n, u));
    // "65 536": a thin space between thousands.
    let (number, unit) = match unit.parse::<u64>() {
        Ok(_) => (format!("{number}{unit}"), ""),
        Err(_) => (number.to_string(), unit),
    };
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "day" | "days" => 86_400_000,
        "years" => 365 * 86_400_000,
        _ => return None,
    };
    Some(n * scale)
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) as seconds since the Unix epoch.
fn unix_secs(date: &str) -> Option<u64> {
    let (day, time) = date.split_once('T')?;
    let d: Vec<i64> = day.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]).ok()
}

#[test]
fn spec_section_13_matches_the_code() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SPEC.md")).unwrap();
    let section = spec.split("## 13. Named constants").nth(1).expect("SPEC has §13");
    let code = code_values();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        // Names: each `NAME`; `A` (`B`) means the code calls it B.
        let mut names = Vec::new();
        for part in cells[0].split([',', '/']) {
            let quoted: Vec<&str> = part.split('`').skip(1).step_by(2).collect();
            names.push(*quoted.last().unwrap_or_else(|| panic!("no name in {row}")));
        }
        let values: Vec<&str> =
            if names.len() == 1 { vec![cells[1]] } else { cells[1].split([',', '/']).map(str::trim).collect() };
        assert_eq!(names.len(), values.len(), "{row}: as many values as names");
        for (name, text) in names.iter().zip(values) {
            let Some(&want) = code.get(name) else { panic!("SPEC §13 names {name}, which this test does not know") };
            let got = parse_value(text, &seen).unwrap_or_else(|| panic!("{name}: cannot read {text:?}"));
            assert_eq!(got, want, "SPEC §13 says {name} is {text}; the code says {want} (in bytes, counts or ms)");
            seen.insert(name.to_string(), got);
        }
    }
    let missing: Vec<_> = code.keys().filter(|n| !seen.contains_key(**n)).collect();
    assert!(missing.is_empty(), "constants missing from SPEC §13: {missing:?}");
}
