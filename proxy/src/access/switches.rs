//! The admin's switches, kept in the store under the reserved `admin/`
//! tree so they survive restarts and reach every proxy on the bucket:
//! revocations, lockdown and legal holds. Each switch is a write-once
//! object named `<20-digit millis>-<8 hex>`; the newest decides.

use coffer_proto::{RepoName, SnapshotId};
use serde::{Deserialize, Serialize};

use crate::access::policy::Action;
use crate::store::{ObjectStore, StoreError};

/// Where an earlier version stored revocations, one flat object per
/// identity (still read, as each identity's oldest record).
pub const REVOCATIONS: &str = "admin/revocations/";
/// Revocation switches: `admin/identities/<hash>/<millis>-<random>`, the
/// newest deciding. (Not under `REVOCATIONS`: on the filesystem store an
/// old flat record there would block the folder of the same name.)
pub const IDENTITY_SWITCHES: &str = "admin/identities/";
/// Quarantines: `admin/quarantine/<hash>/<millis>-<random>`, one record
/// per quarantine of an identity's uploads.
pub const QUARANTINES: &str = "admin/quarantine/";
/// When upload scopes began in this store (`App::owner_of`).
pub const SCOPES_SINCE: &str = "admin/scopes-since";
/// Lockdown switches, one object each; the newest decides.
pub const LOCKDOWN: &str = "admin/lockdown/";
/// Legal hold switches per snapshot: `admin/holds/<repo>/<snapshot>/<time>`.
pub const HOLDS: &str = "admin/holds/";

/// A revocation (or its lifting), as stored and as sent to
/// `POST /v1/admin/revoke`. Stored write-once under
/// `admin/identities/<BLAKE3 of domain and identity>/<millis>-<random>`;
/// the newest record of an identity decides. (A record stored as
/// `admin/revocations/<hash>` by an earlier version counts as the oldest.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    pub trust_domain: String,
    pub identity: String,
    /// `false` lifts an earlier revocation (reinstates the identity).
    #[serde(default = "yes")]
    pub revoked: bool,
    /// Who revoked it, when (set by the proxy).
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub time: Option<u64>,
}

fn yes() -> bool {
    true
}

/// The folder of an identity's revocation records.
pub fn revocation_folder(trust_domain: &str, identity: &str) -> String {
    format!("{IDENTITY_SWITCHES}{}", identity_hash(trust_domain, identity))
}

/// The folder of an identity's quarantine records.
pub fn quarantine_folder(trust_domain: &str, identity: &str) -> String {
    format!("{QUARANTINES}{}", identity_hash(trust_domain, identity))
}

fn identity_hash(trust_domain: &str, identity: &str) -> blake3::Hash {
    blake3::hash(format!("{trust_domain}\0{identity}").as_bytes())
}

/// A quarantine of an identity's uploads, as stored and as sent to
/// `POST /v1/admin/quarantine`: every record of an identity (and every
/// revocation of it) starts a new generation of its upload scope, so what
/// it uploaded before no longer counts for its dedup queries and commits
/// (SPEC §9 "Dedup scopes").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quarantine {
    pub trust_domain: String,
    pub identity: String,
    /// Who quarantined it, when (set by the proxy).
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub time: Option<u64>,
}

/// A switch (lockdown, or a snapshot's hold), as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    on: bool,
    by: String,
    time: u64,
}

/// A name under `prefix` that sorts after every earlier one: `<20-digit
/// millis>-<8 hex>`.
pub fn switch_name(prefix: &str) -> String {
    let now_ms = crate::unix_now_ms();
    let mut r = [0u8; 4];
    aws_lc_rs::rand::fill(&mut r).expect("the system RNG failed");
    format!("{prefix}{now_ms:020}-{}", hex::encode(r))
}

/// Writes a switch object under `prefix`, named so the newest sorts last,
/// locked for as long as a store allows.
pub async fn write_switch(store: &dyn ObjectStore, prefix: &str, on: bool, by: String) -> Result<(), StoreError> {
    let body = serde_json::to_vec(&Switch { on, by, time: crate::unix_now() }).expect("serialises");
    let until = crate::unix_now() + crate::store::LONGEST_LOCK_SECS;
    store.put_new(&switch_name(prefix), body.into(), until).await?;
    Ok(())
}

/// The newest switch under `prefix`, if any.
pub async fn read_switch(store: &dyn ObjectStore, prefix: &str) -> Result<Option<bool>, StoreError> {
    // Only names this module writes count: `<20-digit millis>-<8 hex>`.
    let is_switch = |k: &String| {
        k.strip_prefix(prefix).and_then(|n| n.split_once('-')).is_some_and(|(t, r)| {
            t.len() == 20
                && t.bytes().all(|b| b.is_ascii_digit())
                && r.len() == 8
                && r.bytes().all(|b| b.is_ascii_hexdigit())
        })
    };
    let Some(newest) = store.list(prefix).await?.into_iter().filter(is_switch).max() else { return Ok(None) };
    let Some(body) = store.get(&newest).await? else { return Ok(None) };
    Ok(serde_json::from_slice::<Switch>(&body).ok().map(|s| s.on))
}

/// The switches of one snapshot's legal hold.
pub fn hold_prefix(repo: &RepoName, snapshot: &SnapshotId) -> String {
    format!("{HOLDS}{repo}/{snapshot}/")
}

/// During lockdown: reads, the admin call that lifts it, and the admin
/// calls that only tighten, which an incident needs most: revoking an
/// identity and putting a legal hold (lifting one is refused in [`hold`]).
pub fn allowed_in_lockdown(action: Action) -> bool {
    use Action::*;
    matches!(
        action,
        Whoami
            | GetConfig
            | GetKey
            | GetChunk
            | ListCopies
            | ListSnapshots
            | GetSnapshot
            | ListEpochs
            | AdminLockdown
            | AdminRevoke
            | AdminQuarantine
            | AdminHold
    )
}
