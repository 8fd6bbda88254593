use super::{private_endpoint, ProxyConfig};
use proptest::prelude::*;

const DEV: &str = include_str!("../../tests/data/proxy.toml");

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    /// Config and policy parsing never panics: random text, and a real
    /// config with bytes flipped, cut or repeated.
    #[test]
    fn parsing_never_panics(noise in ".{0,200}", at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let _ = ProxyConfig::parse(&noise, std::path::Path::new("/x"));
        let mut bytes = DEV.as_bytes().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= byte;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = ProxyConfig::parse(&text, std::path::Path::new("/x"));
        let _ = ProxyConfig::parse(&text[..text.floor_char_boundary(cut.index(text.len() + 1))], std::path::Path::new("/x"));
        let doubled = format!("{DEV}\n{}", &DEV[..DEV.floor_char_boundary(cut.index(DEV.len() + 1))]);
        let _ = ProxyConfig::parse(&doubled, std::path::Path::new("/x"));
    }
}

#[test]
fn the_fuzzing_seed_is_a_valid_config() {
    let cfg = ProxyConfig::parse(DEV, std::path::Path::new("/x")).unwrap();
    assert_eq!(cfg.rules.len(), 4);
    assert!(cfg.policy().is_ok());
}

#[test]
fn private_endpoints() {
    assert!(private_endpoint(None, false).is_err());
    assert!(private_endpoint(Some("https://s3.eu-west-1.amazonaws.com"), false).is_err());
    assert!(private_endpoint(Some("https://s3.eu-west-1.amazonaws.com"), true).is_ok());
    assert!(private_endpoint(Some("https://kms.eu-west-1.amazonaws.com"), true).is_err());
    assert!(private_endpoint(Some("https://bucket.vpce-0a1b.s3.eu-west-1.vpce.amazonaws.com"), false).is_ok());
    assert!(private_endpoint(Some("https://vpce-0a1b.kms.eu-west-1.vpce.amazonaws.com"), false).is_ok());
    assert!(private_endpoint(Some("http://127.0.0.1:5000"), false).is_ok());
    assert!(private_endpoint(Some("https://minio.internal:9000/x"), false).is_ok());
}

/// The local master key unwraps every data key: a proxy holding it that
/// listens beyond loopback (it serves other hosts) is refused, unless the
/// operator says it is one host on purpose.
#[test]
fn a_local_master_key_is_refused_beyond_loopback_unless_single_host() {
    let parse = |listen: &str, extra: &str| {
        let text = DEV
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{listen}\""))
            .replace("provider = \"local\"", &format!("provider = \"local\"\n{extra}"));
        ProxyConfig::parse(&text, std::path::Path::new("/x"))
    };
    assert!(parse("127.0.0.1:7443", "").is_ok());
    assert!(parse("[::1]:7443", "").is_ok());
    let refused = parse("0.0.0.0:7443", "").unwrap_err().to_string();
    assert!(refused.contains("single_host") && refused.contains("KMS"), "{refused}");
    assert!(parse("10.0.0.5:7443", "").is_err());
    assert!(parse("0.0.0.0:7443", "single_host = true").is_ok());
}

/// An upload lock shorter than the catalog's trust margin would make every
/// upload look unlocked to it; one past the retention is no short lock, and
/// would make dedup count nothing (it asks for half the lock to be left).
#[test]
fn the_upload_lock_is_off_or_two_hours_to_the_retention() {
    let parse = |hours: u32| {
        let text = DEV.replace("[retention]\n", &format!("[retention]\nupload_lock_hours = {hours}\n"));
        assert_ne!(text, DEV, "the dev config has a [retention] section");
        ProxyConfig::parse(&text, std::path::Path::new("/x")).map(|c| c.upload_lock_secs())
    };
    assert_eq!(parse(0).unwrap(), 0);
    assert_eq!(parse(48).unwrap(), 48 * 3600);
    assert!(parse(30 * 24).is_ok(), "up to the retention (30 days in the dev config)");
    for refused in [1, 30 * 24 + 1] {
        let err = parse(refused).unwrap_err().to_string();
        assert!(err.contains("upload_lock_hours"), "{err}");
    }
}
