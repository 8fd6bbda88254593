//! `coffer`: the backup agent's command line.
//!
//! Exit codes (`coffer_client::exit`, shared with `coffer-proxy`): 0
//! success, 1 failure (nothing committed, or a check failed), 64 usage or
//! configuration error, 130 interrupted (SIGINT).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser as _;
use cli::{Cli, Cmd, KeyCmd, LogFormat, RepoCmd};
use coffer_agent::backup::{self, Source};
use coffer_agent::config::{AgentConfig, KeysConfig};
use coffer_agent::daemon::{describe, Daemon, SendHeader};
use coffer_agent::keys::{KeyProvider, KmsProvider, LocalProvider};
use coffer_agent::memory::Memory;
use coffer_agent::progress::{Action, Progress, ProgressMode};
use coffer_agent::repo::{self, OpenRepo};
use coffer_client::exit::{FAILURE, INTERRUPTED, USAGE};
use coffer_client::ProxyClient;
use coffer_proto::RepoName;
use serde::Serialize;

/// jemalloc in every build, tuned in .cargo/config.toml: musl's allocator
/// is slow with many threads, and glibc's keeps 20 to 30 MiB of freed chunk
/// buffers in per-thread arenas (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A failure with the exit code it maps to.
struct Failure(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(FAILURE, e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(USAGE, e.into())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE } else { 0 });
        }
    };
    // The daemon and its jobs say what they do; other commands only warn.
    let level = if matches!(cli.command, Some(Cmd::Daemon { .. } | Cmd::Run { .. })) { "info" } else { "warn" };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr);
    if matches!(cli.command, Some(Cmd::Daemon { log_format: LogFormat::Json })) {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    // The blocking pool seals chunks (and opens them on restore), which is
    // CPU-bound: one thread per core. More added no speed, only chunks
    // being sealed at once, each with its envelope and zstd context (on
    // two cores a third sealer cost about 5 MiB of peak, docs/performance.md).
    // Backup sources are read on threads of their own (backup.rs).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(cores).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coffer: cannot start the runtime: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    let result = runtime.block_on(run(cli));
    // Don't wait for a reader thread still blocked on a source that will
    // never finish (a failed backup stops reading it): exiting closes the
    // pipe, which ends a child command too.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("coffer: {}", describe(e.as_ref()));
            ExitCode::from(code)
        }
    }
}

/// Runs `f` until it ends or SIGINT. A backup commits only after its last
/// chunk, so stopping before that leaves nothing half-committed; source
/// commands are killed.
async fn interruptible<T>(f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::select! {
        r = f => r,
        _ = tokio::signal::ctrl_c() => {
            backup::kill_sources();
            Err(Failure(INTERRUPTED, anyhow::anyhow!("interrupted")))
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if cli.check_config {
        return check_config(cli.config).await;
    }
    let Some(command) = cli.command else {
        return Err(usage(anyhow::anyhow!("no command: see `coffer --help`")));
    };
    match command {
        Cmd::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Failure(FAILURE, anyhow::anyhow!("writing the manual page: {e}")))
        }
        // The daemon handles SIGTERM and SIGINT itself: it stops gracefully.
        Cmd::Daemon { .. } => Ok(daemon(cli.config).await?.run().await?),
        Cmd::Run { job } => interruptible(run_job(cli.config, job)).await,
        Cmd::Send { socket, repo, name, input, command, json, .. } => {
            let (source, name) = source_and_name(input, command, name)?;
            interruptible(send(socket, SendHeader { repo, name }, source, json)).await
        }
        Cmd::Repo(command) => {
            let flags = Flags { limits: (cli.limit_upload, cli.limit_download), progress: cli.progress };
            interruptible(run_repo(cli.config, cli.mfa_code, flags, command)).await
        }
    }
}

