//! `coffer-proxy`: the mTLS gateway in front of the backup store.
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 64 usage or configuration
//! error (reported before any socket is bound).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coffer_proxy::config::ProxyConfig;
use coffer_proxy::{dev, server};

const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "coffer-proxy", version, about = "Coffer proxy: mTLS gateway, policy, audit, write-once store")]
struct Cli {
    /// Proxy configuration file (TOML).
    #[arg(long, env = "COFFER_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration, print the effective policy, and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a self-contained dev proxy: CA, certificates, master key, policy
    /// and store in DIR, created on first start and reused after.
    Dev {
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (default 127.0.0.1:7443 on first start,
        /// then what proxy.toml says). Port 0 picks a free port.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    let (path, dev_dir, listen) = match cli.command {
        Some(Cmd::Dev { dir, listen }) => match dev::prepare(&dir, listen) {
            Ok(path) => (path, Some(dir), listen),
            Err(e) => return fail(EXIT_USAGE, &e),
        },
        None => match cli.config {
            Some(path) => (path, None, None),
            None => return fail(EXIT_USAGE, "no configuration: pass --config FILE or set COFFER_PROXY_CONFIG"),
        },
    };
    let mut config = match ProxyConfig::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, &e.to_string()),
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    if cli.check_config {
        if let Err(e) = server::check(&config) {
            return fail(EXIT_USAGE, &e);
        }
        println!("{}: ok", path.display());
        for line in config.policy().map(|p| p.describe()).unwrap_or_default() {
            println!("  {line}");
        }
        return ExitCode::SUCCESS;
    }
    let proxy = match server::build(&config) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, &e),
    };

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, &format!("cannot start the runtime: {e}")),
    };
    let ready = |addr: SocketAddr| match &dev_dir {
        Some(dir) => {
            if let Err(e) = dev::announce(dir, addr) {
                tracing::error!("{e}");
            }
        }
        None => tracing::info!("listening on {addr}"),
    };
    match runtime.block_on(proxy.serve(ready, server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_FAILURE, &format!("cannot listen on {}: {e}", config.listen)),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("coffer-proxy: {message}");
    ExitCode::from(code)
}
