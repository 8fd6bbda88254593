//! `coffer-bench s3`: the real proxy on its S3 store, against the emulator
//! (moto) behind a relay that delays every request as a regional endpoint
//! does. Each phase runs at 0 ms and at `--latency-ms`, on a repository of
//! its own; the difference, per chunk and per round trip, is the number of
//! round trips the data path waits for one after another.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use coffer_bench::relay::LatencyRelay;
use coffer_bench::run::timed;
use serde::Serialize;

use super::{edit_one_percent, hash_file, source_file, Bench, Input};

const BUCKET: &str = "coffer-bench";

/// One phase at one latency: seconds, chunks, S3 requests by kind.
type Measured = (f64, u64, BTreeMap<String, u64>);

#[derive(Serialize)]
pub(crate) struct S3Phase {
    pub(crate) phase: &'static str,
    pub(crate) chunks: u64,
    pub(crate) secs_at_0ms: f64,
    pub(crate) secs: f64,
    pub(crate) mb_per_sec: f64,
    /// `(t(latency) - t(0)) / (chunks * latency)`.
    pub(crate) serial_round_trips_per_chunk: f64,
    pub(crate) requests: u64,
    pub(crate) requests_per_gb: f64,
    pub(crate) requests_by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub(crate) struct S3Report {
    pub(crate) data: String,
    pub(crate) bytes: u64,
    pub(crate) latency_ms: u64,
    pub(crate) phases: Vec<S3Phase>,
    /// `snapshots` on a repository holding this many, at the latency, by a
    /// proxy that has not read its index segments before.
    pub(crate) listing_snapshots: usize,
    /// The first listing, at the latency: nothing packed yet, so three
    /// objects per snapshot; the proxy packs them behind it.
    pub(crate) first_listing_secs: f64,
    pub(crate) first_listing_requests: BTreeMap<String, u64>,
    /// The same listing at 0 ms, through another fresh proxy.
    pub(crate) listing_secs_at_0ms: f64,
    pub(crate) listing_secs: f64,
    pub(crate) listing_requests: BTreeMap<String, u64>,
}

/// moto on a free port, killed on drop.
struct Moto(Child, u16);

impl Moto {
    fn start(exe: &Path) -> Result<Self, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port.port())).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("moto_server did not start".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Moto(child, port.port()))
    }

    /// Creates the bucket with Object Lock (moto turns versioning on with it).
    fn bucket(&self) -> Result<(), String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.1)).map_err(|e| e.to_string())?;
        let req = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-amz-bucket-object-lock-enabled: true\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.1
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        match answer.starts_with("HTTP/1.1 200") {
            true => Ok(()),
            false => Err(format!("creating the bucket: {}", answer.lines().next().unwrap_or_default())),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The moto server to use: `--moto`, `COFFER_MOTO`, or the one the test
/// command installs.
fn moto_exe(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let found = given
        .or_else(|| std::env::var_os("COFFER_MOTO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".venv/bin/moto_server"));
    match found.exists() {
        true => Ok(found),
        false => {
            Err(format!("{} not found: pass --moto or set COFFER_MOTO (tests/run.sh installs moto)", found.display()))
        }
    }
}

/// The proxy on the S3 store through the relay, with the dev folder's
/// certificates and master key; killed on drop.
struct S3Proxy(Child);

impl S3Proxy {
    /// `extra`: configuration sections from the options ([`S3Options::sections`]).
    fn start(bench: &Bench, relay: &LatencyRelay, extra: &str) -> Result<(Self, String), String> {
        let dir = bench.proxy_dir();
        let config = format!(
            r#"proxy_id = "s3bench"
listen = "127.0.0.1:0"
[tls]
cert = "proxy.pem"
key = "proxy.key"
[[trust_domains]]
name = "dev"
ca = "ca.pem"
repos = ["dev/**"]
[store]
kind = "s3"
bucket = "{BUCKET}"
endpoint = "{}"
region = "us-east-1"
path_style = true
[keys]
provider = "local"
master_key = "master.key"
[audit]
path = "audit-s3/audit.jsonl"
[lifecycle]
listing_packs = true
{extra}[[rules]]
name = "writer"
trust_domain = "dev"
identity = "spiffe://coffer.dev/writer"
roles = ["writer"]
repos = ["dev/**"]
[[rules]]
name = "reader"
trust_domain = "dev"
identity = "spiffe://coffer.dev/reader"
roles = ["reader"]
repos = ["dev/**"]
"#,
            relay.endpoint
        );
        std::fs::write(dir.join("s3.toml"), config).map_err(|e| e.to_string())?;
        let mut child = Command::new(bench.bins.join("coffer-proxy"))
            .arg("--config")
            .arg(dir.join("s3.toml"))
            .envs([
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
                ("COFFER_LOG", "warn"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if lines.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                let _ = child.wait();
                return Err("coffer-proxy on S3 exited before listening".into());
            }
            if let Some(addr) = line.trim().strip_prefix("coffer-proxy: listening on ") {
                break addr.to_string();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        for who in ["writer", "reader"] {
            let agent = format!(
                "proxy = \"https://{addr}\"\nca = \"ca.pem\"\ncert = \"{who}.pem\"\nkey = \"{who}.key\"\nstate_dir = \"state\"\n\
                 [keys]\nprovider = \"local\"\nmaster_key = \"master.key\"\n"
            );
            std::fs::write(dir.join(format!("s3-{who}.toml")), agent).map_err(|e| e.to_string())?;
        }
        Ok((S3Proxy(child), addr))
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) struct S3Options {
    pub(crate) latency_ms: u64,
    pub(crate) moto: Option<PathBuf>,
    pub(crate) snapshots: usize,
    pub(crate) fan_out: Option<usize>,
    pub(crate) upload_lock_hours: Option<u32>,
}

impl S3Options {
    /// The proxy's configuration sections these options set.
    fn sections(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.fan_out {
            out.push_str(&format!("[limits]\nstore_fan_out = {n}\n"));
        }
        if let Some(h) = self.upload_lock_hours {
            out.push_str(&format!("[retention]\nupload_lock_hours = {h}\n"));
        }
        out
    }
}

pub(crate) fn s3(bench: &Bench, input: Input, opts: S3Options) -> Result<S3Report, String> {
    let work = &bench.work;
    let (source, label) = source_file(input, work)?;
    let bytes = std::fs::metadata(&source).map_err(|e| e.to_string())?.len();
    let edited = work.join("edited");
    edit_one_percent(&source, &edited)?;
    let expected = hash_file(&source)?;
    let extra = opts.sections();
    let moto = Moto::start(&moto_exe(opts.moto)?)?;
    moto.bucket()?;
    let relay = LatencyRelay::start(&format!("127.0.0.1:{}", moto.1)).map_err(|e| e.to_string())?;
    let (proxy, _) = S3Proxy::start(bench, &relay, &extra)?;
    let coffer = |who: &str| {
        let mut cmd = Command::new(bench.bins.join("coffer"));
        cmd.arg("--config").arg(bench.proxy_dir().join(format!("s3-{who}.toml")));
        cmd
    };
    let gb = bytes as f64 / 1e9;

    // Each latency gets a repository of its own, so both runs do the same work.
    let mut runs: Vec<Vec<Measured>> = Vec::new();
    for latency in [0, opts.latency_ms] {
        let repo = format!("dev/s3-{latency}ms");
        relay.set_latency_ms(0);
        timed(coffer("writer").args(["init", "--repo", &repo]), None, None)?;
        relay.set_latency_ms(latency);
        let mut phases = Vec::new();
        let mut first = String::new();
        for (n, input) in [&source, &source, &edited].into_iter().enumerate() {
            relay.take_counts();
            let run = timed(coffer("writer").args(["backup", "--repo", &repo, "--json", "-"]), Some(input), None)?;
            let report: serde_json::Value = serde_json::from_slice(&run.stdout).map_err(|e| e.to_string())?;
            if n == 0 {
                first = report["id"].as_str().unwrap_or_default().to_string();
            }
            phases.push((run.secs, report["chunks"].as_u64().unwrap_or(0), relay.take_counts()));
        }
        let mut h = blake3::Hasher::new();
        let run = timed(coffer("reader").args(["restore", "--repo", &repo, &first]), None, Some(&mut h))?;
        if h.finalize() != expected {
            return Err("the restore through S3 differs from the source".into());
        }
        let chunks = phases[0].1;
        phases.push((run.secs, chunks, relay.take_counts()));
        runs.push(phases);
    }
    let names = ["first backup", "unchanged re-backup", "backup after 1% edit", "restore"];
    let latency_secs = opts.latency_ms as f64 / 1000.0;
    let phases = names
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let (t0, chunks, _) = &runs[0][i];
            let (t, _, counts) = &runs[1][i];
            let requests: u64 = counts.values().sum();
            S3Phase {
                phase,
                chunks: *chunks,
                secs_at_0ms: *t0,
                secs: *t,
                mb_per_sec: bytes as f64 / 1e6 / t,
                serial_round_trips_per_chunk: if latency_secs > 0.0 && *chunks > 0 {
                    (t - t0) / (*chunks as f64 * latency_secs)
                } else {
                    0.0
                },
                requests,
                requests_per_gb: requests as f64 / gb,
                requests_by_kind: counts.clone(),
            }
        })
        .collect();

    // A repository of many small snapshots, listed at the latency.
    let repo = "dev/s3-list";
    relay.set_latency_ms(0);
    timed(coffer("writer").args(["init", "--repo", repo]), None, None)?;
    let tiny = work.join("tiny");
    for i in 0..opts.snapshots {
        std::fs::write(&tiny, format!("snapshot {i}\n")).map_err(|e| e.to_string())?;
        timed(coffer("writer").args(["backup", "--repo", repo, "-"]), Some(&tiny), None)?;
    }
    // A fresh proxy lists it, so the index segments its commits read do
    // not flatter the figure: what a restarted or second proxy pays. First
    // with nothing packed; then, once the listing packs the proxy writes
    // behind it are stored (no request for two seconds), once at 0 ms and
    // once at the latency, each through a proxy of its own.
    drop(proxy);
    let (first_listing_secs, first_listing_requests) = {
        let (_proxy, _) = S3Proxy::start(bench, &relay, &extra)?;
        relay.set_latency_ms(opts.latency_ms);
        relay.take_counts();
        let listed = timed(coffer("reader").args(["snapshots", "--repo", repo, "--json"]), None, None)?;
        let requests = relay.take_counts();
        let mut quiet = 0;
        while quiet < 4 {
            std::thread::sleep(std::time::Duration::from_millis(500));
            quiet = if relay.take_counts().is_empty() { quiet + 1 } else { 0 };
        }
        relay.set_latency_ms(0);
        (listed.secs, requests)
    };
    let mut listings = Vec::new();
    for latency in [0, opts.latency_ms] {
        let (_proxy, _) = S3Proxy::start(bench, &relay, &extra)?;
        relay.set_latency_ms(latency);
        relay.take_counts();
        let listed = timed(coffer("reader").args(["snapshots", "--repo", repo, "--json"]), None, None)?;
        let requests = relay.take_counts();
        relay.set_latency_ms(0);
        let count = serde_json::from_slice::<Vec<serde_json::Value>>(&listed.stdout).map_err(|e| e.to_string())?.len();
        if count != opts.snapshots {
            return Err(format!("the listing shows {count} snapshots, not {}", opts.snapshots));
        }
        listings.push((listed.secs, requests));
    }
    let (listing_secs_at_0ms, _) = listings[0];
    let (listing_secs, listing_requests) = listings.pop().unwrap_or_default();
    let count = opts.snapshots;
    Ok(S3Report {
        data: label,
        bytes,
        latency_ms: opts.latency_ms,
        phases,
        listing_snapshots: count,
        first_listing_secs,
        first_listing_requests,
        listing_secs_at_0ms,
        listing_secs,
        listing_requests,
    })
}

pub(crate) fn print_s3(r: &S3Report) {
    println!("{} ({} bytes) through the S3 store, {} ms per request", r.data, r.bytes, r.latency_ms);
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10}",
        "phase", "chunks", "s at 0ms", "s", "MB/s", "serial/ch", "requests", "req/GB"
    );
    for p in &r.phases {
        println!(
            "{:<22} {:>7} {:>9.2} {:>9.2} {:>8.1} {:>10.3} {:>9} {:>10.0}",
            p.phase,
            p.chunks,
            p.secs_at_0ms,
            p.secs,
            p.mb_per_sec,
            p.serial_round_trips_per_chunk,
            p.requests,
            p.requests_per_gb
        );
        let kinds: Vec<String> = p.requests_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("{:<22} {}", "", kinds.join(", "));
    }
    let kinds: Vec<String> = r.first_listing_requests.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "snapshots of {} listed first (nothing packed) in {:.2} s: {}",
        r.listing_snapshots,
        r.first_listing_secs,
        kinds.join(", ")
    );
    let kinds: Vec<String> = r.listing_requests.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "snapshots of {} listed in {:.2} s ({:.2} s at 0 ms): {}",
        r.listing_snapshots,
        r.listing_secs,
        r.listing_secs_at_0ms,
        kinds.join(", ")
    );
}
