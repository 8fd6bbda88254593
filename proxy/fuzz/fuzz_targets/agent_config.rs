//! The agent's config, jobs and schedules included.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = coffer_agent::config::AgentConfig::parse(&String::from_utf8_lossy(data), std::path::Path::new("/x"));
});
