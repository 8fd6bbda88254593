//! `coffer-bench stream`: one long or trickling stream piped into the
//! agent, its memory sampled every second.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};

use coffer_bench::{data, parse_size, procfs};
use serde::Serialize;

use super::*;

#[derive(Serialize)]
pub(crate) struct StreamReport {
    pub(crate) data: String,
    pub(crate) rate_bytes_per_sec: Option<u64>,
    /// Agents at once, each its own stream and repository.
    pub(crate) agents: usize,
    /// All agents' bytes.
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) mb_per_sec: f64,
    /// All agents' CPU.
    pub(crate) agent_cpu_secs: f64,
    /// The highest agent peak.
    pub(crate) agent_peak_rss_mib: f64,
    /// The first agent's resident set once a second, MiB.
    pub(crate) agent_rss_mib: Vec<f64>,
    pub(crate) proxy_peak_rss_mib: f64,
}

pub(crate) fn stream(bench: &Bench, spec: &str, rate: Option<&str>, agents: usize) -> Result<StreamReport, String> {
    let (size, kind) = spec.split_once(',').ok_or("--generate wants SIZE,KIND, e.g. 20GiB,mixed")?;
    let (size, kind) = (parse_size(size)?, kind.parse::<data::Kind>()?);
    let rate = rate.map(parse_size).transpose()?;
    // One repository per agent, so they share a proxy but not chunks.
    let repos: Vec<String> = (0..agents).map(|i| format!("{REPO}-{i}")).collect();
    for repo in &repos {
        bench.init(repo)?;
    }
    let started = std::time::Instant::now();
    let running = repos
        .iter()
        .map(|repo| {
            Streaming::start(
                bench.coffer("writer.toml").args(["backup", "--repo", repo, "--json", "-"]),
                kind,
                size,
                rate,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut finished = Vec::new();
    for r in running {
        finished.push(r.finish()?);
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = size * agents as u64;
    Ok(StreamReport {
        data: format!("generated {spec}, piped"),
        rate_bytes_per_sec: rate,
        agents,
        bytes,
        secs,
        mb_per_sec: bytes as f64 / 1e6 / secs,
        agent_cpu_secs: finished.iter().map(|(u, _)| u.cpu_secs).sum(),
        agent_peak_rss_mib: finished.iter().map(|(u, _)| mib(u.peak_rss)).fold(0.0, f64::max),
        agent_rss_mib: finished.swap_remove(0).1,
        proxy_peak_rss_mib: mib(bench.proxy.sample()?.peak_rss),
    })
}

/// One `coffer backup -` fed a generated stream, with its memory watched.
pub(crate) struct Streaming {
    pub(crate) agent: Child,
    pub(crate) feeder: std::thread::JoinHandle<std::io::Result<()>>,
    pub(crate) errors: std::thread::JoinHandle<String>,
    /// The resident set once a second, from a second after the start.
    pub(crate) sampler: std::thread::JoinHandle<Vec<f64>>,
    /// CPU and peak from the usual close watch, which sees the agent exit.
    pub(crate) watcher: std::thread::JoinHandle<procfs::Sample>,
}

impl Streaming {
    pub(crate) fn start(cmd: &mut Command, kind: data::Kind, size: u64, rate: Option<u64>) -> Result<Self, String> {
        let mut agent = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pid = agent.id();
        let pipe = agent.stdin.take().expect("piped");
        let feeder = std::thread::spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, Paced::new(pipe, rate));
            data::generate(kind, size, &mut out).and_then(|()| out.flush())
        });
        let mut stderr = agent.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let sampler = std::thread::spawn(move || {
            let mut rss = Vec::new();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                match procfs::sample(pid) {
                    Some(s) if !s.exited => rss.push(mib(s.rss)),
                    _ => break rss,
                }
            }
        });
        let watcher = std::thread::spawn(move || procfs::watch(pid, coffer_bench::run::SAMPLE_EVERY));
        Ok(Self { agent, feeder, errors, sampler, watcher })
    }

    pub(crate) fn finish(mut self) -> Result<(procfs::Sample, Vec<f64>), String> {
        let usage = self.watcher.join().map_err(|_| "the watcher panicked")?;
        let status = self.agent.wait().map_err(|e| e.to_string())?;
        let rss = self.sampler.join().map_err(|_| "the sampler panicked")?;
        if !status.success() {
            return Err(format!("coffer backup failed: {}", self.errors.join().unwrap_or_default().trim()));
        }
        self.feeder.join().map_err(|_| "the feeder panicked")?.map_err(|e| format!("feeding the agent: {e}"))?;
        Ok((usage, rss))
    }
}

/// A writer that keeps to `rate` bytes per second (or none).
pub(crate) struct Paced<W> {
    pub(crate) inner: W,
    pub(crate) rate: Option<u64>,
    pub(crate) started: std::time::Instant,
    pub(crate) written: u64,
}

impl<W> Paced<W> {
    pub(crate) fn new(inner: W, rate: Option<u64>) -> Self {
        Self { inner, rate, started: std::time::Instant::now(), written: 0 }
    }
}

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(self.written as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn print_stream(r: &StreamReport) {
    let rate = r.rate_bytes_per_sec.map_or("full speed".to_string(), |b| format!("{:.2} MB/s", b as f64 / 1e6));
    println!(
        "{} at {rate}, {} agent(s): {:.0} MB in {:.1} s ({:.1} MB/s)",
        r.data,
        r.agents,
        r.bytes as f64 / 1e6,
        r.secs,
        r.mb_per_sec
    );
    println!(
        "agent: {:.1} CPU s, peak {:.1} MiB; proxy peak {:.1} MiB",
        r.agent_cpu_secs, r.agent_peak_rss_mib, r.proxy_peak_rss_mib
    );
    let n = r.agent_rss_mib.len();
    if n > 0 {
        let at = |f: f64| r.agent_rss_mib[((n - 1) as f64 * f) as usize];
        println!(
            "agent RSS over the run (MiB): 10% {:.1}, 50% {:.1}, 90% {:.1}, max {:.1}",
            at(0.1),
            at(0.5),
            at(0.9),
            r.agent_rss_mib.iter().cloned().fold(0.0, f64::max)
        );
    }
}
