//! The audit chain verifier, on a trail read back from the store.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_audit_verify(data));