/// `coffer --check-config`: everything a backup would read before it
/// connects, and when each job runs next.
async fn check_config(path: Option<PathBuf>) -> Result<(), Failure> {
    let shown = path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let config = load_config(path)?;
    coffer_client::check_tls(&config.client).map_err(usage)?;
    let kek = match &config.keys {
        KeysConfig::Local { master_key } => {
            LocalProvider::open(master_key).map_err(usage)?;
            format!("the local master key {}", master_key.display())
        }
        KeysConfig::Kms(kms) => format!("KMS key {} (not contacted)", kms.key_id),
    };
    println!("{shown}: ok");
    println!("  proxy {} as {}, data keys wrapped by {kek}", config.client.proxy, config.client.cert.display());
    if let Some(socket) = &config.daemon.socket {
        let repos: Vec<String> = config.daemon.socket_repos.iter().map(ToString::to_string).collect();
        println!("  socket {} for {}", socket.display(), repos.join(", "));
    }
    for job in &config.jobs {
        let next = match coffer_agent::schedule::parse_schedule(&job.schedule) {
            Ok(cron) => cron
                .find_next_occurrence(&chrono::Local::now(), false)
                .map_or_else(|e| e.to_string(), |t| t.to_rfc3339()),
            Err(e) => e.to_string(),
        };
        println!("  job {} → {}: `{}`, next {next}", job.name, job.repo, job.argv().join(" "));
    }
    Ok(())
}

/// The one source of `backup` and `send` (`-`, a PATH, or `-- CMD`), and
/// the snapshot's name: the one given, else the source.
fn source_and_name(
    input: Option<String>,
    command: Vec<String>,
    name: Option<String>,
) -> Result<(Source, String), Failure> {
    let source = match (input.as_deref(), command.is_empty()) {
        (Some("-"), true) => Source::Stdin,
        (Some(path), true) => Source::File(path.into()),
        (None, false) => Source::Command(command),
        _ => return Err(usage(anyhow::anyhow!("give exactly one source: `-`, a PATH, or `-- CMD [ARGS...]`"))),
    };
    let name = name.unwrap_or_else(|| match &source {
        Source::Stdin => "stdin".into(),
        Source::File(p) => p.display().to_string(),
        Source::Command(argv) => argv.join(" "),
        Source::Reader { description, .. } => description.clone(),
    });
    Ok((source, name))
}

/// `coffer send`: the stream to the daemon's socket, then the snapshot id.
async fn send(socket: PathBuf, header: SendHeader, source: Source, json: bool) -> Result<(), Failure> {
    let sent = tokio::task::spawn_blocking(move || coffer_agent::daemon::send(&socket, &header, source));
    let sent = sent.await.map_err(|e| anyhow::anyhow!("the sending thread failed: {e}"))??;
    if json {
        return print_json(&cli::output::Sent {
            id: sent.snapshot,
            bytes_in: sent.bytes_in,
            bytes_new: sent.bytes_new,
        });
    }
    eprintln!("sent {} bytes ({} new)", sent.bytes_in, sent.bytes_new);
    println!("{}", sent.snapshot);
    Ok(())
}

/// The daemon for `coffer daemon` and `coffer run`: the config and its key
/// provider; it connects to the proxy for each backup.
async fn daemon(path: Option<PathBuf>) -> Result<Arc<Daemon>, Failure> {
    let config = load_config(path)?;
    let provider = key_provider(&config).await?;
    Ok(Daemon::new(config, provider))
}

async fn run_job(path: Option<PathBuf>, name: String) -> Result<(), Failure> {
    let daemon = daemon(path).await?;
    let job = daemon.job(&name).ok_or_else(|| usage(anyhow::anyhow!("no job named {name:?} in the config")))?;
    // Said with the command's arguments cut off, as the daemon logs it: a
    // timer's stderr is the journal, and the arguments may hold a password.
    let report = daemon.run_job(job).await.map_err(|e| {
        let said = coffer_agent::daemon::redact_arguments(&describe(&e as &dyn std::error::Error), &job.argv());
        Failure(FAILURE, anyhow::anyhow!(said))
    })?;
    println!("{}", report.id);
    Ok(())
}

struct Ctx {
    config: AgentConfig,
    client: ProxyClient,
    provider: Arc<dyn KeyProvider>,
}

fn load_config(path: Option<PathBuf>) -> Result<AgentConfig, Failure> {
    let path =
        path.ok_or_else(|| usage(anyhow::anyhow!("no configuration: pass --config FILE or set COFFER_CONFIG")))?;
    AgentConfig::load(&path).map_err(usage)
}

