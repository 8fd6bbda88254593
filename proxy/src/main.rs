//! `coffer-proxy`: the mTLS gateway in front of the backup store.
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 64 usage or configuration
//! error (reported before any socket is bound).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coffer_proto::RepoName;
use coffer_proxy::access::identity::Identity;
use coffer_proxy::access::policy::{AccessRequest, Action};
use coffer_proxy::config::ProxyConfig;
use coffer_proxy::{dev, server};

/// jemalloc in every build, tuned in .cargo/config.toml: musl's allocator
/// is slow with many threads, and glibc's keeps 20 to 30 MiB of freed chunk
/// buffers in per-thread arenas (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        #[command(subcommand)]
        action: Option<DevCmd>,
    },
    /// Questions about the policy in the configuration file.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
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
    /// Keys: which KEKs wrapped which data keys, and each KEK's state.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// The audit trail: verify it, or search it.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Admin operations: enrollment (local), and calls to a running proxy
    /// that need the admin role and a fresh TOTP code.
    Admin {
        #[command(subcommand)]
        command: AdminCmd,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Print the report (JSON with --json).
    Report {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertsCmd {
    /// POST a test alert to alerts.webhook now (not through the spool).
    Test,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check every sealed segment and the live log from event 1; report the
    /// first broken link (edited, deleted or reordered event, missing or
    /// truncated segment, bad signature). Exits 0 if whole, 1 if broken.
    Verify {
        /// Verify the segments shipped to the object store instead of the
        /// local spool.
        #[arg(long)]
        store: bool,
        /// The audit public key, hex (default: the .pub beside the signing key).
        #[arg(long)]
        public_key: Option<String>,
        /// With --store: a file of the `audit-seal` alerts the webhook
        /// received (one per line, as stored; the messages alone do too).
        /// Every segment it names must be in the store with that BLAKE3, so
        /// a trail re-chained and re-signed on the proxy host is caught.
        #[arg(long, requires = "store")]
        seals: Option<PathBuf>,
    },
    /// Print matching events as JSON lines (for investigations and SIEMs).
    Query {
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Only events at or after this time (unix seconds).
        #[arg(long)]
        since: Option<u64>,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Give an identity a TOTP secret (in admin.totp_file of --config) and
    /// print the otpauth:// URI for an authenticator app.
    Enroll {
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        identity: String,
    },
    /// Deny an identity of your own trust domain from now on, on every
    /// proxy of the store (survives restarts); --lift reinstates it.
    Revoke {
        #[command(flatten)]
        call: AdminCall,
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        identity: String,
        /// Reinstate the identity (refused during lockdown).
        #[arg(long)]
        lift: bool,
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
        #[arg(long)]
        repo: RepoName,
        #[arg(long)]
        dry_run: bool,
    },
    /// From now on serve only reads; --lift ends it.
    Lockdown {
        #[command(flatten)]
        call: AdminCall,
        #[arg(long)]
        lift: bool,
    },
}

#[derive(Subcommand)]
enum HoldAction {
    Set {
        #[command(flatten)]
        call: AdminCall,
        #[arg(long)]
        repo: RepoName,
        #[arg(long)]
        snapshot: Option<coffer_proto::SnapshotId>,
    },
    Clear {
        #[command(flatten)]
        call: AdminCall,
        #[arg(long)]
        repo: RepoName,
        #[arg(long)]
        snapshot: Option<coffer_proto::SnapshotId>,
    },
}

#[derive(clap::Args)]
struct AdminCall {
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
fn admin_code(given: Option<String>) -> Result<String, String> {
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

#[derive(Subcommand)]
enum PolicyCmd {
    /// Answer "may this identity do this action on this repository from this
    /// address?" with the rule that decided. Exits 0 for allow, 1 for deny.
    Explain {
        #[arg(long)]
        trust_domain: String,
        #[arg(long)]
        identity: String,
        /// An action name: whoami, put-config, get-config, put-key, get-key,
        /// missing, put-chunk, get-chunk, commit, list-snapshots, get-snapshot.
        #[arg(long)]
        action: String,
        #[arg(long)]
        repo: Option<RepoName>,
        #[arg(long, default_value = "127.0.0.1")]
        from: IpAddr,
    },
}

#[derive(Subcommand)]
enum DevCmd {
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
        #[arg(long)]
        name: String,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let (path, dev_dir, listen) = match cli.command {
        Some(Cmd::Dev { dir, action: Some(action), .. }) => {
            let done = match action {
                DevCmd::Issue { name, identity, days, wrong_usage } => {
                    dev::issue(&dir, &name, &identity, days, wrong_usage)
                }
                DevCmd::Revoke { name } => dev::revoke(&dir, &name),
            };
            return match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_USAGE, &e),
            };
        }
        Some(Cmd::Dev { dir, listen, action: None }) => match dev::prepare(&dir, listen) {
            Ok(path) => (path, Some(dir), listen),
            Err(e) => return fail(EXIT_USAGE, &e),
        },
        Some(Cmd::Policy { command }) => return policy_command(cli.config, command),
        Some(Cmd::Admin { command }) => return admin_command(cli.config, command),
        Some(Cmd::Audit { command }) => return audit_command(cli.config, command),
        Some(Cmd::Alerts { command: AlertsCmd::Test }) => return alerts_test(cli.config),
        Some(Cmd::Keys { command: KeysCmd::Report { json } }) => return keys_report(cli.config, json),
        Some(Cmd::Report { format, output, since }) => return compliance_report(cli.config, &format, output, since),
        Some(Cmd::Assess { json }) => return assess(cli.config, json),
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
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if cli.check_config {
        if let Err(e) = runtime.block_on(server::check(&config)) {
            return fail(EXIT_USAGE, &e);
        }
        println!("{}: ok", path.display());
        for line in config.policy().map(|p| p.describe()).unwrap_or_default() {
            println!("  {line}");
        }
        return ExitCode::SUCCESS;
    }
    let proxy = match runtime.block_on(server::build(&config, &path)) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let ready = |addr: SocketAddr| match &dev_dir {
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
        Err(e) => fail(EXIT_FAILURE, &format!("cannot listen on {}: {e}", config.listen)),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("coffer-proxy: {message}");
    ExitCode::from(code)
}

/// The configuration file named by `--config` or `COFFER_PROXY_CONFIG`,
/// loaded; a usage error (already printed) otherwise.
/// A runtime for one command; exit 1 if it cannot start.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|e| fail(EXIT_FAILURE, &format!("cannot start the runtime: {e}")))
}

/// Runs a one-shot command's async work; exit 1 with its error if it fails.
fn block_on<T, E: std::fmt::Display>(work: impl std::future::Future<Output = Result<T, E>>) -> Result<T, ExitCode> {
    runtime()?.block_on(work).map_err(|e| fail(EXIT_FAILURE, &e.to_string()))
}

fn load_config(config: Option<PathBuf>) -> Result<ProxyConfig, ExitCode> {
    let Some(path) = config else {
        return Err(fail(EXIT_USAGE, "no configuration: pass --config FILE or set COFFER_PROXY_CONFIG"));
    };
    ProxyConfig::load(&path).map_err(|e| fail(EXIT_USAGE, &e.to_string()))
}

fn policy_command(config: Option<PathBuf>, command: PolicyCmd) -> ExitCode {
    let policy = match load_config(config).map(|c| c.policy()) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return fail(EXIT_USAGE, &e),
        Err(code) => return code,
    };
    let PolicyCmd::Explain { trust_domain, identity, action, repo, from } = command;
    let Some(action) = Action::parse(&action) else {
        return fail(EXIT_USAGE, &format!("unknown action {action:?}"));
    };
    if action.on_repo() != repo.is_some() {
        let need = if action.on_repo() { "needs --repo" } else { "takes no --repo" };
        return fail(EXIT_USAGE, &format!("{} {need}", action.name()));
    }
    let identity = Identity::new(&trust_domain, &identity);
    let request = AccessRequest { identity: &identity, action, repo: repo.as_ref(), source: from };
    let target = repo.as_ref().map(|r| format!(" on {r}")).unwrap_or_default();
    match policy.decide(&request) {
        Ok(allowed) => {
            println!("allow: {identity} may {}{target} from {from} (rule {:?})", action.name(), allowed.rule);
            ExitCode::SUCCESS
        }
        Err(denied) => {
            println!("deny: {denied}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn admin_command(config: Option<PathBuf>, command: AdminCmd) -> ExitCode {
    let (call, what, body) = match command {
        AdminCmd::Enroll { trust_domain, identity } => {
            let Some(path) = config else {
                return fail(EXIT_USAGE, "enroll needs the proxy's --config (for admin.totp_file)");
            };
            let cfg = match ProxyConfig::load(&path) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_USAGE, &e.to_string()),
            };
            return match coffer_proxy::access::mfa::enroll(&cfg.admin.totp_file, &trust_domain, &identity) {
                Ok(uri) => {
                    println!("{}", *uri);
                    eprintln!(
                        "enrolled {identity} (trust domain {trust_domain}); load the URI above into an authenticator"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_FAILURE, &e),
            };
        }
        AdminCmd::Revoke { call, trust_domain, identity, lift } => (
            call,
            Action::AdminRevoke,
            serde_json::json!({"trust_domain": trust_domain, "identity": identity, "revoked": !lift}),
        ),
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
        Err(e) => return fail(EXIT_USAGE, &e.to_string()),
    };
    let code = match admin_code(call.totp) {
        Ok(code) => code,
        Err(e) => return fail(EXIT_USAGE, &e),
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

fn audit_command(config: Option<PathBuf>, command: AuditCmd) -> ExitCode {
    use coffer_proxy::audit;
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let spool = cfg.audit.spool();
    match command {
        AuditCmd::Verify { store, public_key, seals } => {
            let key = match public_key.map(|k| hex::decode(k.trim()).map_err(|e| e.to_string())) {
                Some(k) => k,
                None => audit::public_key(&spool).map_err(|e| format!("the audit public key: {e} (pass --public-key)")),
            };
            let key = match key {
                Ok(k) => k,
                Err(e) => return fail(EXIT_USAGE, &e),
            };
            let trail = if store {
                match block_on(coffer_proxy::parts::stored_audit(&cfg)) {
                    Ok(segments) => Ok((segments, None)),
                    Err(code) => return code,
                }
            } else {
                audit::local_trail(&spool).map(|(s, live)| (s, Some(live))).map_err(|e| e.to_string())
            };
            let (segments, live) = match trail {
                Ok(t) => t,
                Err(e) => return fail(EXIT_FAILURE, &e),
            };
            if let Some(path) = seals {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => return fail(EXIT_USAGE, &format!("{}: {e}", path.display())),
                };
                let expected = audit::ship::parse_seals(&text);
                if expected.is_empty() {
                    return fail(EXIT_USAGE, &format!("{}: no audit-seal lines found", path.display()));
                }
                for seal in &expected {
                    let stored = segments.iter().find(|(k, _)| *k == seal.key);
                    let ok = stored.is_some_and(|(_, t)| blake3::hash(t.as_bytes()).to_hex().as_str() == seal.blake3);
                    if !ok {
                        println!(
                            "audit segment {} {} the hash the webhook received (blake3={}): the stored trail was \
                             rewritten after it was shipped",
                            seal.key,
                            if stored.is_some() { "differs from" } else { "is missing, though announced with" },
                            seal.blake3
                        );
                        return ExitCode::from(EXIT_FAILURE);
                    }
                }
                println!("{} segments match the hashes the webhook received", expected.len());
            }
            match audit::verify(&segments, live.as_deref(), Some(&key)) {
                Ok(r) => {
                    // The local trail must hold at least what was shipped:
                    // lines cut from its end, or the whole spool deleted,
                    // leave a chain that verifies on its own.
                    if !store {
                        match block_on(coffer_proxy::parts::stored_audit(&cfg)) {
                            Ok(shipped) => match audit::verify(&shipped, None, Some(&key)) {
                                Ok(s) if s.last_seq > r.last_seq => {
                                    println!(
                                        "audit trail truncated: the local trail ends at event {}, but segments up to \
                                         event {} were shipped to the store",
                                        r.last_seq, s.last_seq
                                    );
                                    return ExitCode::from(EXIT_FAILURE);
                                }
                                Ok(_) => {}
                                Err(brk) => {
                                    println!("the shipped audit trail: {brk}");
                                    return ExitCode::from(EXIT_FAILURE);
                                }
                            },
                            Err(code) => return code,
                        }
                    }
                    println!(
                        "audit trail ok: {} events (1 to {}) in {} sealed segments",
                        r.events, r.last_seq, r.segments
                    );
                    ExitCode::SUCCESS
                }
                Err(brk) => {
                    println!("{brk}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        AuditCmd::Query { identity, repo, action, since } => {
            let (segments, live) = match audit::local_trail(&spool) {
                Ok(t) => t,
                Err(e) => return fail(EXIT_FAILURE, &e.to_string()),
            };
            let lines = segments.iter().flat_map(|(_, text)| text.lines()).chain(live.lines());
            for line in lines {
                let Ok(e) = serde_json::from_str::<audit::Event>(line) else { continue };
                let keep = identity.as_ref().is_none_or(|i| e.identity.as_ref() == Some(i))
                    && repo.as_ref().is_none_or(|r| e.repo.as_ref() == Some(r))
                    && action.as_ref().is_none_or(|a| &e.action == a)
                    && since.is_none_or(|t| e.time_ms >= t.saturating_mul(1000));
                if keep {
                    println!("{line}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}

fn alerts_test(config: Option<PathBuf>) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(hook) = cfg.alerts.webhook else {
        return fail(EXIT_USAGE, "no alerts.webhook is configured");
    };
    let alert = coffer_proxy::monitor::alerts::Alert {
        id: "test".into(),
        kind: "test".into(),
        severity: coffer_proxy::monitor::alerts::Severity::Info,
        time: coffer_proxy::unix_now(),
        proxy: cfg.proxy_id.clone(),
        repo: None,
        subject: None,
        message: "a test alert from coffer-proxy alerts test".into(),
    };
    let posted = coffer_proxy::monitor::alerts::post(&hook, &alert);
    match block_on(async { posted.await.map_err(|e| format!("test alert not delivered to {}: {e}", hook.url)) }) {
        Ok(()) => {
            println!("test alert delivered to {}", hook.url);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn keys_report(config: Option<PathBuf>, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = match block_on(coffer_proxy::compliance::report::keys_report(&cfg)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialises"));
        return ExitCode::SUCCESS;
    }
    for k in &report.keks {
        let state = match (&k.state, &k.state_error) {
            (Some(s), _) => format!(
                "{}, rotation {}",
                s.status,
                s.rotation.map_or("n/a".to_string(), |r| if r { "on".into() } else { "off".into() })
            ),
            (None, Some(e)) => format!("unknown: {e}"),
            (None, None) => "unknown".into(),
        };
        println!("{}  ({state})", k.kek);
        for key in &k.keys {
            println!(
                "  {:<24} {} {:<8} uploaded by {}",
                key.repo,
                key.key_id,
                key.purpose,
                key.uploaded_by.as_deref().unwrap_or("(not in the local audit trail)")
            );
        }
    }
    ExitCode::SUCCESS
}

fn compliance_report(config: Option<PathBuf>, format: &str, output: Option<PathBuf>, since: Option<u64>) -> ExitCode {
    if !matches!(format, "json" | "html") {
        return fail(EXIT_USAGE, &format!("unknown --format {format:?}: json or html"));
    }
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let since = since.unwrap_or_else(|| coffer_proxy::unix_now().saturating_sub(30 * 86_400));
    let report = match block_on(coffer_proxy::compliance::report::compliance_report(&cfg, since)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let text = match format {
        "html" => coffer_proxy::compliance::report_html::render(&report),
        _ => serde_json::to_string_pretty(&report).expect("serialises") + "\n",
    };
    match output {
        None => print!("{text}"),
        Some(out) => {
            if let Err(e) = std::fs::write(&out, text) {
                return fail(EXIT_FAILURE, &format!("{}: {e}", out.display()));
            }
        }
    }
    ExitCode::SUCCESS
}

fn assess(config: Option<PathBuf>, json: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let findings = match block_on(coffer_proxy::compliance::assess::assess(&cfg)) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&findings).expect("serialises"));
    } else {
        for f in &findings {
            println!("{:?}\t{}\t{}: {}\n\tfix: {}", f.severity, f.check, f.subject, f.problem, f.fix);
        }
        println!("{} findings", findings.len());
    }
    if findings.iter().any(|f| f.severity == coffer_proxy::compliance::assess::Level::High) {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}
