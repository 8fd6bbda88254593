//! `coffer-proxy dev --dir D`: the embedded default, like `vault server -dev`.
//!
//! The first start creates, in `D`: a CA, certificates for the proxy and
//! for a writer, a reader and an admin identity, a local master key, a
//! `proxy.toml` with a policy for them, and a store folder. Every start
//! reuses what is there (same CA, keys, store), and rewrites `agent.toml`
//! (writer) and `restore.toml` (reader) with the address it listens on.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Where dev mode listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// The identities dev mode issues certificates for.
pub const WRITER: &str = "spiffe://coffer.dev/writer";
pub const READER: &str = "spiffe://coffer.dev/reader";
pub const ADMIN: &str = "spiffe://coffer.dev/admin";
/// Repositories the dev writer and reader may use.
pub const DEV_REPOS: &str = "dev/**";

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

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "Coffer dev CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

fn leaf_params(cn: &str, sans: Vec<SanType>, server: bool) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    Ok(p)
}

/// Creates the CA and every certificate, unless `ca.pem` already exists.
fn ensure_certificates(dir: &Path) -> Result<(), String> {
    if dir.join("ca.pem").exists() {
        return Ok(());
    }
    let e = |e: rcgen::Error| format!("generating dev certificates: {e}");
    let io = |e: std::io::Error| format!("writing dev certificates in {}: {e}", dir.display());
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca = ca_params().map_err(e)?.self_signed(&ca_key).map_err(e)?;
    let uri = |s: &str| SanType::URI(s.try_into().expect("static URIs are IA5"));
    let leaves = [
        (
            "proxy",
            leaf_params(
                "coffer-proxy",
                vec![
                    SanType::DnsName("localhost".try_into().expect("ascii")),
                    SanType::IpAddress([127, 0, 0, 1].into()),
                ],
                true,
            ),
        ),
        ("writer", leaf_params("coffer dev writer", vec![uri(WRITER)], false)),
        ("reader", leaf_params("coffer dev reader", vec![uri(READER)], false)),
        ("admin", leaf_params("coffer dev admin", vec![uri(ADMIN)], false)),
    ];
    for (name, params) in leaves {
        let key = KeyPair::generate().map_err(e)?;
        let cert = params.map_err(e)?.signed_by(&key, &ca, &ca_key).map_err(e)?;
        write_file(&dir.join(format!("{name}.key")), key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
        write_file(&dir.join(format!("{name}.pem")), cert.pem().as_bytes(), 0o644).map_err(io)?;
    }
    write_file(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
    // Last, so that an interrupted first start is redone in full.
    write_file(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644).map_err(io)?;
    Ok(())
}

fn proxy_toml(listen: &str) -> String {
    format!(
        r#"# Written by `coffer-proxy dev` on first start; edit freely, it is kept.
proxy_id = "dev"
listen = "{listen}"

[tls]
cert = "proxy.pem"
key = "proxy.key"
client_ca = "ca.pem"

[store]
kind = "fs"
path = "store"

[keys]
provider = "local"
master_key = "master.key"

[audit]
path = "audit/audit.jsonl"

[retention]
days = 30
slack_days = 7

[[rules]]
identity = "{WRITER}"
roles = ["writer"]
repos = ["{DEV_REPOS}"]

[[rules]]
identity = "{READER}"
roles = ["reader"]
repos = ["{DEV_REPOS}"]

[[rules]]
identity = "{ADMIN}"
roles = ["admin"]
repos = ["**"]
"#
    )
}

fn agent_toml(addr: SocketAddr, who: &str) -> String {
    format!(
        r#"# Written by `coffer-proxy dev` at every start ({who} identity).
proxy = "https://{addr}"
ca = "ca.pem"
cert = "{who}.pem"
key = "{who}.key"

[keys]
provider = "local"
master_key = "master.key"
"#
    )
}

/// Prepares `dir` and returns the path of its `proxy.toml`.
pub fn prepare(dir: &Path, listen: Option<SocketAddr>) -> Result<std::path::PathBuf, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    ensure_certificates(dir)?;
    let io = |e: std::io::Error| format!("dev folder {}: {e}", dir.display());
    let (_, master) = coffer_proto::keys::LocalKek::generate();
    create_once(&dir.join("master.key"), master.as_bytes(), 0o600).map_err(io)?;
    let listen = listen.map_or(DEFAULT_LISTEN.to_string(), |a| a.to_string());
    create_once(&dir.join("proxy.toml"), proxy_toml(&listen).as_bytes(), 0o644).map_err(io)?;
    Ok(dir.join("proxy.toml"))
}

/// Writes the agent configs for the bound address and prints how to use them.
pub fn announce(dir: &Path, addr: SocketAddr) -> Result<(), String> {
    let io = |e: std::io::Error| format!("dev folder {}: {e}", dir.display());
    write_file(&dir.join("agent.toml"), agent_toml(addr, "writer").as_bytes(), 0o644).map_err(io)?;
    write_file(&dir.join("restore.toml"), agent_toml(addr, "reader").as_bytes(), 0o644).map_err(io)?;
    let d = dir.display();
    println!(
        "coffer-proxy dev: listening on {addr}
  writer config: {d}/agent.toml     reader config: {d}/restore.toml
  store: {d}/store    audit log: {d}/audit/audit.jsonl

  export COFFER_CONFIG={d}/agent.toml
  coffer init --repo dev/db
  coffer backup --repo dev/db -- pg_dump -Fc mydb
  COFFER_CONFIG={d}/restore.toml coffer restore --repo dev/db <snapshot-id> | pg_restore -d newdb

The local master key in {d}/master.key unwraps every data key: dev mode is for one host."
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    Ok(())
}
