//! `coffer-proxy audit verify` and `audit query`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use coffer_client::exit::{FAILURE, USAGE};

use super::{block_on, fail, load_config};

#[derive(Subcommand)]
pub(crate) enum AuditCmd {
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
        /// Only events of this identity (as in the certificate, e.g. spiffe://…).
        #[arg(long)]
        identity: Option<String>,
        /// Only events on this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Only events of this action (put-chunk, commit, admin-expire, alert…).
        #[arg(long)]
        action: Option<String>,
        /// Only events at or after this time (unix seconds).
        #[arg(long)]
        since: Option<u64>,
    },
}

pub(crate) fn audit_command(config: Option<PathBuf>, command: AuditCmd) -> ExitCode {
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
                Err(e) => return fail(USAGE, &e),
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
                Err(e) => return fail(FAILURE, &e),
            };
            if let Some(path) = seals {
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) => return fail(USAGE, format!("{}: {e}", path.display())),
                };
                let expected = audit::ship::parse_seals(&text);
                if expected.is_empty() {
                    return fail(USAGE, format!("{}: no audit-seal lines found", path.display()));
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
                        return ExitCode::from(FAILURE);
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
                                    return ExitCode::from(FAILURE);
                                }
                                Ok(_) => {}
                                Err(brk) => {
                                    println!("the shipped audit trail: {brk}");
                                    return ExitCode::from(FAILURE);
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
                    ExitCode::from(FAILURE)
                }
            }
        }
        AuditCmd::Query { identity, repo, action, since } => {
            let (segments, live) = match audit::local_trail(&spool) {
                Ok(t) => t,
                Err(e) => return fail(FAILURE, e.to_string()),
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
