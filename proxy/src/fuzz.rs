//! Entry points for fuzzers over what the proxy reads: its config, the
//! audit trail read back from the store, client certificates, and its own
//! files on disk that someone with access to the host could have edited
//! (the alert spool, the client-certificate sightings, the TOTP file).
//! Each takes arbitrary bytes and must never panic. The libFuzzer targets
//! in `proxy/fuzz` call them, and the tests below run them on stable over a
//! seed corpus and its mutations (in CI, with the rest of the suite).

/// The proxy's config, and the policy built from its rules.
pub fn fuzz_proxy_config(data: &[u8]) {
    if let Ok(cfg) = crate::config::ProxyConfig::parse(&String::from_utf8_lossy(data), std::path::Path::new("/x")) {
        let _ = cfg.policy();
    }
}

/// The audit chain verifier, on a trail read back from a store that may
/// have been tampered with: one sealed segment, a NUL, then the live log;
/// checked without a public key and with a wrong one.
pub fn fuzz_audit_verify(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (segment, live) = text.split_once('\0').unwrap_or((&text, ""));
    let segments = [("00000000000000000001.seg".to_string(), segment.to_string())];
    let _ = crate::audit::verify(&segments, Some(live), None);
    let _ = crate::audit::verify(&segments, Some(live), Some(&[7u8; 32]));
}

/// What a TLS handshake hands over: the client certificate's DER.
pub fn fuzz_identity(data: &[u8]) {
    if let Some(id) = crate::access::identity::Identity::from_certificate("fuzz".into(), data) {
        assert!(!id.name().is_empty());
    }
}

/// A spooled alert: what decodes is sent on, and survives a round trip.
pub fn fuzz_alert_spool(data: &[u8]) {
    if let Ok(alert) = crate::monitor::alerts::decode_spooled(data) {
        let again = crate::monitor::alerts::decode_spooled(&serde_json::to_vec(&alert).expect("plain data"));
        assert_eq!(again.ok().as_ref(), Some(&alert));
    }
}

/// The client-certificate sightings file (read by `assess`).
pub fn fuzz_client_certs(data: &[u8]) {
    if let Ok(seen) = crate::access::clientcerts::decode(data) {
        let _ = crate::compliance::assess::client_certificate_findings(&seen, 1_800_000_000);
    }
}

/// The admin TOTP file: its enrollments, each secret decoded and checked.
pub fn fuzz_totp_file(data: &[u8]) {
    crate::access::mfa::fuzz_file(&String::from_utf8_lossy(data));
}

/// Every entry point at once.
pub fn fuzz_all(data: &[u8]) {
    fuzz_proxy_config(data);
    fuzz_audit_verify(data);
    fuzz_identity(data);
    fuzz_alert_spool(data);
    fuzz_client_certs(data);
    fuzz_totp_file(data);
}

/// One well-formed input per target (the seed corpus the `seed` binary in
/// `proxy/fuzz` writes, and the tests below mutate): the shipped config, a
/// certificate, an alert, sightings and a TOTP file.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = std::fs::read(root.join("packaging/config/proxy.toml")).unwrap_or_default();
    let cert =
        rcgen::generate_simple_self_signed(vec!["db-01".into()]).map(|c| c.cert.der().to_vec()).unwrap_or_default();
    let alert = br#"{"id":"a1","kind":"ransomware","severity":"critical","time":1800000000,"proxy":"p1","repo":"dev/db","subject":null,"message":"most of the snapshot is new and incompressible"}"#;
    let seen = br#"{"spiffe://coffer.dev/writer (trust domain dev)":{"not_after":1800000000,"last_seen":1790000000}}"#;
    let totp = b"[[enrolled]]\ntrust_domain = \"dev\"\nidentity = \"spiffe://coffer.dev/admin\"\nsecret = \"JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP\"\nenrolled = 1790000000\n";
    vec![
        ("proxy_config", config),
        ("identity", cert),
        ("alert_spool", alert.to_vec()),
        ("client_certs", seen.to_vec()),
        ("totp_file", totp.to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seeds() -> Vec<Vec<u8>> {
        super::seeds().into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn the_seeds_are_read_as_meant() {
        let s = seeds();
        assert!(crate::config::ProxyConfig::parse(&String::from_utf8_lossy(&s[0]), std::path::Path::new("/x")).is_ok());
        assert!(crate::access::identity::Identity::from_certificate("t".into(), &s[1]).is_some());
        assert_eq!(crate::monitor::alerts::decode_spooled(&s[2]).unwrap().kind, "ransomware");
        assert_eq!(crate::access::clientcerts::decode(&s[3]).unwrap().len(), 1);
        assert!(toml::from_str::<toml::Table>(std::str::from_utf8(&s[4]).unwrap()).is_ok());
        for seed in &s {
            fuzz_all(seed);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Flipped and cut seeds: never a panic.
        #[test]
        fn mutated_seeds_never_panic(
            seed in 0usize..5,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            for d in coffer_proto::fuzz::flipped_and_cut(&seeds()[seed], &flips, cut) {
                fuzz_all(&d);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_all(&data);
        }
    }
}
