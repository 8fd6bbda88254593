//! The proxy's config, and the policy built from its rules.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_proxy_config(data));