async fn key_provider(config: &AgentConfig) -> Result<Arc<dyn KeyProvider>, Failure> {
    Ok(match &config.keys {
        KeysConfig::Local { master_key } => Arc::new(LocalProvider::open(master_key).map_err(usage)?),
        KeysConfig::Kms(kms) => Arc::new(KmsProvider::new(kms).await),
    })
}

async fn connect(path: Option<PathBuf>, mfa_code: Option<String>) -> Result<Ctx, Failure> {
    let mut config = load_config(path)?;
    // A person at a terminal is told what the command waits for.
    config.client.announce_retries = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let provider = key_provider(&config).await?;
    let client = ProxyClient::connect(&config.client).await?;
    let mfa_code = match mfa_code {
        Some(code) => Some(code),
        // Ask the proxy whether this identity's rules want a TOTP code
        // (whoami never does), and ask the person at the terminal for one.
        None if client.whoami().await?.mfa => Some(prompt_totp()?),
        None => None,
    };
    Ok(Ctx { config, client: client.with_totp(mfa_code), provider })
}

/// Reads a TOTP code from the terminal, or says how to pass one.
fn prompt_totp() -> Result<String, Failure> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let missing = || {
        usage(anyhow::anyhow!("the policy asks this identity for a TOTP code: pass --mfa-code or set COFFER_MFA_CODE"))
    };
    if !std::io::stderr().is_terminal() {
        return Err(missing());
    }
    let tty = std::fs::File::open("/dev/tty").map_err(|_| missing())?;
    eprint!("TOTP code: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::BufReader::new(tty).read_line(&mut line).map_err(|_| missing())?;
    Ok(line.trim().to_string())
}

impl Ctx {
    async fn open(self, name: RepoName) -> Result<(AgentConfig, Arc<OpenRepo>), Failure> {
        let b = &self.config.backup;
        let legacy_ok = b.legacy_repos.contains(&name);
        let limits = coffer_agent::limit::Limits::new(b.limit_upload_kib, b.limit_download_kib);
        let repo = OpenRepo::open(self.client, self.provider, name, legacy_ok)
            .await?
            .with_limits(limits)
            .with_memory(self.config.state_dir.as_deref(), &self.config.client.proxy);
        Ok((self.config, Arc::new(repo)))
    }
}

