//! `agent.toml`: where the proxy is, which certificate to present, and
//! which key provider wraps data keys. Every key is documented in
//! `docs/configuration.md`; unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use coffer_proto::RepoName;
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
    /// How long one attempt of a request may take before it is abandoned
    /// (and retried like a lost connection), plus a second for every 64 KiB
    /// it uploads: a proxy that accepts and never answers must not hold a
    /// command, or a daemon's job, for ever.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// `coffer daemon`: health endpoint, stop timeout, sidecar socket.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Scheduled backups that `coffer daemon` runs (and `coffer run` runs once).
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
}

/// Default seconds a stopping daemon waits for running backups.
pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 60;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// A loopback address for `GET /health` (none by default).
    pub health: Option<SocketAddr>,
    /// How long a stop (SIGTERM, SIGINT) waits for running backups before
    /// abandoning them (nothing of an abandoned backup is committed).
    pub stop_timeout_secs: u64,
    /// Sidecar mode: a Unix socket on which `coffer send` streams backups.
    pub socket: Option<PathBuf>,
    /// The repositories the socket may write (required with `socket`).
    pub socket_repos: Vec<RepoName>,
    /// The socket's file mode (default `0o660`).
    pub socket_mode: u32,
    /// If not empty, only processes running as one of these user ids may
    /// send (checked with the socket's peer credentials), on top of the
    /// file mode.
    pub socket_uids: Vec<u32>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            health: None,
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            socket: None,
            socket_repos: Vec::new(),
            socket_mode: 0o660,
            socket_uids: Vec::new(),
        }
    }
}

/// One `[[jobs]]` entry: a source, a repository and a schedule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Names the job in logs, the health answer and `coffer run NAME`; it is
    /// also the snapshot's name.
    pub name: String,
    pub repo: RepoName,
    /// A cron pattern in local time: 5 fields (minute precision), or 6 with
    /// seconds first; `@daily` and the like work too.
    pub schedule: String,
    /// Up to this many seconds of random delay after each scheduled time,
    /// so many hosts on one schedule do not start together.
    #[serde(default)]
    pub jitter_secs: u64,
    /// A command whose stdout is backed up (it must exit 0), or…
    #[serde(default)]
    pub command: Vec<String>,
    /// …a file or folder, backed up as a tar stream.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A run still going after this many seconds is stopped and counted as
    /// a failure (nothing of it is committed), so one that hangs cannot
    /// hold the job for ever. None by default: a large first backup may
    /// take a day.
    #[serde(default)]
    pub max_run_secs: Option<u64>,
}

