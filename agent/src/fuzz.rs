//! Entry points for fuzzers over what the agent reads from others: its
//! config (jobs and schedules included) and what a sender writes on the
//! sidecar socket (the header line, then the stream's frames). Each takes
//! arbitrary bytes and must never panic; the libFuzzer targets in
//! `proxy/fuzz` call them, and the tests below run them on stable over a
//! seed corpus and its mutations.

use std::io::Read as _;

use crate::daemon::{FrameReader, FRAME_MAX};

/// The agent's config: whatever parses also yields its jobs' schedules.
pub fn fuzz_agent_config(data: &[u8]) {
    let _ = crate::config::AgentConfig::parse(&String::from_utf8_lossy(data), std::path::Path::new("/x"));
}

/// A sender's header line, then its frames: a header that is accepted
/// names a repository and a name of 1 to 256 bytes, and the frame reader
/// never yields more than the frames hold, nor a frame over the limit.
pub fn fuzz_sidecar(data: &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => data.split_at(i + 1),
        None => (data, &[][..]),
    };
    if let Ok(header) = crate::daemon::sidecar::parse_header(&String::from_utf8_lossy(line)) {
        assert!((1..=256).contains(&header.name.len()));
    }
    let mut out = Vec::new();
    let result = FrameReader::new(rest).take(FRAME_MAX as u64 * 4).read_to_end(&mut out);
    assert!(out.len() <= rest.len());
    if result.is_ok() {
        // A stream read to its end had its end frame.
        assert!(rest.len() >= 4);
    }
}

/// One well-formed input per target (the seed corpus the `seed` binary in
/// `proxy/fuzz` writes, and the tests below mutate): the shipped config,
/// the same with jobs, and a sender's header line and frames.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read(root.join("packaging/config/agent.toml")).unwrap_or_default();
    let mut with_jobs = shipped.clone();
    with_jobs.extend_from_slice(JOBS);
    let mut frames = b"{\"repo\":\"prod/app-db\",\"name\":\"pg_dump\"}\n".to_vec();
    for part in [&b"first"[..], b"second frame", b""] {
        frames.extend_from_slice(&(part.len() as u32).to_be_bytes());
        frames.extend_from_slice(part);
    }
    vec![("agent_config", shipped), ("agent_config", with_jobs), ("sidecar", frames)]
}

/// Jobs of two schedule forms (cron fields, a shorthand), a command and a
/// path.
const JOBS: &[u8] = br#"
[[jobs]]
repo = "prod/app-db"
name = "pg_dump"
schedule = "0 2 * * *"
command = ["pg_dump", "--format", "custom", "app"]

[[jobs]]
repo = "prod/files"
name = "etc"
schedule = "@hourly"
jitter_secs = 300
path = "/etc"
max_run_secs = 3600
limit_upload_kib = 1024
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<Vec<u8>> {
        super::seeds().into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn the_seeds_are_read_as_meant() {
        let seeds = seeds();
        let cfg = crate::config::AgentConfig::parse(&String::from_utf8_lossy(&seeds[1]), std::path::Path::new("/x"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(cfg.jobs.len(), 2, "the jobs seed parses, schedules included");
        assert_eq!(cfg.jobs[1].limit_upload_kib, Some(1024));
        let line = std::str::from_utf8(&seeds[2][..seeds[2].iter().position(|&b| b == b'\n').unwrap() + 1]).unwrap();
        assert_eq!(crate::daemon::sidecar::parse_header(line).unwrap().name, "pg_dump");
        for seed in &seeds {
            fuzz_agent_config(seed);
            fuzz_sidecar(seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Flipped, cut and spliced seeds: never a panic.
        #[test]
        fn mutated_seeds_never_panic(
            seed in 0usize..3,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            for d in coffer_proto::fuzz::flipped_and_cut(&seeds()[seed], &flips, cut) {
                fuzz_agent_config(&d);
                fuzz_sidecar(&d);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_agent_config(&data);
            fuzz_sidecar(&data);
        }
    }
}
