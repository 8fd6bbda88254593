//! `coffer-bench catalog`: what the proxy's chunk catalog (SPEC §9) costs
//! at the sizes users have. One repository's catalog filled with N chunks,
//! as a repository of N chunks fills it, in this process: resident memory
//! before and after, the time to fill it, and dedup lookups per second.

use std::time::Instant;

use coffer_proto::{KeyId, Scope};
use coffer_proxy::bench::id;
use coffer_proxy::catalog::{Known, RepoCatalog, SealedBy, Uploader};
use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct CatalogReport {
    pub chunks: usize,
    /// Resident memory the filled catalog added, bytes.
    pub bytes: u64,
    pub bytes_per_chunk: f64,
    pub fill_secs: f64,
    pub lookups_per_sec: f64,
}

fn rss() -> Result<u64, String> {
    coffer_bench::procfs::sample(std::process::id()).map(|s| s.rss).ok_or_else(|| "cannot read /proc/self".into())
}

pub(crate) fn catalog(chunks: usize) -> Result<CatalogReport, String> {
    let now = 1_800_000_000;
    let owner = Scope::from_bytes([1; 8]);
    let who = Uploader { scope: owner, legacy: false };
    let before = rss()?;
    let start = Instant::now();
    let mut cat = RepoCatalog::default();
    for i in 0..chunks {
        let sealed_by = SealedBy::Key(KeyId::from_bytes([(i % 7) as u8; 16]));
        let known =
            Known { size: 1 << 20, retain_until: now + 86_400 * 37, sealed_by, owner: Some(owner), copy: false };
        cat.record(id(i), known);
    }
    let fill_secs = start.elapsed().as_secs_f64();
    let bytes = rss()?.saturating_sub(before);
    let start = Instant::now();
    let found = (0..chunks).filter(|&i| cat.present(&id(i), &who, now).is_some()).count();
    let lookups_per_sec = chunks as f64 / start.elapsed().as_secs_f64();
    if found != chunks || cat.len() != chunks {
        return Err(format!("the catalog lost entries: {found} of {chunks} found"));
    }
    Ok(CatalogReport {
        chunks,
        bytes,
        bytes_per_chunk: bytes as f64 / chunks.max(1) as f64,
        fill_secs,
        lookups_per_sec,
    })
}

pub(crate) fn print_catalog(r: &CatalogReport) {
    println!(
        "catalog of {} chunks: {:.1} MiB resident ({:.0} bytes per chunk), filled in {:.2} s, {:.2} M lookups/s",
        r.chunks,
        r.bytes as f64 / (1 << 20) as f64,
        r.bytes_per_chunk,
        r.fill_secs,
        r.lookups_per_sec / 1e6
    );
}

#[derive(Serialize)]
pub(crate) struct CommitReport {
    #[serde(flatten)]
    pub scale: coffer_proxy::bench::CommitScale,
    /// The process's peak resident memory: both proxies' state, the
    /// catalogs and the commit bodies.
    pub peak_rss: u64,
}

pub(crate) fn commit(chunks: usize) -> Result<CommitReport, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let scale = runtime.block_on(coffer_proxy::bench::commit_scale(chunks)).map_err(|e| e.to_string())?;
    let peak_rss =
        coffer_bench::procfs::sample(std::process::id()).map(|s| s.peak_rss).ok_or("cannot read /proc/self")?;
    Ok(CommitReport { scale, peak_rss })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

pub(crate) fn print_commit(r: &CommitReport) {
    println!(
        "commit of {} chunks: warm catalog {:.2} s (resident {:.0} MiB before, peak {:.0} MiB), \
         cold (fresh proxy, catalog from the {:.1} MiB index) {:.2} s (peak {:.0} MiB); process peak {:.0} MiB",
        r.scale.chunks,
        r.scale.warm_commit_secs,
        mib(r.scale.rss_before),
        mib(r.scale.warm_peak_rss),
        r.scale.index_bytes as f64 / (1 << 20) as f64,
        r.scale.cold_commit_secs,
        mib(r.scale.cold_peak_rss),
        mib(r.peak_rss)
    );
}
