//! The agent's config, jobs and schedules included.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_agent::fuzz::fuzz_agent_config(data));
