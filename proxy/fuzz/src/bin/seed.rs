//! Writes the seed corpus the targets start from, into `corpus/<target>/`
//! (run from proxy/fuzz: `cargo run --bin seed`): the shipped and test
//! configs, each entry point's own seeds (`coffer_proxy::fuzz::seeds`,
//! `coffer_agent::fuzz::seeds`), and a real audit trail of one sealed
//! segment and a live log.

use std::path::Path;

use coffer_proxy::audit::{AuditLog, Draft, SpoolConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("../..");
    let corpus = here.join("corpus");
    let copy = |target: &str, files: &[&str]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, file) in files.iter().enumerate() {
            std::fs::copy(root.join(file), dir.join(format!("seed-{i}")))?;
        }
        Ok(())
    };
    copy("proxy_config", &["packaging/config/proxy.toml", "proxy/tests/data/proxy.toml"])?;
    // One well-formed input per target, as the stable fuzz tests use them.
    let seeds = coffer_proxy::fuzz::seeds().into_iter().chain(coffer_agent::fuzz::seeds());
    for (i, (target, bytes)) in seeds.enumerate() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("built-{i}")), bytes)?;
    }

    // Five events with three to a segment: one sealed segment, two live.
    let work = std::env::temp_dir().join(format!("coffer-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let spool = SpoolConfig {
        path: work.join("audit.jsonl"),
        segment_events: 3,
        segment_secs: 3600,
        checkpoint_secs: 0,
        signing_key: work.join("signing.key"),
    };
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let (log, writer) = AuditLog::open(&spool, "fuzz")?;
    for action in ["chunk.put", "commit", "restore", "chunk.put", "connection"] {
        let draft = Draft {
            identity: Some("spiffe://coffer.dev/w".into()),
            peer: "127.0.0.1:1".into(),
            action,
            ..Default::default()
        };
        rt.block_on(log.record(draft, true))?;
    }
    drop(log);
    writer.join();
    let (segments, live) = coffer_proxy::audit::local_trail(&spool)?;
    let dir = corpus.join("audit_verify");
    std::fs::create_dir_all(&dir)?;
    for (i, (_, segment)) in segments.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), format!("{segment}\0{live}"))?;
    }
    std::fs::remove_dir_all(&work)?;
    println!("seed corpus in {}", corpus.display());
    Ok(())
}
