//! `coffer-proxy admin`: enrollment (local), and calls to a running proxy
//! that need the admin role and a fresh TOTP code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use coffer_client::exit::{FAILURE, USAGE};
use coffer_proto::RepoName;
use coffer_proxy::access::policy::Action;
use coffer_proxy::config::ProxyConfig;

use super::{block_on, fail};

#[derive(Subcommand)]
pub(crate) enum AdminCmd {
    /// Give an identity a TOTP secret (in admin.totp_file of --config) and
    /// print the otpauth:// URI for an authenticator app.
    Enroll {
        /// The identity's trust domain (a name in the config's [[trust_domains]]).
        #[arg(long)]
        trust_domain: String,
        /// The identity, as its certificate's SAN URI (e.g. spiffe://prod/db-1).
        #[arg(long)]
        identity: String,
    },
    /// Deny an identity of your own trust domain from now on, on every
    /// proxy of the store (survives restarts); --lift reinstates it.
    Revoke {
        #[command(flatten)]
        call: AdminCall,
        /// The identity's trust domain (a name in the config's [[trust_domains]]).
        #[arg(long)]
        trust_domain: String,
        /// The identity, as its certificate's SAN URI (e.g. spiffe://prod/db-1).
        #[arg(long)]
        identity: String,
        /// Reinstate the identity (refused during lockdown).
        #[arg(long)]
        lift: bool,
    },
    /// Make everything an identity of your own trust domain uploaded so far
    /// stop counting for its dedup, on every proxy of the store: its next
    /// backup uploads all its data again (after a host compromise, so no
    /// chunk it may have planted is used). Allowed during lockdown.
    Quarantine {
        #[command(flatten)]
        call: AdminCall,
        /// The identity's trust domain (a name in the config's [[trust_domains]]).
        #[arg(long)]
        trust_domain: String,
        /// The identity, as its certificate's SAN URI (e.g. spiffe://prod/db-1).
        #[arg(long)]
        identity: String,
    },
    /// Make the proxy reload its configuration file.
    Reload {
        #[command(flatten)]
        call: AdminCall,
    },
    /// Put (set) or lift (clear) a legal hold on a snapshot, or on every
    /// snapshot of a repository, and every object it references.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// Delete snapshots whose retention ended (unless held) and then chunks
    /// nothing references whose locks ended; --dry-run lists exactly what
    /// would go and why.
    Expire {
        #[command(flatten)]
        call: AdminCall,
        /// The repository to expire.
        #[arg(long)]
        repo: RepoName,
        /// List what would be deleted and why; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// From now on serve only reads; --lift ends it.
    Lockdown {
        #[command(flatten)]
        call: AdminCall,
        /// End the lockdown: serve writes again.
        #[arg(long)]
        lift: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum HoldAction {
    /// Put a legal hold: nothing the snapshot needs can be deleted, even
    /// after its retention ends, until the hold is cleared.
    Set {
        #[command(flatten)]
        call: AdminCall,
        /// The repository.
        #[arg(long)]
        repo: RepoName,
        /// One snapshot (default: every snapshot of the repository).
        #[arg(long)]
        snapshot: Option<coffer_proto::SnapshotId>,
    },
    /// Lift a legal hold (refused during lockdown); what another held
    /// snapshot needs keeps its hold.
    Clear {
        #[command(flatten)]
        call: AdminCall,
        /// The repository.
        #[arg(long)]
        repo: RepoName,
        /// One snapshot (default: every snapshot of the repository).
        #[arg(long)]
        snapshot: Option<coffer_proto::SnapshotId>,
    },
}

#[derive(clap::Args)]
pub(crate) struct AdminCall {
    /// Agent-style config presenting the admin certificate.
    #[arg(long, env = "COFFER_ADMIN_CONFIG")]
    client_config: PathBuf,
    /// The current TOTP code of that admin identity: `-` reads it from
    /// stdin; left out, it is asked for on the terminal. (A code given
    /// here shows in the process list until it is used.)
    #[arg(long, env = "COFFER_MFA_CODE", hide_env_values = true)]
    totp: Option<String>,
}

/// The admin's TOTP code: from `--totp` (or `-` for stdin), else asked on
/// the terminal, never echoed into a process list.
pub(crate) fn admin_code(given: Option<String>) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal as _, Write as _};
    let read_line = |r: &mut dyn BufRead| {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("reading the TOTP code: {e}"))?;
        match line.trim() {
            "" => Err("no TOTP code was given".to_string()),
            code => Ok(code.to_string()),
        }
    };
    match given.as_deref() {
        Some("-") => read_line(&mut std::io::stdin().lock()),
        Some(code) => Ok(code.to_string()),
        None => {
            let missing = "an admin call needs a TOTP code: type it when asked (on a terminal), \
                           pass it on stdin with --totp -, or set COFFER_MFA_CODE";
            let tty = std::io::stderr().is_terminal().then(|| std::fs::File::open("/dev/tty").ok()).flatten();
            let tty = tty.ok_or_else(|| missing.to_string())?;
            eprint!("TOTP code: ");
            let _ = std::io::stderr().flush();
            read_line(&mut std::io::BufReader::new(tty))
        }
    }
}

