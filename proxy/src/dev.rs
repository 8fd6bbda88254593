//! `coffer-proxy dev --dir D`: the embedded default, like `vault server -dev`.
//!
//! The first start creates, in `D`: a CA (one trust domain, `dev`, owning
//! `dev/**`), an empty CRL, certificates for the proxy and for a writer, a
//! reader, an auditor and an admin identity, a local master key, a
//! `proxy.toml` with a policy for them, and a store folder. Every start
//! reuses what is there (same CA, keys, store), and rewrites each
//! identity's config (`writer.toml`, `reader.toml`, …) with the address it
//! listens on.
//! `dev issue` and `dev revoke` manage more certificates with the same CA.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Where dev mode listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The dev trust domain and the repositories it owns.
pub const DOMAIN: &str = "dev";
pub const DEV_REPOS: &str = "dev/**";
/// The identities dev mode issues certificates for on first start.
pub const IDENTITIES: [(&str, &str); 4] = [
    ("writer", "spiffe://coffer.dev/writer"),
    ("reader", "spiffe://coffer.dev/reader"),
    ("auditor", "spiffe://coffer.dev/auditor"),
    ("admin", "spiffe://coffer.dev/admin"),
];
/// Days a certificate issued by `dev issue` is valid unless told otherwise.
pub const DEFAULT_DAYS: i64 = 365;

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Writes a file only if it does not exist yet, so a restart reuses it.
fn create_once(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all(contents)?;
    f.sync_all()
}

fn random_serial() -> SerialNumber {
    let mut s = [0u8; 16];
    aws_lc_rs::rand::fill(&mut s).expect("the system RNG failed");
    s[0] &= 0x7f; // positive
    SerialNumber::from_slice(&s)
}

