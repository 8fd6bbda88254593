//! `agent.toml`: where the proxy is, which certificate to present, and
//! which key provider wraps data keys. Every key is documented in
//! `docs/configuration.md`; unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Upload requests in flight at once, unless the config says otherwise.
pub const DEFAULT_UPLOADS_IN_FLIGHT: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `https://host:port` of the proxy.
    pub proxy: String,
    /// CA certificate(s) that sign the proxy's certificate (PEM).
    pub ca: PathBuf,
    /// This agent's client certificate chain (PEM).
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// Overrides the TLS server name (default: the host of `proxy`).
    #[serde(default)]
    pub server_name: Option<String>,
    pub keys: KeysConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    /// How long failed requests are retried (proxy down or restarting,
    /// connection lost, 429, 5xx) before the command gives up.
    #[serde(default = "default_retry_deadline")]
    pub retry_deadline_secs: u64,
    /// Seconds between HTTP/2 pings on an open connection; a connection
    /// whose ping is not answered within as long again plus 5 s is dropped
    /// and its requests retried.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
}

fn default_keepalive() -> u64 {
    15
}

/// Seconds of retrying before a command gives up, unless configured.
pub const DEFAULT_RETRY_DEADLINE_SECS: u64 = 300;

fn default_retry_deadline() -> u64 {
    DEFAULT_RETRY_DEADLINE_SECS
}

#[derive(Debug, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeysConfig {
    /// A local master-key file (dev mode, single host).
    Local { master_key: PathBuf },
    /// AWS KMS.
    Kms(crate::keys::KmsConfig),
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    pub uploads_in_flight: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self { uploads_in_flight: DEFAULT_UPLOADS_IN_FLIGHT }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl AgentConfig {
    /// Loads a config file; relative paths in it are taken from the file's
    /// folder, so a config and its certificates can move together.
    /// `COFFER_RETRY_DEADLINE_SECS` overrides the retry deadline.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
            ParseError::Toml(message) => ConfigError::Parse { path: path.into(), message },
            ParseError::Invalid(message) => ConfigError::Invalid { path: path.into(), message },
        })?;
        if let Ok(v) = std::env::var("COFFER_RETRY_DEADLINE_SECS") {
            cfg.retry_deadline_secs = v.parse().map_err(|_| ConfigError::Invalid {
                path: path.into(),
                message: format!("COFFER_RETRY_DEADLINE_SECS={v:?} is not a number of seconds"),
            })?;
        }
        Ok(cfg)
    }

    /// Parses and validates a config's text; relative paths are taken from
    /// `base`. Never panics, whatever the text (fuzzed).
    pub fn parse(text: &str, base: &Path) -> Result<Self, ParseError> {
        let mut cfg: AgentConfig = toml::from_str(text).map_err(|e| ParseError::Toml(e.to_string()))?;
        for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
            *p = base.join(&*p);
        }
        if let KeysConfig::Local { master_key } = &mut cfg.keys {
            *master_key = base.join(&*master_key);
        }
        if !cfg.proxy.starts_with("https://") {
            return Err(ParseError::Invalid(format!("proxy = {:?}: must be an https:// URL", cfg.proxy)));
        }
        if cfg.keepalive_secs == 0 {
            return Err(ParseError::Invalid("keepalive_secs must be at least 1".into()));
        }
        if !(1..=256).contains(&cfg.backup.uploads_in_flight) {
            return Err(ParseError::Invalid("backup.uploads_in_flight must be 1 to 256".into()));
        }
        Ok(cfg)
    }
}

/// Why a config's text was refused.
#[derive(Debug)]
pub enum ParseError {
    Toml(String),
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        AgentConfig::load(&p)
    }

    const GOOD: &str = r#"
proxy = "https://127.0.0.1:7443"
ca = "ca.pem"
cert = "writer.pem"
key = "writer.key"
[keys]
provider = "local"
master_key = "master.key"
"#;

    #[test]
    fn resolves_relative_paths() {
        let cfg = load(GOOD).unwrap();
        assert!(cfg.ca.is_absolute() && cfg.ca.ends_with("ca.pem"));
        assert_eq!(cfg.backup.uploads_in_flight, DEFAULT_UPLOADS_IN_FLIGHT);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Never panics: random text, and the dev config with a byte flipped or cut short.
        #[test]
        fn parsing_never_panics(noise in ".{0,200}", at in proptest::prelude::any::<proptest::sample::Index>(), byte in proptest::prelude::any::<u8>()) {
            let _ = AgentConfig::parse(&noise, Path::new("/x"));
            let mut bytes = GOOD.as_bytes().to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= byte;
            let _ = AgentConfig::parse(&String::from_utf8_lossy(&bytes), Path::new("/x"));
            let _ = AgentConfig::parse(&GOOD[..GOOD.floor_char_boundary(i)], Path::new("/x"));
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load(&format!("{GOOD}\nextra = 1\n")).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
        let err = load(&GOOD.replace("master_key", "masterkey")).unwrap_err().to_string();
        assert!(err.contains("masterkey"), "{err}");
        assert!(load(&GOOD.replace("https://", "http://")).is_err());
        assert!(load(&GOOD.replace("\"local\"", "\"vault\"")).is_err());
    }
}