impl JobConfig {
    /// The command whose output the job backs up.
    pub fn argv(&self) -> Vec<String> {
        match &self.path {
            Some(path) => {
                // Relative to `/`, so tar neither warns nor strips anything.
                let relative = path.strip_prefix("/").unwrap_or(path).to_string_lossy().into_owned();
                let relative = if relative.is_empty() { ".".to_string() } else { relative };
                ["tar", "--create", "--file=-", "--directory=/", "--", &relative]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
            None => self.command.clone(),
        }
    }
}

/// Longest jitter: a day.
const JITTER_MAX_SECS: u64 = 86_400;

fn check_jobs(jobs: &[JobConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for job in jobs {
        let ok_name = !job.name.is_empty()
            && job.name.len() <= 64
            && job.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok_name {
            return Err(format!("jobs: name {:?} must be 1 to 64 of [A-Za-z0-9._-]", job.name));
        }
        if !names.insert(job.name.as_str()) {
            return Err(format!("jobs: two jobs are named {:?}", job.name));
        }
        match (job.command.is_empty(), &job.path) {
            (false, None) | (true, Some(_)) => {}
            _ => return Err(format!("job {}: give exactly one of `command` or `path`", job.name)),
        }
        if job.path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(format!("job {}: path must be absolute", job.name));
        }
        crate::daemon::parse_schedule(&job.schedule).map_err(|e| format!("job {}: {e}", job.name))?;
        if job.jitter_secs > JITTER_MAX_SECS {
            return Err(format!("job {}: jitter_secs is at most {JITTER_MAX_SECS}", job.name));
        }
    }
    Ok(())
}

fn check_daemon(d: &DaemonConfig) -> Result<(), String> {
    if let Some(addr) = d.health {
        if !addr.ip().is_loopback() {
            return Err(format!("daemon.health = {addr}: the health endpoint listens on loopback only"));
        }
    }
    if d.socket.is_some() && d.socket_repos.is_empty() {
        return Err("daemon.socket needs daemon.socket_repos: the repositories it may write".into());
    }
    if d.socket_mode > 0o777 {
        return Err(format!("daemon.socket_mode = {:o}: not a file mode", d.socket_mode));
    }
    Ok(())
}

fn default_keepalive() -> u64 {
    15
}

fn default_request_timeout() -> u64 {
    120
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
    /// Repositories made before configs were authenticated, whose config
    /// this agent accepts without a MAC (with chunker sizes above the
    /// floors, and FastCDC's public cut points). Any other repository's
    /// config must carry a valid MAC, so a proxy cannot strip it.
    pub legacy_repos: Vec<RepoName>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self { uploads_in_flight: DEFAULT_UPLOADS_IN_FLIGHT, legacy_repos: Vec::new() }
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
        if cfg.request_timeout_secs == 0 {
            return Err(ParseError::Invalid("request_timeout_secs must be at least 1".into()));
        }
        if cfg.keepalive_secs == 0 {
            return Err(ParseError::Invalid("keepalive_secs must be at least 1".into()));
        }
        if !(1..=256).contains(&cfg.backup.uploads_in_flight) {
            return Err(ParseError::Invalid("backup.uploads_in_flight must be 1 to 256".into()));
        }
        if let Some(socket) = &mut cfg.daemon.socket {
            *socket = base.join(&*socket);
        }
        check_daemon(&cfg.daemon).map_err(ParseError::Invalid)?;
        check_jobs(&cfg.jobs).map_err(ParseError::Invalid)?;
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

    #[test]
    fn jobs_and_daemon_are_checked() {
        let job = |extra: &str| format!("{GOOD}\n[[jobs]]\nname = \"pg\"\nrepo = \"prod/db\"\n{extra}\n");
        let cfg = load(&job("schedule = \"0 2 * * *\"\njitter_secs = 600\ncommand = [\"pg_dump\", \"app\"]")).unwrap();
        assert_eq!(cfg.jobs[0].argv(), ["pg_dump", "app"]);
        let cfg = load(&job("schedule = \"@daily\"\npath = \"/etc\"")).unwrap();
        assert_eq!(cfg.jobs[0].argv(), ["tar", "--create", "--file=-", "--directory=/", "--", "etc"]);
        for (bad, why) in [
            ("schedule = \"0 2 * *\"\ncommand = [\"x\"]", "schedule"),
            ("schedule = \"0 2 * * *\"", "exactly one"),
            ("schedule = \"0 2 * * *\"\ncommand = [\"x\"]\npath = \"/etc\"", "exactly one"),
            ("schedule = \"0 2 * * *\"\npath = \"etc\"", "absolute"),
            ("schedule = \"0 2 * * *\"\ncommand = [\"x\"]\njitter_secs = 100000", "jitter"),
        ] {
            let err = load(&job(bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let twice = format!(
            "{}[[jobs]]\nname = \"pg\"\nrepo = \"a\"\nschedule = \"@daily\"\ncommand = [\"y\"]\n",
            job("schedule = \"@daily\"\ncommand = [\"x\"]")
        );
        assert!(load(&twice).unwrap_err().to_string().contains("two jobs"));
        let err = load(&format!("{GOOD}\n[daemon]\nhealth = \"0.0.0.0:9187\"\n")).unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        let err = load(&format!("{GOOD}\n[daemon]\nsocket = \"s.sock\"\n")).unwrap_err().to_string();
        assert!(err.contains("socket_repos"), "{err}");
        let cfg =
            load(&format!("{GOOD}\n[daemon]\nsocket = \"s.sock\"\nsocket_repos = [\"app/db\"]\nsocket_mode = 0o600\n"))
                .unwrap();
        assert!(cfg.daemon.socket.unwrap().is_absolute());
        assert_eq!(cfg.daemon.socket_mode, 0o600);
    }
}