/// The dev CA: its key, and a certificate object to sign with. The object is
/// rebuilt from the same key and name, which is all a signature needs.
struct Ca {
    key: KeyPair,
    cert: Certificate,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "Coffer dev CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// Why a dev folder could not be prepared or changed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("dev folder: {}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("dev certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> DevError + Copy + '_ {
    move |source| DevError::Io { path: path.to_path_buf(), source }
}

impl Ca {
    fn create() -> Result<Self, DevError> {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    fn open(dir: &Path) -> Result<Self, DevError> {
        let pem = std::fs::read_to_string(dir.join("ca.key")).map_err(io_at(&dir.join("ca.key")))?;
        let key = KeyPair::from_pem(&pem)?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// Issues a leaf certificate valid from an hour ago for `days` (negative
    /// days give an already expired one, for tests).
    fn issue(&self, cn: &str, sans: Vec<SanType>, server: bool, days: i64) -> Result<(KeyPair, String), DevError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.serial_number = Some(random_serial());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let now = OffsetDateTime::now_utc();
        p.not_after = now + Duration::days(days);
        p.not_before = (now - Duration::hours(1)).min(p.not_after - Duration::days(1));
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        Ok((key, cert.pem()))
    }

    /// A CRL listing `serials`.
    fn crl(&self, serials: &[Vec<u8>]) -> Result<String, DevError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(365),
            crl_number: SerialNumber::from(serials.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.cert, &self.key).and_then(|c| c.pem()).map_err(DevError::from)
    }
}

fn uri(s: &str) -> Result<SanType, DevError> {
    Ok(SanType::URI(s.try_into().map_err(|_| DevError::Invalid(format!("{s:?} is not an IA5 string")))?))
}

fn write_pair(dir: &Path, name: &str, key: &KeyPair, pem: &str) -> Result<(), DevError> {
    let io = io_at(dir);
    write_file(&dir.join(format!("{name}.key")), key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
    write_file(&dir.join(format!("{name}.pem")), pem.as_bytes(), 0o644).map_err(io)
}

/// Creates the CA and every certificate, unless `ca.pem` already exists.
fn ensure_certificates(dir: &Path) -> Result<(), DevError> {
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    let ca = Ca::create()?;
    let server_sans =
        vec![SanType::DnsName("localhost".try_into().expect("ascii")), SanType::IpAddress([127, 0, 0, 1].into())];
    let (key, pem) = ca.issue("coffer-proxy", server_sans, true, 3650)?;
    write_pair(dir, "proxy", &key, &pem)?;
    for (name, identity) in IDENTITIES {
        let (key, pem) = ca.issue(&format!("coffer dev {name}"), vec![uri(identity)?], false, 3650)?;
        write_pair(dir, name, &key, &pem)?;
    }
    let io = io_at(dir);
    write_file(&dir.join("crl.pem"), ca.crl(&[])?.as_bytes(), 0o644).map_err(io)?;
    write_file(&dir.join("ca.key"), ca.key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
    // Last, so that an interrupted first start is redone in full.
    write_file(&dir.join("ca.pem"), ca.cert.pem().as_bytes(), 0o644).map_err(io)
}

fn proxy_toml(listen: &str) -> String {
    let mut rules = String::new();
    for (role, identity) in IDENTITIES {
        let repos = if role == "admin" { "**" } else { DEV_REPOS };
        rules.push_str(&format!(
            "\n[[rules]]\nname = \"dev {role}\"\ntrust_domain = \"{DOMAIN}\"\nidentity = \"{identity}\"\nroles = [\"{role}\"]\nrepos = [\"{repos}\"]\n"
        ));
    }
    format!(
        r#"# Written by `coffer-proxy dev` on first start; edit freely, it is kept.
# SIGHUP reloads trust domains, CRLs, certificates, the allowlist and the rules.
proxy_id = "dev"
listen = "{listen}"

[tls]
cert = "proxy.pem"
key = "proxy.key"

[[trust_domains]]
name = "{DOMAIN}"
ca = "ca.pem"
crls = ["crl.pem"]
repos = ["{DEV_REPOS}"]

[store]
kind = "fs"
path = "store"

# Dev mode: one host holds the store, the master key and every identity.
[keys]
provider = "local"
master_key = "master.key"
single_host = true

[audit]
path = "audit/audit.jsonl"

[retention]
days = 30
slack_days = 7

# Listings of many snapshots read packs of them (one proxy knows them all).
[lifecycle]
listing_packs = true
{rules}"#
    )
}

fn agent_toml(addr: &str, who: &str) -> String {
    format!(
        r#"# Written by `coffer-proxy dev` ({who} identity).
proxy = "https://{addr}"
ca = "ca.pem"
cert = "{who}.pem"
key = "{who}.key"
# What this host remembers of each repository's snapshots (a listing that
# loses one is an error): kept beside the dev store.
state_dir = "state"

[keys]
provider = "local"
master_key = "master.key"
"#
    )
}

/// Prepares `dir` and returns the path of its `proxy.toml`.
pub fn prepare(dir: &Path, listen: Option<SocketAddr>) -> Result<std::path::PathBuf, DevError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_at(dir))?;
    ensure_certificates(dir)?;
    let io = io_at(dir);
    let (_, master) = coffer_proto::keys::LocalKek::generate();
    create_once(&dir.join("master.key"), master.as_bytes(), 0o600).map_err(io)?;
    let listen = listen.map_or(DEFAULT_LISTEN.to_string(), |a| a.to_string());
    create_once(&dir.join("proxy.toml"), proxy_toml(&listen).as_bytes(), 0o644).map_err(io)?;
    Ok(dir.join("proxy.toml"))
}

/// `coffer-proxy keygen`: a new local master key at `path`, mode 0600,
/// never over an existing file (that would orphan every key it wrapped).
/// Returns its id (a fingerprint, not the key).
pub fn keygen(path: &Path) -> Result<String, DevError> {
    let (kek, file) = coffer_proto::keys::LocalKek::generate();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| match e
        .kind()
    {
        std::io::ErrorKind::AlreadyExists => DevError::Invalid(format!(
            "{} exists: a master key is never overwritten (every data key it wrapped would be lost)",
            path.display()
        )),
        _ => DevError::Io { path: path.to_path_buf(), source: e },
    })?;
    f.write_all(file.as_bytes()).and_then(|()| f.sync_all()).map_err(io_at(path))?;
    Ok(kek.id().to_string())
}

