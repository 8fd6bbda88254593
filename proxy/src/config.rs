//! `proxy.toml`. Every key is documented in `docs/configuration.md`;
//! unknown keys are errors, and relative paths are taken from the file's
//! folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::access::policy::{GrantConfig, Policy, PolicyError, RuleConfig};
pub use crate::access::trust::TrustDomainConfig;
pub use admin::AdminConfig;
pub use masterkey::{read_master_key, MasterKeyError};

mod admin;
mod masterkey;

pub const DEFAULT_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_SLACK_DAYS: u32 = 7;
/// Largest commit body: the root plus 32 bytes per referenced chunk, so
/// 64 MiB covers about two million chunks (~2 TB at 1 MiB average).
pub const DEFAULT_COMMIT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Store requests in flight per API call, unless configured.
pub const DEFAULT_STORE_FAN_OUT: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Names this proxy in audit events (several proxies may share a bucket).
    pub proxy_id: String,
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    /// Accounts or tenants: each a client CA, its CRLs and its namespace.
    #[serde(default)]
    pub trust_domains: Vec<TrustDomainConfig>,
    #[serde(default)]
    pub network: NetworkConfig,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub audit: AuditConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub aws: AwsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub alerts: crate::monitor::detect::AlertsConfig,
    #[serde(default)]
    pub scrub: crate::monitor::scrub::ScrubConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub assess: AssessConfig,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    #[serde(default)]
    pub repo_policies: Vec<crate::access::governance::RepoPolicyConfig>,
}

