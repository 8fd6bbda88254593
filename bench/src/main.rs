//! `coffer-bench e2e`: backs up and restores through the real binaries —
//! `coffer-proxy dev` (filesystem store, mutual TLS on loopback) and
//! `coffer` — and reports, per phase, MB/s, CPU seconds and peak RSS of the
//! agent and the proxy. With `--peers`, restic and borg run the same phases
//! on the same data, interleaved with Coffer's. Every restore is checked
//! bit-exact.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use clap::{Args, Parser, Subcommand};
use coffer_bench::peers::Peer;
use coffer_bench::run::{timed, Timed};
use coffer_bench::{data, parse_size, procfs};
use serde::Serialize;

const REPO: &str = "dev/bench";
const PHASES: [&str; 4] = ["first backup", "unchanged re-backup", "backup after 1% edit", "restore"];

#[derive(Parser)]
#[command(name = "coffer-bench", version, about = "Coffer's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// First backup, unchanged re-backup, backup after a 1% edit, restore.
    E2e {
        #[command(flatten)]
        input: Input,
        /// Also run restic and borg (those installed) on the same data.
        #[arg(long)]
        peers: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Each stage alone on the same data (read, chunk, hash, compress and
    /// encrypt, TLS both ways, store write), the ceiling they put on the
    /// pipeline on this machine, and a real first backup as a fraction of it.
    Limit {
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        common: Common,
    },
    /// One backup of a generated stream piped straight into the agent, at
    /// full speed or at `--rate`, sampling the agent's memory every second:
    /// does it stay flat for a very long or a trickling stream?
    Stream {
        /// SIZE,KIND as for e2e (e.g. 20GiB,mixed); nothing is written to disk but the store.
        #[arg(long)]
        generate: String,
        /// Feed at most this many bytes per second (e.g. 1MB), as a slow producer would.
        #[arg(long)]
        rate: Option<String>,
        /// Run this many agents at once, each with its own stream and repository.
        #[arg(long, default_value_t = 1)]
        agents: usize,
        #[command(flatten)]
        common: Common,
    },
}

/// The stream to measure.
#[derive(Args)]
struct Input {
    /// The stream to back up (piped in, as `pg_dump | coffer backup -` is).
    #[arg(long, conflicts_with = "generate", required_unless_present = "generate")]
    data: Option<PathBuf>,
    /// Generate the stream instead: SIZE,KIND with KIND random, text or mixed (e.g. 1GiB,mixed).
    #[arg(long)]
    generate: Option<String>,
}

#[derive(Args)]
struct Common {
    /// Where `coffer` and `coffer-proxy` are (default: beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Work folder for the store, the data and the restores (default: a new temporary one).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The zstd level of Coffer's repositories (`coffer init --zstd-level`).
    #[arg(long, default_value_t = coffer_proto::repo::DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
}

#[derive(Serialize)]
struct Phase {
    phase: &'static str,
    bytes: u64,
    secs: f64,
    mb_per_sec: f64,
    agent_cpu_secs: f64,
    agent_peak_rss_mib: f64,
    proxy_cpu_secs: f64,
    /// The proxy's peak so far (it only grows across phases).
    proxy_peak_rss_mib: f64,
}

/// A peer tool's run of one phase.
#[derive(Serialize)]
struct PeerPhase {
    phase: &'static str,
    secs: f64,
    mb_per_sec: f64,
    cpu_secs: f64,
    peak_rss_mib: f64,
    /// Coffer's MB/s over this tool's, in the same phase.
    coffer_ratio: f64,
}

#[derive(Serialize)]
struct PeerReport {
    tool: &'static str,
    phases: Vec<PeerPhase>,
}

#[derive(Serialize)]
struct Report {
    data: String,
    bytes: u64,
    cores: usize,
    phases: Vec<Phase>,
    peers: Vec<PeerReport>,
    /// Peers asked for but not installed.
    peers_missing: Vec<&'static str>,
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::E2e { input, peers, common } => {
            Bench::new(&common).and_then(|b| e2e(&b, input, peers)).map(|r| emit(&r, common.json, print_table))
        }
        Cmd::Limit { input, common } => {
            Bench::new(&common).and_then(|b| limit(&b, input)).map(|r| emit(&r, common.json, print_limit))
        }
        Cmd::Stream { generate, rate, agents, common } => Bench::new(&common)
            .and_then(|b| stream(&b, &generate, rate.as_deref(), agents.max(1)))
            .map(|r| emit(&r, common.json, print_stream)),
    };
    if let Err(e) = result {
        eprintln!("coffer-bench: {e}");
        std::process::exit(1);
    }
}

