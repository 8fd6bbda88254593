//! A spooled alert file (the proxy's own disk, editable by the host).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| coffer_proxy::fuzz::fuzz_alert_spool(data));
