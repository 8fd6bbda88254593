//! The client-certificate sightings file that `assess` reads.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_client_certs(data));
