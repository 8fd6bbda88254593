//! `coffer-proxy`: the mTLS gateway in front of the backup store.
//!
//! Exit codes (`coffer_client::exit`, shared with `coffer`): 0 success or
//! a clean stop, 1 runtime failure, 64 usage or configuration error
//! (reported before any socket is bound), 130 interrupted.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{fail, AlertsCmd, Cli, Cmd, KeysCmd, LifecycleCmd};
use coffer_client::exit::USAGE;

/// jemalloc in every build, tuned in .cargo/config.toml: musl's allocator
/// is slow with many threads, and glibc's keeps 20 to 30 MiB of freed chunk
/// buffers in per-thread arenas (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { USAGE } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = cli.config;
    match cli.command {
        Some(Cmd::Completions { shell }) => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "coffer-proxy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Cmd::Man) => {
            use clap::CommandFactory as _;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(coffer_client::exit::FAILURE, format!("writing the manual page: {e}")),
            }
        }
        Some(Cmd::Dev { dir, action: Some(action), .. }) => cli::serve::dev_action(&dir, action),
        Some(Cmd::Dev { dir, listen, action: None }) => cli::serve::dev(dir, listen, cli.check_config),
        Some(Cmd::Policy { command }) => cli::policy::policy_command(config, command),
        Some(Cmd::Admin { command }) => cli::admin::admin_command(config, command),
        Some(Cmd::Audit { command }) => cli::audit::audit_command(config, command),
        Some(Cmd::Alerts { command: AlertsCmd::Test }) => cli::reports::alerts_test(config),
        Some(Cmd::Keys { command: KeysCmd::Report { json } }) => cli::reports::keys_report(config, json),
        Some(Cmd::Report { format, output, since }) => cli::reports::compliance_report(config, &format, output, since),
        Some(Cmd::Assess { json }) => cli::reports::assess(config, json),
        Some(Cmd::Keygen { out }) => match coffer_proxy::dev::keygen(&out) {
            Ok(id) => {
                println!("{}: new master key {id} (mode 0600); back it up apart from the store", out.display());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => fail(coffer_client::exit::FAILURE, e),
        },
        Some(Cmd::Lifecycle { command: LifecycleCmd::Plan { repo, json } }) => {
            cli::reports::lifecycle_plan(config, repo.as_ref(), json)
        }
        None => match config {
            Some(path) => cli::serve::run(&path, None, None, cli.check_config),
            None => fail(
                USAGE,
                "no configuration: pass --config FILE (or set COFFER_PROXY_CONFIG), or try `coffer-proxy dev --dir DIR` \
                 for a self-contained dev proxy",
            ),
        },
    }
}
