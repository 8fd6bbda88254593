//! The proxy's config, and the policy built from its rules.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) =
        coffer_proxy::config::ProxyConfig::parse(&String::from_utf8_lossy(data), std::path::Path::new("/x"))
    {
        let _ = cfg.policy();
    }
});