/// Writes an agent config for every issued identity with the bound address,
/// and prints how to use them.
pub fn announce(dir: &Path, addr: SocketAddr) -> Result<(), DevError> {
    let io = io_at(dir);
    let addr = addr.to_string();
    // One config per identity, named after it. Earlier versions also wrote
    // copies named agent.toml and restore.toml: gone, so that no stale one
    // names an old address.
    for old in ["agent.toml", "restore.toml"] {
        let path = dir.join(old);
        let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("# Written by `coffer-proxy dev`"));
        if ours {
            std::fs::remove_file(&path).map_err(io_at(&path))?;
        }
    }
    write_file(&dir.join("address"), addr.as_bytes(), 0o644).map_err(io)?;
    for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(who) = name.strip_suffix(".pem").filter(|w| !["ca", "crl", "proxy"].contains(w)) {
            write_file(&dir.join(format!("{who}.toml")), agent_toml(&addr, who).as_bytes(), 0o644).map_err(io)?;
        }
    }
    let d = dir.display();
    println!(
        "coffer-proxy dev: listening on {addr}
  writer config: {d}/writer.toml     reader config: {d}/reader.toml
  store: {d}/store    audit log: {d}/audit/audit.jsonl

  export COFFER_CONFIG={d}/writer.toml
  coffer init --repo dev/db
  coffer backup --repo dev/db -- pg_dump -Fc mydb
  COFFER_CONFIG={d}/reader.toml coffer restore --repo dev/db <snapshot-id> | pg_restore -d newdb

The local master key in {d}/master.key unwraps every data key: dev mode is for one host."
    );
    let _ = std::io::stdout().flush();
    Ok(())
}

fn check_name(name: &str) -> Result<(), DevError> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok || ["ca", "crl", "proxy", "agent", "restore", "master"].contains(&name) {
        return Err(DevError::Invalid(format!(
            "certificate name {name:?}: use letters, digits, `-`, `_`, and not a reserved name"
        )));
    }
    Ok(())
}

/// `dev issue`: a client certificate for `identity` (a SAN URI) from the dev
/// CA, written as `NAME.pem`, `NAME.key` and, once the proxy has an address,
/// `NAME.toml`. The policy still decides what it may do.
pub fn issue(dir: &Path, name: &str, identity: &str, days: i64, server_usage: bool) -> Result<(), DevError> {
    check_name(name)?;
    let ca = Ca::open(dir)?;
    let (key, pem) = ca.issue(&format!("coffer dev {name}"), vec![uri(identity)?], server_usage, days)?;
    write_pair(dir, name, &key, &pem)?;
    if let Ok(addr) = std::fs::read_to_string(dir.join("address")) {
        write_file(&dir.join(format!("{name}.toml")), agent_toml(addr.trim(), name).as_bytes(), 0o644)
            .map_err(io_at(dir))?;
    }
    println!("issued {name}.pem for {identity}, valid {days} days");
    Ok(())
}

/// `dev revoke`: adds the certificate `NAME.pem` to the dev CRL.
pub fn revoke(dir: &Path, name: &str) -> Result<(), DevError> {
    check_name(name)?;
    let path = dir.join(format!("{name}.pem"));
    let pem = std::fs::read(&path).map_err(io_at(&path))?;
    let unreadable = |e: &dyn std::fmt::Display| DevError::Invalid(format!("{}: {e}", path.display()));
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .map_err(|e| unreadable(&e))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| unreadable(&e))?;
    let serial = cert.raw_serial().to_vec();
    let list_path = dir.join("revoked");
    let mut serials: Vec<Vec<u8>> = std::fs::read_to_string(&list_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| hex::decode(l.trim()).ok())
        .collect();
    if !serials.contains(&serial) {
        serials.push(serial);
    }
    let ca = Ca::open(dir)?;
    let io = io_at(dir);
    let list: String = serials.iter().map(|s| hex::encode(s) + "\n").collect();
    write_file(&list_path, list.as_bytes(), 0o644).map_err(io)?;
    write_file(&dir.join("crl.pem"), ca.crl(&serials)?.as_bytes(), 0o644).map_err(io)?;
    println!("revoked {name}.pem; send SIGHUP to the proxy (or restart it) to apply the new CRL");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One config per identity, and none of the old copies left to name a
    /// stale address; a file of the same name the user wrote stays.
    #[test]
    fn each_identity_gets_one_config_and_old_copies_go() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path(), None).unwrap();
        std::fs::write(dir.path().join("agent.toml"), agent_toml("127.0.0.1:1", "writer")).unwrap();
        std::fs::write(dir.path().join("restore.toml"), "# mine\n").unwrap();
        announce(dir.path(), "127.0.0.1:7443".parse().unwrap()).unwrap();
        assert!(!dir.path().join("agent.toml").exists(), "the old copy is gone");
        assert_eq!(std::fs::read_to_string(dir.path().join("restore.toml")).unwrap(), "# mine\n");
        for who in ["writer", "reader", "auditor", "admin"] {
            let text = std::fs::read_to_string(dir.path().join(format!("{who}.toml"))).unwrap();
            assert!(text.contains("https://127.0.0.1:7443") && text.contains(&format!("{who}.pem")), "{text}");
        }
    }
}
