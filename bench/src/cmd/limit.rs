//! `coffer-bench limit`: each stage alone on the same data, the ceiling
//! they put on the pipeline, and a real first backup against it.

use coffer_bench::run::timed;
use serde::Serialize;

use super::*;

#[derive(Serialize)]
pub(crate) struct LimitReport {
    pub(crate) data: String,
    #[serde(flatten)]
    pub(crate) limits: coffer_bench::limit::Limits,
    /// A real first backup of the same data through the dev proxy.
    pub(crate) first_backup_mb_per_sec: f64,
    /// That over the ceiling.
    pub(crate) fraction_of_ceiling: f64,
}

pub(crate) fn limit(bench: &Bench, input: Input) -> Result<LimitReport, String> {
    let (source, label) = source_file(input, &bench.work)?;
    // The dev proxy's certificates serve the TLS stage; it takes the real backup.
    let level = bench.zstd_level;
    let limits = coffer_bench::limit::measure_stages(&source, level, &bench.proxy_dir(), &bench.work)?;
    bench.init(REPO)?;
    let run = timed(bench.coffer("writer.toml").args(["backup", "--repo", REPO, "--json", "-"]), Some(&source), None)?;
    let first_backup_mb_per_sec = limits.bytes as f64 / 1e6 / run.secs.max(1e-9);
    let fraction_of_ceiling = first_backup_mb_per_sec / limits.ceiling;
    Ok(LimitReport { data: label, limits, first_backup_mb_per_sec, fraction_of_ceiling })
}

pub(crate) fn print_limit(r: &LimitReport) {
    let l = &r.limits;
    println!("{}: {:.0} MB, {} cores, zstd level {}", r.data, l.bytes as f64 / 1e6, l.cores, l.zstd_level);
    println!("{:<22} {:>10} {:>12}", "stage (one thread)", "MB/s", "CPU s/MB");
    for s in &l.stages {
        println!("{:<22} {:>10.1} {:>12.5}", s.stage, s.mb_per_sec, s.cpu_secs_per_mb);
    }
    println!(
        "ceilings (MB/s of stream): reader {:.1}, CPU {:.1}, store {:.1} -> {:.1}",
        l.reader_ceiling, l.cpu_ceiling, l.store_ceiling, l.ceiling
    );
    println!(
        "first backup end to end: {:.1} MB/s = {:.0}% of the ceiling",
        r.first_backup_mb_per_sec,
        100.0 * r.fraction_of_ceiling
    );
}
