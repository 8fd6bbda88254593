//! `coffer-bench e2e`: first backup, unchanged re-backup, backup after a
//! 1% edit, restore; with `--peers`, restic and borg on the same data.

use coffer_bench::peers::Peer;
use coffer_bench::procfs;
use coffer_bench::run::{timed, Timed};
use serde::Serialize;

use super::*;

#[derive(Serialize)]
pub(crate) struct Phase {
    pub(crate) phase: &'static str,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) agent_cpu_secs: f64,
    pub(crate) agent_peak_rss_mib: f64,
    pub(crate) proxy_cpu_secs: f64,
    /// The proxy's peak so far (it only grows across phases).
    pub(crate) proxy_peak_rss_mib: f64,
}

/// A peer tool's run of one phase.
#[derive(Serialize)]
pub(crate) struct PeerPhase {
    pub(crate) phase: &'static str,
    pub(crate) secs: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) cpu_secs: f64,
    pub(crate) peak_rss_mib: f64,
    /// Coffer's MB/s over this tool's, in the same phase.
    pub(crate) coffer_ratio: f64,
}

#[derive(Serialize)]
pub(crate) struct PeerReport {
    pub(crate) tool: &'static str,
    pub(crate) phases: Vec<PeerPhase>,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) data: String,
    pub(crate) bytes: u64,
    pub(crate) cores: usize,
    pub(crate) phases: Vec<Phase>,
    pub(crate) peers: Vec<PeerReport>,
    /// Peers asked for but not installed.
    pub(crate) peers_missing: Vec<&'static str>,
}

pub(crate) fn e2e(bench: &Bench, input: Input, with_peers: bool) -> Result<Report, String> {
    let work = &bench.work;
    let (source, label) = source_file(input, work)?;
    let bytes = std::fs::metadata(&source).map_err(|e| format!("{}: {e}", source.display()))?.len();
    let edited = work.join("edited");
    edit_one_percent(&source, &edited)?;

    let proxy = &bench.proxy;
    bench.init(REPO)?;
    let (mut peers, peers_missing) = if with_peers { Peer::find(work) } else { (Vec::new(), Vec::new()) };
    for peer in &peers {
        peer.init()?;
    }
    let expected = hash_file(&source)?;
    let check = |tool: &str, h: blake3::Hasher| match h.finalize() == expected {
        true => Ok(()),
        false => Err(format!("{tool}: the restored stream differs from the source")),
    };

    // Phase by phase, each tool in turn, so all see the same machine state.
    let mut phases = Vec::new();
    let mut peer_phases: Vec<Vec<(Timed, &'static str)>> = peers.iter().map(|_| Vec::new()).collect();
    let mut first_id = String::new();
    for (n, phase) in PHASES.into_iter().enumerate() {
        let input = if n == 2 { &edited } else { &source };
        let before = proxy.sample()?;
        let run = if phase == "restore" {
            let mut h = blake3::Hasher::new();
            let t =
                timed(bench.coffer("reader.toml").args(["restore", "--repo", REPO, &first_id]), None, Some(&mut h))?;
            check("coffer", h)?;
            t
        } else {
            let t =
                timed(bench.coffer("writer.toml").args(["backup", "--repo", REPO, "--json", "-"]), Some(input), None)?;
            if n == 0 {
                let report: serde_json::Value =
                    serde_json::from_slice(&t.stdout).map_err(|e| format!("{phase}: {e}"))?;
                first_id = report["id"].as_str().ok_or("backup printed no id")?.to_string();
            }
            t
        };
        phases.push(Phase::new(phase, bytes, run.secs, run.usage, before, proxy.sample()?));
        for (peer, done) in peers.iter_mut().zip(&mut peer_phases) {
            let t = if phase == "restore" {
                let mut h = blake3::Hasher::new();
                let t = peer.restore(&mut h)?;
                check(peer.name, h)?;
                t
            } else {
                peer.backup(input, n)?
            };
            done.push((t, phase));
        }
    }
    let peers = peers
        .iter()
        .zip(peer_phases)
        .map(|(peer, runs)| PeerReport {
            tool: peer.name,
            phases: runs
                .into_iter()
                .zip(&phases)
                .map(|((t, phase), ours)| {
                    let mb_per_sec = bytes as f64 / 1e6 / t.secs.max(1e-9);
                    PeerPhase {
                        phase,
                        secs: t.secs,
                        mb_per_sec,
                        cpu_secs: t.usage.cpu_secs,
                        peak_rss_mib: mib(t.usage.peak_rss),
                        coffer_ratio: ours.mb_per_sec / mb_per_sec,
                    }
                })
                .collect(),
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Report { data: label, bytes, cores, phases, peers, peers_missing })
}

impl Phase {
    pub(crate) fn new(
        phase: &'static str,
        bytes: u64,
        secs: f64,
        agent: procfs::Sample,
        proxy_before: procfs::Sample,
        proxy_after: procfs::Sample,
    ) -> Self {
        Phase {
            phase,
            bytes,
            secs,
            mb_per_sec: bytes as f64 / 1e6 / secs.max(1e-9),
            agent_cpu_secs: agent.cpu_secs,
            agent_peak_rss_mib: mib(agent.peak_rss),
            proxy_cpu_secs: proxy_after.cpu_secs - proxy_before.cpu_secs,
            proxy_peak_rss_mib: mib(proxy_after.peak_rss),
        }
    }
}

pub(crate) fn print_table(r: &Report) {
    println!("{}: {:.0} MB, {} cores", r.data, r.bytes as f64 / 1e6, r.cores);
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "phase", "MB/s", "secs", "agent CPU", "agent MiB", "proxy CPU", "proxy MiB"
    );
    for p in &r.phases {
        println!(
            "{:<22} {:>8.1} {:>8.2} {:>10.2} {:>10.1} {:>10.2} {:>10.1}",
            p.phase,
            p.mb_per_sec,
            p.secs,
            p.agent_cpu_secs,
            p.agent_peak_rss_mib,
            p.proxy_cpu_secs,
            p.proxy_peak_rss_mib
        );
    }
    for peer in &r.peers {
        println!();
        println!("{:<22} {:>8} {:>8} {:>10} {:>10} {:>10}", peer.tool, "MB/s", "secs", "CPU", "peak MiB", "coffer ×");
        for p in &peer.phases {
            println!(
                "{:<22} {:>8.1} {:>8.2} {:>10.2} {:>10.1} {:>10.2}",
                p.phase, p.mb_per_sec, p.secs, p.cpu_secs, p.peak_rss_mib, p.coffer_ratio
            );
        }
    }
    for missing in &r.peers_missing {
        println!("\n{missing}: not installed, not run");
    }
}