pub(crate) fn admin_command(config: Option<PathBuf>, command: AdminCmd) -> ExitCode {
    let (call, what, body) = match command {
        AdminCmd::Enroll { trust_domain, identity } => {
            let Some(path) = config else {
                return fail(USAGE, "enroll needs the proxy's --config (for admin.totp_file)");
            };
            let cfg = match ProxyConfig::load(&path) {
                Ok(c) => c,
                Err(e) => return fail(USAGE, e.to_string()),
            };
            return match coffer_proxy::access::mfa::enroll(&cfg.admin.totp_file, &trust_domain, &identity) {
                Ok(uri) => {
                    println!("{}", *uri);
                    eprintln!(
                        "enrolled {identity} (trust domain {trust_domain}); load the URI above into an authenticator"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(FAILURE, &e),
            };
        }
        AdminCmd::Revoke { call, trust_domain, identity, lift } => (
            call,
            Action::AdminRevoke,
            serde_json::json!({"trust_domain": trust_domain, "identity": identity, "revoked": !lift}),
        ),
        AdminCmd::Quarantine { call, trust_domain, identity } => {
            (call, Action::AdminQuarantine, serde_json::json!({"trust_domain": trust_domain, "identity": identity}))
        }
        AdminCmd::Reload { call } => (call, Action::AdminReload, serde_json::json!({})),
        AdminCmd::Lockdown { call, lift } => (call, Action::AdminLockdown, serde_json::json!({ "on": !lift })),
        AdminCmd::Expire { call, repo, dry_run } => {
            (call, Action::AdminExpire, serde_json::json!({ "repo": repo, "dry_run": dry_run }))
        }
        AdminCmd::Hold { action } => {
            let (call, repo, snapshot, on) = match action {
                HoldAction::Set { call, repo, snapshot } => (call, repo, snapshot, true),
                HoldAction::Clear { call, repo, snapshot } => (call, repo, snapshot, false),
            };
            (call, Action::AdminHold, serde_json::json!({ "repo": repo, "snapshot": snapshot, "on": on }))
        }
    };
    let client_config = match coffer_client::ClientConfig::load(&call.client_config) {
        Ok(c) => c,
        Err(e) => return fail(USAGE, e.to_string()),
    };
    let code = match admin_code(call.totp) {
        Ok(code) => code,
        Err(e) => return fail(USAGE, &e),
    };
    let done = block_on(async {
        let client = coffer_client::ProxyClient::connect(&client_config).await?.with_totp(Some(code));
        client.admin(what, &body).await
    });
    match done {
        Ok(answer) => {
            let what = what.name().trim_start_matches("admin-");
            println!("{what}: ok {}", String::from_utf8_lossy(&answer));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