/// `[lifecycle]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Seconds between passes; 0 turns the pass off (`admin expire` still
    /// works).
    pub interval_secs: u64,
    /// Up to this many seconds of random delay before each pass, so the
    /// proxies of a fleet do not all ask the store at the same moment.
    pub jitter_secs: u64,
    /// Whether this proxy writes listing packs (SPEC §7): off by default,
    /// since a pack copies data key records and proxies from before packs
    /// do not delete packs at expiry. Turn it on once every proxy of the
    /// store knows packs.
    pub listing_packs: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self { interval_secs: 3600, jitter_secs: 300, listing_packs: false }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The proxy's certificate chain (PEM).
    pub cert: PathBuf,
    /// The proxy's private key (PEM).
    pub key: PathBuf,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Source addresses allowed to connect at all, checked before the TLS
    /// handshake; empty means any.
    pub allow_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreConfig {
    /// The filesystem store (write-once files, lock files beside them).
    Fs { path: PathBuf },
    /// S3 with Object Lock.
    S3(crate::store::S3Config),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KeysConfig {
    /// Key records must be wrapped by this local master key. It unwraps
    /// every data key, so root on this host reads every backup: refused
    /// when the proxy listens beyond loopback (it serves other hosts)
    /// unless `single_host = true` says the operator accepts that.
    Local {
        master_key: PathBuf,
        #[serde(default)]
        single_host: bool,
    },
    /// Key records must be wrapped by AWS KMS keys that pass the checks.
    Kms(crate::keycheck::KmsCheckConfig),
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(default, deny_unknown_fields)]
pub struct AssessConfig {
    /// Seconds between background assessments (0: off); new high findings
    /// raise an `assess` alert.
    pub interval_secs: u64,
}

impl Default for AssessConfig {
    fn default() -> Self {
        Self { interval_secs: 86_400 }
    }
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where Prometheus scrapes `/metrics` (plain HTTP; keep it on a
    /// management network). None: no metrics listener.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Refuse public AWS endpoints: S3 and KMS endpoints must be configured
    /// explicitly and be VPC endpoints (`*.vpce.amazonaws.com`) or private
    /// hosts. An S3 gateway endpoint uses the regional name: allow it with
    /// `s3_gateway_endpoint = true`.
    pub require_private_endpoints: bool,
    pub s3_gateway_endpoint: bool,
}

/// An endpoint that is not private, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublicEndpoint(String);

/// Whether an endpoint URL is acceptable when public endpoints are refused.
pub fn private_endpoint(url: Option<&str>, gateway_ok: bool) -> Result<(), PublicEndpoint> {
    let url =
        url.ok_or_else(|| PublicEndpoint("no endpoint is configured, so the SDK would use the public one".into()))?;
    let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
    let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
    if !aws || host.ends_with(".vpce.amazonaws.com") || (gateway_ok && host.starts_with("s3.")) {
        Ok(())
    } else {
        Err(PublicEndpoint(format!("{url} is a public AWS endpoint")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The live audit log (JSON lines, hash-chained); sealed segments go to
    /// `sealed/` beside it.
    pub path: PathBuf,
    /// Seal a segment after this many events...
    #[serde(default = "default_segment_events")]
    pub segment_events: u64,
    /// ...or once its first event is this old.
    #[serde(default = "default_segment_secs")]
    pub segment_secs: u64,
    /// Ed25519 key (PKCS#8, 0600) that signs seals; created on first start,
    /// its public key written beside it as `.pub` (default: `signing.key`
    /// beside the log).
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// How often the live file is offered for sealing by age and sealed
    /// segments are shipped to the store.
    #[serde(default = "default_ship_secs")]
    pub ship_secs: u64,
    /// A signed checkpoint of the newest event goes to the store at most
    /// this often (when there are new events); 0: none.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
}

fn default_checkpoint_secs() -> u64 {
    crate::audit::DEFAULT_CHECKPOINT_SECS
}

fn default_ship_secs() -> u64 {
    10
}

fn default_segment_events() -> u64 {
    crate::audit::DEFAULT_SEGMENT_EVENTS
}
fn default_segment_secs() -> u64 {
    crate::audit::DEFAULT_SEGMENT_SECS
}

impl AuditConfig {
    /// Where alerts wait for the webhook: `alerts/` beside the audit log.
    pub fn alert_spool(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join("alerts")
    }

    /// Client certificates seen at handshakes: `client-certs.json` beside the audit log.
    pub fn client_certs(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join("client-certs.json")
    }

    pub fn spool(&self) -> crate::audit::SpoolConfig {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::audit::SpoolConfig {
            path: self.path.clone(),
            segment_events: self.segment_events.max(1),
            segment_secs: self.segment_secs.max(1),
            checkpoint_secs: self.checkpoint_secs,
            signing_key: self.signing_key.clone().unwrap_or_else(|| dir.join("signing.key")),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long every snapshot and what it references stay locked.
    pub days: u32,
    /// Extra lock time given on each write or extension, so a live chunk
    /// needs at most one extension per slack period.
    pub slack_days: u32,
    /// How long an upload is locked until a commit first references it
    /// (which extends its lock to the snapshot's); 0: locked for retention
    /// and slack at once (SPEC §10 "The upload lock").
    pub upload_lock_hours: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { days: DEFAULT_RETENTION_DAYS, slack_days: DEFAULT_SLACK_DAYS, upload_lock_hours: 0 }
    }
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest commit body.
    pub commit_max_bytes: usize,
    /// Requests one identity may have in flight at once (beyond: 503).
    pub identity_in_flight: usize,
    /// Sustained requests per second per identity (beyond the burst: 429).
    pub identity_rate: f64,
    /// Requests an identity may make at once after being idle.
    pub identity_burst: f64,
    /// A request must be answered within this (beyond: 503).
    pub request_timeout_secs: u64,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout_secs: u64,
    /// A TLS handshake must finish within this (slow-loris).
    pub handshake_timeout_secs: u64,
    /// Connections one source address may hold at once, handshakes
    /// included (beyond: closed at once).
    pub connections_per_source: usize,
    /// Connections one identity may hold at once (beyond: closed after
    /// the handshake).
    pub connections_per_identity: usize,
    /// Bytes of request and response bodies one identity may have buffered
    /// in the proxy at once: bodies being read, and answers its client has
    /// not read yet (beyond: 503). At least the largest body, the commit's.
    pub identity_buffer_bytes: usize,
    /// The same, for all identities together.
    pub buffer_bytes: usize,
    /// Store requests one API call (a dedup query, a commit, a listing)
    /// keeps in flight at once: what the catalog does not answer goes to
    /// the store concurrently, never one object after another.
    pub store_fan_out: usize,
    /// Chunks the proxy's catalogs (what it knows is stored) hold at most,
    /// over all repositories; 55 to 103 bytes each (`coffer-bench catalog`).
    pub catalog_chunks: usize,
    /// Store requests in flight over all API calls at once.
    pub store_requests: usize,
    /// Bytes of new objects one identity may store through this proxy per
    /// UTC day (beyond: 403 `quota`, and an alert); 0: no quota. Everything
    /// uploaded is locked (for retention + slack, or the upload lock), so
    /// this bounds what a stolen certificate can make the bucket keep.
    pub identity_upload_bytes_per_day: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            commit_max_bytes: DEFAULT_COMMIT_MAX_BYTES,
            identity_in_flight: 64,
            // A fast agent sends ~1000 chunk uploads per second at 1 GB/s;
            // the limit is for runaway or hostile clients, not backups.
            identity_rate: 2000.0,
            identity_burst: 4000.0,
            request_timeout_secs: 300,
            idle_timeout_secs: 120,
            handshake_timeout_secs: 10,
            // Many hosts behind one NAT share an address; an agent needs one
            // connection, a daemon one per job running.
            store_fan_out: DEFAULT_STORE_FAN_OUT,
            catalog_chunks: crate::catalog::DEFAULT_MAX_CHUNKS,
            store_requests: 256,
            identity_upload_bytes_per_day: 0,
            connections_per_source: 256,
            connections_per_identity: 64,
            identity_buffer_bytes: 2 * DEFAULT_COMMIT_MAX_BYTES,
            buffer_bytes: 1 << 30,
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {problem}", path.display())]
    Refused { path: PathBuf, problem: ConfigProblem },
}

/// What is wrong with a configuration's text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// Not TOML, an unknown key, or a value of the wrong type (the message
    /// points at the line).
    #[error("{0}")]
    Syntax(String),
    /// A value out of its range, or settings that contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The rules, grants or repository policies.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|problem| ConfigError::Refused { path: path.into(), problem })
    }

    /// Parses and validates a config's text; relative paths are taken from
    /// `base`. Never panics, whatever the text (fuzzed).
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigProblem> {
        let mut cfg: ProxyConfig = toml::from_str(text).map_err(|e| ConfigProblem::Syntax(e.to_string()))?;
        for p in [&mut cfg.tls.cert, &mut cfg.tls.key, &mut cfg.audit.path, &mut cfg.admin.totp_file] {
            *p = base.join(&*p);
        }
        if let Some(k) = &mut cfg.audit.signing_key {
            *k = base.join(&*k);
        }
        if let Some(ca) = cfg.alerts.webhook.as_mut().and_then(|h| h.ca.as_mut()) {
            *ca = base.join(&*ca);
        }
        for d in &mut cfg.trust_domains {
            d.ca = base.join(&d.ca);
            for crl in &mut d.crls {
                *crl = base.join(&*crl);
            }
        }
        if let StoreConfig::Fs { path } = &mut cfg.store {
            *path = base.join(&*path);
        }
        if let KeysConfig::Local { master_key, .. } = &mut cfg.keys {
            *master_key = base.join(&*master_key);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigProblem> {
        let invalid = |m: String| Err(ConfigProblem::Invalid(m));
        if self.proxy_id.is_empty()
            || !self.proxy_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!("proxy_id {:?}: use letters, digits, `-` and `_`", self.proxy_id));
        }
        if self.retention.days == 0 {
            return invalid("retention.days must be at least 1".into());
        }
        let hours = self.retention.upload_lock_hours;
        if hours == 1 || u64::from(hours) > 24 * u64::from(self.retention.days) {
            return invalid(format!(
                "retention.upload_lock_hours is {hours}: it must be 0 (uploads locked for retention at once) or from \
                 2 (the catalog trusts a lock only while it has an hour to go) to 24 × retention.days"
            ));
        }
        let l = &self.limits;
        let positive_rate = l.identity_rate.is_finite() && l.identity_rate > 0.0;
        if l.identity_in_flight == 0 || !positive_rate || l.identity_burst < 1.0 {
            return invalid("limits: identity_in_flight, identity_rate and identity_burst must be positive".into());
        }
        let largest = l.commit_max_bytes.max(coffer_proto::ENVELOPE_MAX);
        if l.identity_buffer_bytes < largest || l.buffer_bytes < l.identity_buffer_bytes {
            return invalid(format!(
                "limits: identity_buffer_bytes must hold the largest body ({largest} bytes), and buffer_bytes \
                 at least identity_buffer_bytes"
            ));
        }
        if l.buffer_bytes > u32::MAX as usize {
            return invalid("limits: buffer_bytes must be below 4 GiB".into());
        }
        if !(1..=1024).contains(&l.store_fan_out) || !(1..=65_536).contains(&l.store_requests) {
            return invalid("limits.store_fan_out must be 1 to 1024, limits.store_requests 1 to 65536".into());
        }
        if l.request_timeout_secs == 0 || l.idle_timeout_secs == 0 || l.handshake_timeout_secs == 0 {
            return invalid("limits: the timeouts must be positive".into());
        }
        if matches!(self.keys, KeysConfig::Local { single_host: false, .. }) && !self.listen.ip().is_loopback() {
            return invalid(format!(
                "keys.provider = \"local\" with listen = \"{}\": the master key on this host unwraps every \
                 data key, so whoever has root here reads every backup of every host it serves (SPEC §12). Use \
                 KMS (provider = \"kms\", docs/aws.md), or listen on loopback (127.0.0.1) for one host, or set \
                 keys.single_host = true to accept it",
                self.listen
            ));
        }
        if matches!(&self.store, StoreConfig::S3(s3) if s3.attempt_timeout_secs == 0) {
            return invalid("store.attempt_timeout_secs must be positive".into());
        }
        if self.aws.require_private_endpoints {
            if let StoreConfig::S3(s3) = &self.store {
                private_endpoint(s3.endpoint.as_deref(), self.aws.s3_gateway_endpoint)
                    .or_else(|e| invalid(format!("store.endpoint: {e} (aws.require_private_endpoints is on)")))?;
            }
            if let KeysConfig::Kms(kms) = &self.keys {
                private_endpoint(kms.endpoint.as_deref(), false)
                    .or_else(|e| invalid(format!("keys.endpoint: {e} (aws.require_private_endpoints is on)")))?;
            }
        }
        self.policy()?;
        self.repo_policies()?;
        Ok(())
    }

    /// The repository policies, knowing the bucket's region if configured.
    pub fn repo_policies(&self) -> Result<crate::access::governance::RepoPolicies, PolicyError> {
        let (region, mode) = match &self.store {
            StoreConfig::S3(s3) => (s3.region.clone(), Some(s3.lock_mode)),
            StoreConfig::Fs { .. } => (None, None),
        };
        crate::access::governance::RepoPolicies::new(&self.repo_policies, region, mode)
    }

    pub fn policy(&self) -> Result<Policy, PolicyError> {
        Policy::new(&self.trust_domains, &self.rules, &self.grants)
    }

    /// Seconds every object stays locked, and the extra slack on each write.
    pub fn retention_secs(&self) -> (u64, u64) {
        (u64::from(self.retention.days) * 86_400, u64::from(self.retention.slack_days) * 86_400)
    }

    /// Seconds an upload stays locked until a commit references it (0: the
    /// whole retention at once).
    pub fn upload_lock_secs(&self) -> u64 {
        u64::from(self.retention.upload_lock_hours) * 3600
    }
}

#[cfg(test)]
mod tests;
