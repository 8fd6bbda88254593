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
