//! Where the proxy is and how to reach it: the connection keys of an agent
//! config (`docs/configuration.md`, "Agent"). Any other key in the file is
//! left to its owner, so `coffer-proxy admin` can read an agent's file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Seconds of retrying before a command gives up, unless configured.
pub const DEFAULT_RETRY_DEADLINE_SECS: u64 = 300;
const DEFAULT_KEEPALIVE_SECS: u64 = 15;
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Clone, Debug, Deserialize)]
pub struct ClientConfig {
    /// `https://host:port` of the proxy.
    pub proxy: String,
    /// CA certificate(s) that sign the proxy's certificate (PEM).
    pub ca: PathBuf,
    /// This client's certificate chain (PEM).
    pub cert: PathBuf,
    /// This client's private key (PEM).
    pub key: PathBuf,
    /// Overrides the TLS server name (default: the host of `proxy`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// How long failed requests are retried (proxy down or restarting,
    /// connection lost, 429, 5xx) before the command gives up.
    #[serde(default = "default_retry_deadline")]
    pub retry_deadline_secs: u64,
    /// Seconds between HTTP/2 pings on an open connection; a connection
    /// whose ping is not answered within as long again plus 5 s is dropped
    /// and its requests retried.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// How long one attempt of a request may take before it is abandoned
    /// (and retried like a lost connection), plus a second for every 64 KiB
    /// it uploads: a proxy that accepts and never answers must not hold a
    /// command, or a daemon's job, for ever.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Say on stderr, once, that the proxy does not answer and how long it
    /// will be retried (an interactive command sets this; a daemon logs).
    #[serde(skip)]
    pub announce_retries: bool,
}

fn default_retry_deadline() -> u64 {
    DEFAULT_RETRY_DEADLINE_SECS
}

fn default_keepalive() -> u64 {
    DEFAULT_KEEPALIVE_SECS
}

fn default_request_timeout() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_SECS
}

/// Why a config file was refused.
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

/// Why a config's text was refused.
#[derive(Debug)]
pub enum ParseError {
    Toml(String),
    Invalid(String),
}

impl ParseError {
    /// Names the file the text came from.
    pub fn at(self, path: &Path) -> ConfigError {
        match self {
            ParseError::Toml(message) => ConfigError::Parse { path: path.into(), message },
            ParseError::Invalid(message) => ConfigError::Invalid { path: path.into(), message },
        }
    }
}

impl ClientConfig {
    /// Reads the connection keys of a config file; relative paths are taken
    /// from the file's folder, and `COFFER_RETRY_DEADLINE_SECS` overrides
    /// the retry deadline.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| e.at(path))?;
        cfg.apply_env().map_err(|e| e.at(path))?;
        Ok(cfg)
    }

    /// Parses and checks the connection keys of a config's text; relative
    /// paths are taken from `base`. Never panics, whatever the text.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ParseError> {
        let mut cfg: ClientConfig = toml::from_str(text).map_err(|e| ParseError::Toml(e.to_string()))?;
        for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
            *p = base.join(&*p);
        }
        if !cfg.proxy.starts_with("https://") {
            return Err(ParseError::Invalid(format!("proxy = {:?}: must be an https:// URL", cfg.proxy)));
        }
        if cfg.request_timeout_secs == 0 {
            return Err(ParseError::Invalid("request_timeout_secs must be at least 1".into()));
        }
        if cfg.keepalive_secs == 0 {
            return Err(ParseError::Invalid("keepalive_secs must be at least 1".into()));
        }
        Ok(cfg)
    }

    /// Applies `COFFER_RETRY_DEADLINE_SECS`, if set.
    pub fn apply_env(&mut self) -> Result<(), ParseError> {
        if let Ok(v) = std::env::var("COFFER_RETRY_DEADLINE_SECS") {
            self.retry_deadline_secs = v.parse().map_err(|_| {
                ParseError::Invalid(format!("COFFER_RETRY_DEADLINE_SECS={v:?} is not a number of seconds"))
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "proxy = \"https://127.0.0.1:7443\"\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n";

    #[test]
    fn reads_the_connection_keys_and_leaves_the_rest() {
        let cfg =
            ClientConfig::parse(&format!("{GOOD}[keys]\nprovider = \"local\"\n"), Path::new("/etc/coffer")).unwrap();
        assert_eq!(cfg.ca, Path::new("/etc/coffer/ca.pem"));
        assert_eq!(cfg.retry_deadline_secs, DEFAULT_RETRY_DEADLINE_SECS);
        let Err(ParseError::Invalid(why)) = ClientConfig::parse(&GOOD.replace("https", "http"), Path::new("/")) else {
            panic!("plain http accepted")
        };
        assert!(why.contains("https://"), "{why}");
        assert!(ClientConfig::parse(&format!("{GOOD}keepalive_secs = 0\n"), Path::new("/")).is_err());
        assert!(ClientConfig::parse(&format!("{GOOD}request_timeout_secs = \"1\"\n"), Path::new("/")).is_err());
        assert!(ClientConfig::parse("ca = \"ca.pem\"", Path::new("/")).is_err(), "no proxy");
    }
}