/// Prints a report as JSON or as its table.
fn emit<R: Serialize>(report: &R, json: bool, table: fn(&R)) {
    if json {
        println!("{}", to_json(report));
    } else {
        table(report);
    }
}

fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).expect("plain data")
}

/// The stream to measure: `--data FILE`, or one generated into `work`.
fn source_file(input: Input, work: &Path) -> Result<(PathBuf, String), String> {
    match (input.data, input.generate) {
        (Some(path), _) => Ok((path.clone(), path.display().to_string())),
        (None, Some(spec)) => {
            let (size, kind) = spec.split_once(',').ok_or("--generate wants SIZE,KIND, e.g. 1GiB,mixed")?;
            let (size, kind) = (parse_size(size)?, kind.parse::<data::Kind>()?);
            let path = work.join("source");
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| e.to_string())?);
            data::generate(kind, size, &mut out).and_then(|()| out.flush()).map_err(|e| e.to_string())?;
            // On disk before any phase is timed, so no phase pays for its
            // write-back (it stays in the page cache for the reads).
            out.get_ref().sync_all().map_err(|e| e.to_string())?;
            Ok((path, format!("generated {spec}")))
        }
        (None, None) => Err("give --data FILE or --generate SIZE,KIND".into()),
    }
}

/// What every command needs: the binaries (`--bin-dir`, else beside this
/// program), a work folder (`--work`, else a temporary one, removed after)
/// and a dev proxy running in it.
struct Bench {
    bins: PathBuf,
    work: PathBuf,
    zstd_level: i32,
    proxy: Proxy,
    _tmp: tempfile::TempDir,
}

impl Bench {
    fn new(common: &Common) -> Result<Self, String> {
        let bins = match &common.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe().map_err(|e| e.to_string())?.parent().ok_or("no bin dir")?.to_path_buf(),
        };
        for name in ["coffer", "coffer-proxy"] {
            if !bins.join(name).exists() {
                return Err(format!(
                    "{} not found: build the binaries (cargo build --release --bins)",
                    bins.join(name).display()
                ));
            }
        }
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let work = common.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let proxy = Proxy::start(&bins.join("coffer-proxy"), &work.join("proxy"))?;
        Ok(Bench { bins, work, zstd_level: common.zstd_level, proxy, _tmp: tmp })
    }

    /// The dev proxy's folder: its certificates and the agents' configs.
    fn proxy_dir(&self) -> PathBuf {
        self.work.join("proxy")
    }

    /// `coffer --config <proxy dir>/<config>`.
    fn coffer(&self, config: &str) -> Command {
        let mut cmd = Command::new(self.bins.join("coffer"));
        cmd.arg("--config").arg(self.proxy_dir().join(config));
        cmd
    }

    /// Creates a repository at the chosen zstd level.
    fn init(&self, repo: &str) -> Result<Timed, String> {
        let level = self.zstd_level.to_string();
        timed(self.coffer("agent.toml").args(["init", "--repo", repo, "--zstd-level", &level]), None, None)
    }
}

#[derive(Serialize)]
struct StreamReport {
    data: String,
    rate_bytes_per_sec: Option<u64>,
    /// Agents at once, each its own stream and repository.
    agents: usize,
    /// All agents' bytes.
    bytes: u64,
    secs: f64,
    mb_per_sec: f64,
    /// All agents' CPU.
    agent_cpu_secs: f64,
    /// The highest agent peak.
    agent_peak_rss_mib: f64,
    /// The first agent's resident set once a second, MiB.
    agent_rss_mib: Vec<f64>,
    proxy_peak_rss_mib: f64,
}

