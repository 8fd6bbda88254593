//! The command line of `coffer`, as clap reads it. `--config` and
//! `--mfa-code` are global, so they may come before or after the subcommand.

pub(crate) mod listing;
pub(crate) mod output;
pub(crate) mod restore;
pub(crate) mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use coffer_agent::progress::ProgressMode;
use coffer_proto::{RepoName, SnapshotId};

#[derive(Parser)]
#[command(name = "coffer", version, about = "Coffer backup agent: encrypted, deduplicated, write-once backups")]
pub(crate) struct Cli {
    /// Agent configuration file (TOML).
    #[arg(long, global = true, env = "COFFER_CONFIG")]
    pub config: Option<PathBuf>,
    /// A TOTP code, for repositories whose policy asks for MFA.
    #[arg(long, global = true, env = "COFFER_MFA_CODE", hide_env_values = true)]
    pub mfa_code: Option<String>,
    /// Check the configuration (the file, the certificate and key, the key
    /// provider, the jobs' schedules) without connecting, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Upload at most this many KiB/s (default: `backup.limit_upload_kib`).
    #[arg(long, global = true, value_name = "KIB_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_upload: Option<u64>,
    /// Download (restore, verify) at most this many KiB/s (default:
    /// `backup.limit_download_kib`).
    #[arg(long, global = true, value_name = "KIB_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_download: Option<u64>,
    /// Progress of backup, restore and verify on stderr: `auto`, a line
    /// on a terminal (not with `--json`); `json`, one JSON object a second,
    /// terminal or not; `none`.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    #[command(flatten)]
    Repo(RepoCmd),
    /// Print shell completions, e.g. `coffer completions bash >
    /// /etc/bash_completion.d/coffer`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `coffer man > coffer.1`.
    Man,
    /// Run the config's [[jobs]] on their schedules, and the sidecar socket
    /// if configured, until SIGTERM or SIGINT.
    Daemon {
        /// How to write log lines to stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Run one configured job now and exit (for systemd timers or cron).
    Run {
        /// The job's name in the config.
        job: String,
    },
    /// Stream a backup to a daemon's socket (sidecar mode): needs no config,
    /// certificate or key, only access to the socket. Prints the snapshot id.
    Send {
        /// The daemon's socket (its `daemon.socket`).
        #[arg(long, env = "COFFER_SOCKET", default_value = "/run/coffer/coffer.sock")]
        socket: PathBuf,
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// A name for the snapshot (default: the source).
        #[arg(long)]
        name: Option<String>,
        /// `-` (stdin) or a file path.
        #[arg(conflicts_with = "command")]
        input: Option<String>,
        /// A command whose stdout is sent, after `--`; the stream is
        /// committed only if it exits 0.
        #[arg(last = true, num_args = 1..)]
        command: Vec<String>,
        /// Print the result as one JSON object (docs/operations.md, "JSON output").
        #[arg(long)]
        json: bool,
        // `send` talks to the daemon, which holds the config: these stand in
        // for the global flags of the same name, so its help does not offer
        // them (nor the upload limits and progress, which are the daemon's).
        // Accepted, as before, and ignored.
        #[arg(long, hide = true)]
        config: Option<PathBuf>,
        #[arg(long, hide = true)]
        mfa_code: Option<String>,
        #[arg(long, hide = true)]
        limit_upload: Option<u64>,
        #[arg(long, hide = true)]
        limit_download: Option<u64>,
        #[arg(long, hide = true, value_enum)]
        progress: Option<ProgressMode>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands that talk to the proxy with this host's certificate.
#[derive(Subcommand)]
pub(crate) enum RepoCmd {
    /// Create a repository: its config and wrapped chunk-id key.
    Init {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// zstd level for its chunks, 1 (fastest) to 19; fixed for the
        /// repository's life (docs/performance.md compares levels).
        #[arg(long, default_value_t = coffer_proto::repo::DEFAULT_ZSTD_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: i32,
        /// Print the result as one JSON object (docs/operations.md, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Back up a stream: `-` for stdin, a PATH, or `-- CMD [ARGS...]`.
    ///
    /// With a command, the snapshot is committed only if it exits 0.
    /// Prints the snapshot id as the last line of stdout.
    Backup {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// A name for the snapshot (default: the source).
        #[arg(long)]
        name: Option<String>,
        /// Print one JSON object instead of the id.
        #[arg(long)]
        json: bool,
        /// `-` (stdin) or a file path.
        #[arg(conflicts_with = "command")]
        input: Option<String>,
        /// A command whose stdout is backed up, after `--`.
        #[arg(last = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Restore a snapshot to stdout, or to FILE with `-o` (written only if the
    /// whole snapshot checks out).
    Restore {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// The snapshot's id (32 hex digits), as `backup` printed it or
        /// `snapshots` lists it.
        snapshot: SnapshotId,
        /// Write the stream to FILE (mode 0600; put in place only once the
        /// whole snapshot checked out) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The file's mode once complete, in octal (it is 0600 while written).
        #[arg(long, requires = "output", default_value = "0600", value_parser = restore::parse_mode)]
        mode: u32,
        /// Print what was written as one JSON object (with `-o` only: without
        /// it, stdout is the stream; docs/operations.md, "JSON output").
        #[arg(long, requires = "output")]
        json: bool,
    },
    /// List a repository's snapshots.
    Snapshots {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// Print a JSON array (id, committed, name, host, source, bytes, stats).
        #[arg(long)]
        json: bool,
    },
    /// Fetch, decrypt, decompress and re-hash every chunk of one snapshot, or
    /// of all of them, or of those committed lately (`--since`).
    Verify {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// One snapshot's id (default: every snapshot of the repository).
        #[arg(conflicts_with = "since")]
        snapshot: Option<SnapshotId>,
        /// Only the snapshots committed within this long before now, e.g.
        /// `26h` or `7days`: what a reader run daily on a timer checks, so a
        /// damaged or poisoned snapshot is found the day it is made.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Read only part of the data: `N/M` (the N-th of M groups of chunk
        /// ids, the same each time: run 1/M to M/M on M days) or `P%` (a new
        /// random sample each run). Roots and manifests are always read in
        /// full; the whole-stream hash is checked only without this.
        #[arg(long, value_name = "N/M|P%")]
        read_data_subset: Option<coffer_agent::restore::Subset>,
        /// Print the result as one JSON object (docs/operations.md, "JSON output").
        #[arg(long)]
        json: bool,
    },
    /// Show who the proxy thinks this agent is, and what it may do.
    Whoami,
    /// Key management.
    Key {
        #[command(subcommand)]
        command: KeyCmd,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// Start a new chunk-id key epoch: later backups name chunks with a new
    /// key (deduplication starts over); older snapshots restore as before.
    Rotate {
        /// The repository, e.g. `prod/db` (lowercase segments, up to 4).
        #[arg(long)]
        repo: RepoName,
        /// Print the result as one JSON object (docs/operations.md, "JSON output").
        #[arg(long)]
        json: bool,
    },
}
