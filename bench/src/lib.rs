//! Coffer's benchmark harness: end-to-end throughput, CPU and memory of the
//! real binaries (`coffer-bench e2e`), side by side with restic and borg
//! when they are installed. Speed is measured here, never
//! asserted in tests. See docs/performance.md.

pub mod data;
pub mod limit;
pub mod peers;
pub mod procfs;
pub mod relay;
pub mod run;

/// Parses a size such as `512MiB`, `2GiB`, `100MB` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("size {s:?}: expected a number, then B, KiB, MiB, GiB, MB or GB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("size {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
