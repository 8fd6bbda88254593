//! The command line of `coffer-proxy`: one file per group of subcommands.
//! `--config` is global, so it may come before or after the subcommand.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod policy;
pub(crate) mod reports;
pub(crate) mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coffer_client::exit::{FAILURE, INTERRUPTED, USAGE};
use coffer_proxy::config::ProxyConfig;
use coffer_proxy::dev;

#[derive(Parser)]
#[command(name = "coffer-proxy", version, about = "Coffer proxy: mTLS gateway, policy, audit, write-once store")]
pub(crate) struct Cli {
    /// Proxy configuration file (TOML).
    #[arg(long, env = "COFFER_PROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective policy, and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Run a self-contained dev proxy: CA, certificates, master key, policy
    /// and store in DIR, created on first start and reused after.
    Dev {
        /// The dev folder: made on first start, reused after.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (default 127.0.0.1:7443 on first start,
        /// then what proxy.toml says). Port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[command(subcommand)]
        action: Option<DevCmd>,
    },
    /// Questions about the policy in the configuration file.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCmd,
    },
    /// Alerts: send a test alert to the configured webhook, and say whether
    /// it took it.
    Alerts {
        #[command(subcommand)]
        command: AlertsCmd,
    },
    /// The compliance report: per repository, classification, policy, last
    /// snapshot and RPO, sizes and ratios, KEKs and rotation, locks,
    /// residency, legal holds, audit chain status and alerts.
    Report {
        /// `json`, or `html` (one self-contained page with charts).
        #[arg(long, default_value = "json")]
        format: String,
        /// Write it here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// List alerts from this time on (unix seconds; default: 30 days ago).
        #[arg(long)]
        since: Option<u64>,
    },
    /// Check the deployment as an auditor would; print findings with their
    /// severity and fix. Exits 1 if any finding is high.
    Assess {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A repository's schedule (`keep` in its repo policy): which snapshots
    /// it keeps and why ("monthly 2026-10"), until when, and which it lets
    /// go and when their locks end. Reads the store; changes nothing.
    Lifecycle {
        #[command(subcommand)]
        command: LifecycleCmd,
    },
    /// Print shell completions, e.g. `coffer-proxy completions bash >
    /// /etc/bash_completion.d/coffer-proxy`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `coffer-proxy man > coffer-proxy.1`.
    Man,
    /// Make a local master key (for `keys.provider = "local"`): mode 0600,
    /// never over an existing file. Prints its id, not the key.
    Keygen {
        /// Where to write it.
        #[arg(long, default_value = "/etc/coffer/master.key")]
        out: PathBuf,
    },
    /// Keys: which KEKs wrapped which data keys, and each KEK's state.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// The audit trail: verify it, or search it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCmd,
    },
    /// Admin operations: enrollment (local), and calls to a running proxy
    /// that need the admin role and a fresh TOTP code.
    Admin {
        #[command(subcommand)]
        command: admin::AdminCmd,
    },
}

#[derive(Subcommand)]
pub(crate) enum LifecycleCmd {
    /// Print the plan (JSON with --json): what each schedule keeps and
    /// until when, what it lets go, and what could be deleted now.
    Plan {
        /// One repository (default: every repository with a schedule).
        #[arg(long)]
        repo: Option<coffer_proto::RepoName>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum KeysCmd {
    /// Print the report (JSON with --json).
    Report {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum AlertsCmd {
    /// POST a test alert to alerts.webhook now (not through the spool).
    Test,
}

#[derive(Subcommand)]
pub(crate) enum DevCmd {
    /// Issue a client certificate from the dev CA (the policy still decides
    /// what it may do).
    Issue {
        /// File name: NAME.pem, NAME.key, NAME.toml.
        #[arg(long)]
        name: String,
        /// The identity, as a SAN URI (e.g. spiffe://coffer.dev/host-1).
        #[arg(long)]
        identity: String,
        /// Validity in days; negative gives an expired certificate.
        #[arg(long, default_value_t = dev::DEFAULT_DAYS, allow_negative_numbers = true)]
        days: i64,
        /// Issue it for server authentication instead of client
        /// authentication: a certificate the proxy must refuse (for tests).
        #[arg(long, hide = true)]
        wrong_usage: bool,
    },
    /// Revoke NAME.pem through the dev CRL (applied on SIGHUP or restart).
    Revoke {
        /// The certificate's file name, without .pem (as `dev issue --name`).
        #[arg(long)]
        name: String,
    },
}

pub(crate) fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("coffer-proxy: {message}");
    ExitCode::from(code)
}

/// The configuration file named by `--config` or `COFFER_PROXY_CONFIG`,
/// loaded; a usage error (already printed) otherwise.
/// A runtime for one command; exit 1 if it cannot start.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| fail(FAILURE, format!("cannot start the runtime: {e}")))
}

/// Runs a one-shot command's async work; exit 1 with its error if it fails.
/// Ctrl-C stops it with exit 130.
pub(crate) fn block_on<T, E: std::fmt::Display>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ExitCode> {
    runtime()?.block_on(async {
        tokio::select! {
            done = work => done.map_err(|e| fail(FAILURE, e.to_string())),
            _ = tokio::signal::ctrl_c() => Err(fail(INTERRUPTED, "interrupted")),
        }
    })
}

pub(crate) fn load_config(config: Option<PathBuf>) -> Result<ProxyConfig, ExitCode> {
    let Some(path) = config else {
        return Err(fail(USAGE, "no configuration: pass --config FILE or set COFFER_PROXY_CONFIG"));
    };
    ProxyConfig::load(&path).map_err(|e| fail(USAGE, e.to_string()))
}
