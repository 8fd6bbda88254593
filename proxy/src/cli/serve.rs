//! Running the proxy: from `--config`, or as `coffer-proxy dev`; and
//! `--check-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use coffer_client::exit::{FAILURE, USAGE};
use coffer_proxy::config::ProxyConfig;
use coffer_proxy::{dev, server};

use super::{fail, runtime, DevCmd};

/// `coffer-proxy dev --dir DIR issue|revoke`.
pub(crate) fn dev_action(dir: &Path, action: DevCmd) -> ExitCode {
    let done = match action {
        DevCmd::Issue { name, identity, days, wrong_usage } => dev::issue(dir, &name, &identity, days, wrong_usage),
        DevCmd::Revoke { name } => dev::revoke(dir, &name),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(USAGE, &e),
    }
}

/// `coffer-proxy dev --dir DIR`: prepares DIR on first start, then runs.
pub(crate) fn dev(dir: PathBuf, listen: Option<SocketAddr>, check_config: bool) -> ExitCode {
    match dev::prepare(&dir, listen) {
        Ok(path) => run(&path, Some(&dir), listen, check_config),
        Err(e) => fail(USAGE, &e),
    }
}

/// Runs the proxy configured in `path` until SIGTERM or SIGINT (or, with
/// `check_config`, checks it and prints the effective policy).
pub(crate) fn run(path: &Path, dev_dir: Option<&Path>, listen: Option<SocketAddr>, check_config: bool) -> ExitCode {
    let mut config = match ProxyConfig::load(path) {
        Ok(c) => c,
        Err(e) => return fail(USAGE, e.to_string()),
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if check_config {
        if let Err(e) = runtime.block_on(server::check(&config)) {
            return fail(USAGE, &e);
        }
        println!("{}: ok", path.display());
        for line in config.policy().map(|p| p.describe()).unwrap_or_default() {
            println!("  {line}");
        }
        return ExitCode::SUCCESS;
    }
    let proxy = match runtime.block_on(server::build(&config, path)) {
        Ok(p) => p,
        Err(e) => return fail(USAGE, &e),
    };
    let ready = |addr: SocketAddr| match dev_dir {
        Some(dir) => {
            if let Err(e) = dev::announce(dir, addr) {
                tracing::error!("{e}");
            }
        }
        None => {
            println!("coffer-proxy: listening on {addr}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
    };
    match runtime.block_on(proxy.serve(ready, server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(FAILURE, format!("cannot listen on {}: {e}", config.listen)),
    }
}
