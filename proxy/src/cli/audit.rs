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
            // What the store holds is read first: the running proxy ships
            // segments and checkpoints past a local trail read before them.
            let shipped = match block_on(coffer_proxy::parts::stored_audit(&cfg)) {
                Ok(segments) => segments,
                Err(code) => return code,
            };
            let shipped_end = match audit::verify(&shipped, None, Some(&key)) {
                Ok(s) => s.last_seq,
                Err(brk) => {
                    println!("{}{brk}", if store { "" } else { "the shipped audit trail: " });
                    return ExitCode::from(FAILURE);
                }
            };
            let checkpoints = match block_on(coffer_proxy::parts::stored_checkpoints(&cfg, shipped_end)) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let checkpoints = match audit::checkpoint::open_all(&checkpoints, &key) {
                Ok(c) => c,
                Err(problem) => {
                    println!("{problem}");
                    return ExitCode::from(FAILURE);
                }
            };
            let (segments, live) = if store {
                (shipped, None)
            } else {
                match audit::local_trail(&spool) {
                    Ok((s, live)) => (s, Some(live)),
                    Err(e) => return fail(FAILURE, e.to_string()),
                }
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
            let r = match audit::verify(&segments, live.as_deref(), Some(&key)) {
                Ok(r) => r,
                Err(brk) => {
                    println!("{brk}");
                    return ExitCode::from(FAILURE);
                }
            };
            if store {
                // Checkpoints past the shipped segments (signed and well
                // named, checked above) vouch for events not sealed yet.
                if !checkpoints.is_empty() {
                    println!("{} checkpoints vouch for events past the sealed segments", checkpoints.len());
                }
            } else {
                // The local trail must hold at least what was shipped:
                // lines cut from its end, or the whole spool deleted, leave
                // a chain that verifies on its own.
                if shipped_end > r.last_seq {
                    println!(
                        "audit trail truncated: the local trail ends at event {}, but segments up to event {} \
                         were shipped to the store",
                        r.last_seq, shipped_end
                    );
                    return ExitCode::from(FAILURE);
                }
                let seqs = checkpoints.iter().map(|c| c.seq).collect();
                let hashes = audit::verify::hashes_at(&segments, live.as_deref(), &seqs);
                if let Some(problem) =
                    audit::checkpoint::check(&checkpoints, r.last_seq, |seq| hashes.get(&seq).cloned())
                {
                    println!("{problem}");
                    return ExitCode::from(FAILURE);
                }
            }
            println!("audit trail ok: {} events (1 to {}) in {} sealed segments", r.events, r.last_seq, r.segments);
            ExitCode::SUCCESS
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
