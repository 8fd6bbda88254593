//! The audit chain verifier, which reads segments back from the store (a
//! store that may have been tampered with): one sealed segment, a NUL, then
//! the live log; checked without a public key and with a wrong one.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (segment, live) = text.split_once('\0').unwrap_or((&text, ""));
    let segments = [("00000000000000000001.seg".to_string(), segment.to_string())];
    let _ = coffer_proxy::audit::verify(&segments, Some(live), None);
    let _ = coffer_proxy::audit::verify(&segments, Some(live), Some(&[7u8; 32]));
});
