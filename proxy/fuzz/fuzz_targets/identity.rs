//! What a TLS handshake hands over: the client certificate's DER.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_identity(data));
