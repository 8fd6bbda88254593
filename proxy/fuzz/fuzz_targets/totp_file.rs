//! The admin TOTP file: enrollments and their secrets.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_totp_file(data));
