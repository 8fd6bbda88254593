//! What a TLS handshake hands over: the client certificate's DER, read for
//! the caller's identity.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(id) = coffer_proxy::access::identity::Identity::from_certificate("fuzz".into(), data) {
        assert!(!id.name().is_empty());
    }
});
