//! What a sender writes on the sidecar socket: a header line, then frames.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_agent::fuzz::fuzz_sidecar(data));
