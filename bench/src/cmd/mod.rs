//! The benchmarks, one file each, and what they share: the binaries, a
//! work folder, a dev proxy, and the report printer.

pub(crate) mod catalog;
pub(crate) mod e2e;
pub(crate) mod limit;
pub(crate) mod s3;
pub(crate) mod stream;

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use clap::Args;
use coffer_bench::run::{timed, Timed};
use coffer_bench::{data, parse_size, procfs};
use serde::Serialize;

const REPO: &str = "dev/bench";
const PHASES: [&str; 4] = ["first backup", "unchanged re-backup", "backup after 1% edit", "restore"];

/// The stream to measure.
#[derive(Args)]
pub(crate) struct Input {
    /// The stream to back up (piped in, as `pg_dump | coffer backup -` is).
    #[arg(long, conflicts_with = "generate", required_unless_present = "generate")]
    pub(crate) data: Option<PathBuf>,
    /// Generate the stream instead: SIZE,KIND with KIND random, text or mixed (e.g. 1GiB,mixed).
    #[arg(long)]
    pub(crate) generate: Option<String>,
}

#[derive(Args)]
pub(crate) struct Common {
    /// Where `coffer` and `coffer-proxy` are (default: beside this program).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Work folder for the store, the data and the restores (default: a new temporary one).
    #[arg(long)]
    pub(crate) work: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The zstd level of Coffer's repositories (`coffer init --zstd-level`).
    #[arg(long, default_value_t = coffer_proto::repo::DEFAULT_ZSTD_LEVEL)]
    pub(crate) zstd_level: i32,
}

/// Prints a report as JSON or as its table.
pub(crate) fn emit<R: Serialize>(report: &R, json: bool, table: fn(&R)) {
    if json {
        println!("{}", to_json(report));
    } else {
        table(report);
    }
}

pub(crate) fn to_json(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).expect("plain data")
}

/// The stream to measure: `--data FILE`, or one generated into `work`.
pub(crate) fn source_file(input: Input, work: &Path) -> Result<(PathBuf, String), String> {
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
pub(crate) struct Bench {
    pub(crate) bins: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) zstd_level: i32,
    pub(crate) proxy: Proxy,
    pub(crate) _tmp: tempfile::TempDir,
}

impl Bench {
    pub(crate) fn new(common: &Common) -> Result<Self, String> {
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
    pub(crate) fn proxy_dir(&self) -> PathBuf {
        self.work.join("proxy")
    }

    /// `coffer --config <proxy dir>/<config>`.
    pub(crate) fn coffer(&self, config: &str) -> Command {
        let mut cmd = Command::new(self.bins.join("coffer"));
        cmd.arg("--config").arg(self.proxy_dir().join(config));
        cmd
    }

    /// Creates a repository at the chosen zstd level.
    pub(crate) fn init(&self, repo: &str) -> Result<Timed, String> {
        let level = self.zstd_level.to_string();
        timed(self.coffer("writer.toml").args(["init", "--repo", repo, "--zstd-level", &level]), None, None)
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Copies `source` to `to` and overwrites 1% of it in 16 places spread over
/// the stream, as a day's changes to a database dump might.
pub(crate) fn edit_one_percent(source: &Path, to: &Path) -> Result<(), String> {
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

pub(crate) fn hash_file(path: &Path) -> Result<blake3::Hash, String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(h.finalize())
}

/// A running `coffer-proxy dev`, killed on drop.
pub(crate) struct Proxy {
    pub(crate) child: Child,
}

impl Proxy {
    pub(crate) fn start(bin: &Path, dir: &Path) -> Result<Self, String> {
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

    pub(crate) fn sample(&self) -> Result<procfs::Sample, String> {
        procfs::sample(self.child.id()).ok_or_else(|| "coffer-proxy has exited".to_string())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