fn stream(bench: &Bench, spec: &str, rate: Option<&str>, agents: usize) -> Result<StreamReport, String> {
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
                bench.coffer("agent.toml").args(["backup", "--repo", repo, "--json", "-"]),
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
struct Streaming {
    agent: Child,
    feeder: std::thread::JoinHandle<std::io::Result<()>>,
    errors: std::thread::JoinHandle<String>,
    /// The resident set once a second, from a second after the start.
    sampler: std::thread::JoinHandle<Vec<f64>>,
    /// CPU and peak from the usual close watch, which sees the agent exit.
    watcher: std::thread::JoinHandle<procfs::Sample>,
}

impl Streaming {
    fn start(cmd: &mut Command, kind: data::Kind, size: u64, rate: Option<u64>) -> Result<Self, String> {
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

    fn finish(mut self) -> Result<(procfs::Sample, Vec<f64>), String> {
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

#[derive(Serialize)]
struct LimitReport {
    data: String,
    #[serde(flatten)]
    limits: coffer_bench::limit::Limits,
    /// A real first backup of the same data through the dev proxy.
    first_backup_mb_per_sec: f64,
    /// That over the ceiling.
    fraction_of_ceiling: f64,
}

fn limit(bench: &Bench, input: Input) -> Result<LimitReport, String> {
    let (source, label) = source_file(input, &bench.work)?;
    // The dev proxy's certificates serve the TLS stage; it takes the real backup.
    let level = bench.zstd_level;
    let limits = coffer_bench::limit::measure_stages(&source, level, &bench.proxy_dir(), &bench.work)?;
    bench.init(REPO)?;
    let run = timed(bench.coffer("agent.toml").args(["backup", "--repo", REPO, "--json", "-"]), Some(&source), None)?;
    let first_backup_mb_per_sec = limits.bytes as f64 / 1e6 / run.secs.max(1e-9);
    let fraction_of_ceiling = first_backup_mb_per_sec / limits.ceiling;
    Ok(LimitReport { data: label, limits, first_backup_mb_per_sec, fraction_of_ceiling })
}

fn print_limit(r: &LimitReport) {
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

/// A writer that keeps to `rate` bytes per second (or none).
struct Paced<W> {
    inner: W,
    rate: Option<u64>,
    started: std::time::Instant,
    written: u64,
}

impl<W> Paced<W> {
    fn new(inner: W, rate: Option<u64>) -> Self {
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

fn print_stream(r: &StreamReport) {
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

fn e2e(bench: &Bench, input: Input, with_peers: bool) -> Result<Report, String> {
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
                timed(bench.coffer("restore.toml").args(["restore", "--repo", REPO, &first_id]), None, Some(&mut h))?;
            check("coffer", h)?;
            t
        } else {
            let t =
                timed(bench.coffer("agent.toml").args(["backup", "--repo", REPO, "--json", "-"]), Some(input), None)?;
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
    fn new(
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Copies `source` to `to` and overwrites 1% of it in 16 places spread over
/// the stream, as a day's changes to a database dump might.
fn edit_one_percent(source: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(source, to).map_err(|e| format!("{}: {e}", source.display()))?;
    let len = std::fs::metadata(to).map_err(|e| e.to_string())?.len();
    let mut f = std::fs::OpenOptions::new().write(true).open(to).map_err(|e| e.to_string())?;
    let spot = (len / 100 / 16) as usize;
    for i in 0..16u64 {
        f.seek(SeekFrom::Start(len / 16 * i)).map_err(|e| e.to_string())?;
        f.write_all(&data::random_bytes(&format!("edit {i}"), spot)).map_err(|e| e.to_string())?;
    }
    // Written back now, not during whichever phase the kernel picks: that
    // slowed the fsyncs of the first tool to run the edit phase.
    f.sync_all().map_err(|e| e.to_string())
}

fn hash_file(path: &Path) -> Result<blake3::Hash, String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(h.finalize())
}

/// A running `coffer-proxy dev`, killed on drop.
struct Proxy {
    child: Child,
}

impl Proxy {
    fn start(bin: &Path, dir: &Path) -> Result<Self, String> {
        let mut child = Command::new(bin)
            .args(["dev", "--dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("COFFER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let _ = child.wait();
                return Err("coffer-proxy exited before listening".into());
            }
            if line.contains("listening on ") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        Ok(Proxy { child })
    }

    fn sample(&self) -> Result<procfs::Sample, String> {
        procfs::sample(self.child.id()).ok_or_else(|| "coffer-proxy has exited".to_string())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_table(r: &Report) {
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