fn print_json(v: &impl Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The global flags the repository commands take.
struct Flags {
    /// `--limit-upload`, `--limit-download`.
    limits: (Option<u64>, Option<u64>),
    progress: ProgressMode,
}

impl Flags {
    /// `--progress`, where `auto` shows nothing beside `--json`.
    fn mode(&self, json: bool) -> ProgressMode {
        if json && self.progress == ProgressMode::Auto {
            ProgressMode::None
        } else {
            self.progress
        }
    }

    fn progress(&self, action: Action, json: bool) -> Progress {
        Progress::new(self.mode(json), action)
    }
}

async fn run_repo(
    config: Option<PathBuf>,
    mfa_code: Option<String>,
    flags: Flags,
    command: RepoCmd,
) -> Result<(), Failure> {
    let (limit_upload, limit_download) = flags.limits;
    let mut ctx = connect(config, mfa_code).await?;
    let limits = &mut ctx.config.backup;
    limits.limit_upload_kib = limit_upload.or(limits.limit_upload_kib);
    limits.limit_download_kib = limit_download.or(limits.limit_download_kib);
    match command {
        RepoCmd::Init { repo, zstd_level, json } => {
            let kek = ctx.provider.describe_key(coffer_proto::keys::Purpose::ChunkId).await?.kek;
            repo::init(&ctx.client, &*ctx.provider, &repo, zstd_level).await?;
            if json {
                print_json(&cli::output::Initialised { repo, chunk_id_kek: kek, zstd_level })?;
            } else {
                println!("initialised repository {repo} (chunk-id key wrapped by {kek}, zstd level {zstd_level})");
            }
        }
        RepoCmd::Backup { repo, name, json, input, command } => {
            let (source, name) = source_and_name(input, command, name)?;
            if matches!(source, Source::Stdin) && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!(
                    "coffer: backing up stdin; a producer that fails in a pipe still ends the stream cleanly, \
                     so prefer `coffer backup --repo R -- CMD [ARGS...]`, which commits only if CMD exits 0"
                );
            }
            let (config, repo) = ctx.open(repo).await?;
            let report = backup::run(repo, source, name, config.backup.uploads_in_flight, flags.mode(json)).await?;
            if json {
                print_json(&report)?;
            } else {
                eprintln!(
                    "backed up {} bytes in {} chunks: {} new bytes in {} chunks ({} stored), {:.1}s",
                    report.bytes_in,
                    report.chunks,
                    report.bytes_new,
                    report.chunks_new,
                    report.stored_new,
                    report.duration_secs
                );
                println!("{}", report.id);
            }
        }
        RepoCmd::Restore { repo, snapshot, output, mode, json } => {
            let (config, repo) = ctx.open(repo).await?;
            let mut progress = flags.progress(Action::Restore, json);
            let to = cli::restore::To { output, mode, json };
            cli::restore::run(repo, snapshot, to, config.backup.uploads_in_flight, &mut progress).await?;
        }
        RepoCmd::Snapshots { repo, json } => {
            // An identity that may list but not read (an auditor) gets what
            // the proxy knows: ids, times and stats, never the roots.
            let whoami = ctx.client.whoami().await?;
            if !whoami.roles.iter().any(|r| r == "reader") {
                let list = ctx.client.list_snapshots(&repo).await.map_err(cli::listing::denied_hint)?;
                // An auditor remembers what it saw, as a reader does.
                let memory = ctx.config.state_dir.as_deref().map(|d| Memory::at(d, &ctx.config.client.proxy, &repo));
                let lost = coffer_agent::memory::check_listing(memory.as_ref(), &list);
                if json {
                    print_json(&list)?;
                } else {
                    for s in &list {
                        let when = coffer_agent::memory::rfc3339(s.committed);
                        println!("{}  {when}  {:>14} bytes", s.id, s.stats.bytes_in);
                    }
                }
                eprintln!("coffer: metadata only: {} may list snapshots but not read their roots", whoami.identity);
                if !lost.is_empty() {
                    return Err(cli::listing::went_backwards(&lost).into());
                }
                return Ok(());
            }
            let (_, repo) = ctx.open(repo).await?;
            let cli::listing::Listing { listed: list, unreadable, lost } = cli::listing::list_snapshots(&repo).await?;
            if json {
                print_json(&list)?;
            } else {
                for s in &list {
                    let when = coffer_agent::memory::rfc3339(s.committed);
                    println!("{}  {when}  {:>14} bytes  {}  ({})", s.id, s.bytes, s.name, s.source);
                }
            }
            for e in &unreadable {
                eprintln!("coffer: {e}");
            }
            let mut failed = Vec::new();
            if !unreadable.is_empty() {
                failed.push(format!(
                    "{} of {} snapshots could not be read (listed: the others); run `coffer verify`",
                    unreadable.len(),
                    unreadable.len() + list.len()
                ));
            }
            if !lost.is_empty() {
                failed.push(cli::listing::went_backwards(&lost).to_string());
            }
            if !failed.is_empty() {
                return Err(anyhow::anyhow!("{}", failed.join("; ")).into());
            }
        }
        RepoCmd::Verify { repo, snapshot, since, json, read_data_subset } => {
            let (config, repo) = ctx.open(repo).await?;
            let which = cli::verify::Which { snapshot, since, subset: read_data_subset };
            let mut progress = flags.progress(Action::Verify, json);
            cli::verify::run(&repo, config.backup.uploads_in_flight, which, json, &mut progress).await?;
        }
        RepoCmd::Whoami => print_json(&ctx.client.whoami().await?)?,
        RepoCmd::Key { command: KeyCmd::Rotate { repo, json } } => {
            let id = repo::rotate(&ctx.client, &*ctx.provider, &repo).await?;
            if json {
                print_json(&cli::output::Rotated { repo, epoch: id })?;
            } else {
                println!(
                    "repository {repo}: new chunk-id key epoch {id}; deduplication starts over from the next backup"
                );
            }
        }
    }
    Ok(())
}
