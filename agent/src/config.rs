//! `agent.toml`: where the proxy is, which certificate to present, and
//! which key provider wraps data keys. Every key is documented in
//! `docs/configuration.md`; unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use coffer_client::{ClientConfig, ConfigError, ParseError};
use coffer_proto::RepoName;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Upload requests in flight at once, unless the config says otherwise.
pub const DEFAULT_UPLOADS_IN_FLIGHT: usize = 32;

/// The agent's config: how to reach the proxy ([`ClientConfig`], whose keys
/// sit at the top of the file) and everything else.
#[derive(Debug)]
pub struct AgentConfig {
    pub client: ClientConfig,
    pub keys: KeysConfig,
    pub backup: BackupConfig,
    /// `coffer daemon`: health endpoint, stop timeout, sidecar socket.
    pub daemon: DaemonConfig,
    /// Scheduled backups that `coffer daemon` runs (and `coffer run` runs once).
    pub jobs: Vec<JobConfig>,
    /// Where the agent keeps what it remembers of each repository's
    /// snapshots (`coffer_agent::memory`): `state_dir`, else the default
    /// (`memory::default_dir`); none when neither is known.
    pub state_dir: Option<PathBuf>,
}

/// The file as written. The connection keys are read (and their types
/// checked) by [`ClientConfig`]; they are named here so that a key nobody
/// reads is an error that points at its line and lists the valid ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the connection keys are only named
struct AgentFile {
    proxy: IgnoredAny,
    ca: IgnoredAny,
    cert: IgnoredAny,
    key: IgnoredAny,
    #[serde(default)]
    server_name: Option<IgnoredAny>,
    #[serde(default)]
    retry_deadline_secs: Option<IgnoredAny>,
    #[serde(default)]
    keepalive_secs: Option<IgnoredAny>,
    #[serde(default)]
    request_timeout_secs: Option<IgnoredAny>,
    keys: KeysConfig,
    #[serde(default)]
    backup: BackupConfig,
    #[serde(default)]
    daemon: DaemonConfig,
    #[serde(default)]
    jobs: Vec<JobConfig>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
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
    /// This job's upload limit in KiB/s (default: `backup.limit_upload_kib`).
    #[serde(default)]
    pub limit_upload_kib: Option<u64>,
    /// Commands run around each backup of the job (`[jobs.hooks]`).
    #[serde(default)]
    pub hooks: HooksConfig,
}

/// A job's hooks: each an argv (no shell; use `["sh", "-c", "…"]` for one),
/// run with the job's result in `COFFER_*` variables (docs/operations.md,
/// "Hooks"). An empty list runs nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Before the backup; if it fails, the backup does not run and the
    /// run counts as failed.
    pub before: Vec<String>,
    /// After a backup that committed.
    pub after: Vec<String>,
    /// After a run that failed, whatever the cause (`before` included).
    pub on_failure: Vec<String>,
    /// Each hook is killed after this many seconds and counts as failed.
    pub timeout_secs: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self { before: Vec::new(), after: Vec::new(), on_failure: Vec::new(), timeout_secs: 300 }
    }
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

fn check_jobs(jobs: &[JobConfig]) -> Result<(), ParseError> {
    let mut names = std::collections::HashSet::new();
    for job in jobs {
        let ok_name = !job.name.is_empty()
            && job.name.len() <= 64
            && job.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok_name {
            return Err(ParseError::Invalid(format!("jobs: name {:?} must be 1 to 64 of [A-Za-z0-9._-]", job.name)));
        }
        if !names.insert(job.name.as_str()) {
            return Err(ParseError::Invalid(format!("jobs: two jobs are named {:?}", job.name)));
        }
        match (job.command.is_empty(), &job.path) {
            (false, None) | (true, Some(_)) => {}
            _ => return Err(ParseError::Invalid(format!("job {}: give exactly one of `command` or `path`", job.name))),
        }
        if job.path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(ParseError::Invalid(format!("job {}: path must be absolute", job.name)));
        }
        crate::schedule::parse_schedule(&job.schedule)
            .map_err(|e| ParseError::Invalid(format!("job {}: {e}", job.name)))?;
        if job.jitter_secs > JITTER_MAX_SECS {
            return Err(ParseError::Invalid(format!("job {}: jitter_secs is at most {JITTER_MAX_SECS}", job.name)));
        }
        if job.hooks.timeout_secs == 0 {
            return Err(ParseError::Invalid(format!("job {}: hooks.timeout_secs must be at least 1", job.name)));
        }
    }
    Ok(())
}

fn check_daemon(d: &DaemonConfig) -> Result<(), ParseError> {
    if let Some(addr) = d.health {
        if !addr.ip().is_loopback() {
            return Err(ParseError::Invalid(format!(
                "daemon.health = {addr}: the health endpoint listens on loopback only"
            )));
        }
    }
    if d.socket.is_some() && d.socket_repos.is_empty() {
        return Err(ParseError::Invalid(
            "daemon.socket needs daemon.socket_repos: the repositories it may write".into(),
        ));
    }
    if d.socket_mode > 0o777 {
        return Err(ParseError::Invalid(format!("daemon.socket_mode = {:o}: not a file mode", d.socket_mode)));
    }
    Ok(())
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
    /// Upload limit in KiB/s for every backup (none by default); a job's
    /// `limit_upload_kib` or `--limit-upload` overrides it.
    pub limit_upload_kib: Option<u64>,
    /// Download limit in KiB/s for restores and verifies (none by default).
    pub limit_download_kib: Option<u64>,
    /// Repositories made before configs were authenticated, whose config
    /// this agent accepts without a MAC (with chunker sizes above the
    /// floors, and FastCDC's public cut points). Any other repository's
    /// config must carry a valid MAC, so a proxy cannot strip it.
    pub legacy_repos: Vec<RepoName>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            uploads_in_flight: DEFAULT_UPLOADS_IN_FLIGHT,
            limit_upload_kib: None,
            limit_download_kib: None,
            legacy_repos: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// Loads a config file; relative paths in it are taken from the file's
    /// folder, so a config and its certificates can move together.
    /// `COFFER_RETRY_DEADLINE_SECS` overrides the retry deadline.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| e.at(path))?;
        cfg.client.apply_env().map_err(|e| e.at(path))?;
        Ok(cfg)
    }

    /// Parses and validates a config's text; relative paths are taken from
    /// `base`. Never panics, whatever the text (fuzzed).
    pub fn parse(text: &str, base: &Path) -> Result<Self, ParseError> {
        let file: AgentFile = toml::from_str(text).map_err(|e| ParseError::Toml(e.to_string()))?;
        let client = ClientConfig::parse(text, base)?;
        let state_dir = file.state_dir.map(|d| base.join(d)).or_else(crate::memory::default_dir);
        let mut cfg = AgentConfig {
            client,
            keys: file.keys,
            backup: file.backup,
            daemon: file.daemon,
            jobs: file.jobs,
            state_dir,
        };
        if let KeysConfig::Local { master_key } = &mut cfg.keys {
            *master_key = base.join(&*master_key);
        }
        if !(1..=256).contains(&cfg.backup.uploads_in_flight) {
            return Err(ParseError::Invalid("backup.uploads_in_flight must be 1 to 256".into()));
        }
        if let Some(socket) = &mut cfg.daemon.socket {
            *socket = base.join(&*socket);
        }
        check_daemon(&cfg.daemon)?;
        check_jobs(&cfg.jobs)?;
        Ok(cfg)
    }
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
        assert!(cfg.client.ca.is_absolute() && cfg.client.ca.ends_with("ca.pem"));
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
