//! The admin calls: every one needs the admin role and a fresh TOTP code
//! (checked by [`super::gate`]), and writes a durable audit event before it
//! acts. Revoke an identity, reload the configuration, put or lift legal
//! holds, enter or leave lockdown, expire what retention no longer
//! protects. Their state is the switches of [`crate::access::switches`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use coffer_proto::layout;
use coffer_proto::{RepoName, SnapshotId};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::reply::{invalid, ApiError, Reply};
use crate::access::identity::Identity;
use crate::access::policy::Action;
use crate::access::switches::{self, hold_prefix, read_switch, write_switch, Revocation, LOCKDOWN};
use crate::app::App;
use crate::audit::{Draft, Outcome};
use crate::lifecycle::{delete_doomed, expiry_plan, Deleted, Doomed};

/// Refuses an admin call on `repo` that the admin's own rules do not
/// reach: an admin's rights stop at its trust domain's namespace and its
/// rule's repository patterns, as every role's do.
fn scope(app: &App, admin: &Identity, action: Action, repo: &RepoName, source: IpAddr) -> Result<(), ApiError> {
    let request = crate::access::policy::AccessRequest { identity: admin, action, repo: Some(repo), source };
    app.policy().decide(&request)?;
    Ok(())
}

fn by(admin: &Identity) -> String {
    format!("{} ({})", admin.name(), admin.domain())
}

/// The audit event an admin call writes, durably, before it acts.
async fn audit_intent(app: &App, draft: &Draft, what: String) -> Result<(), ApiError> {
    let intent =
        Draft { outcome: Some(Outcome::Ok), reason: Some(format!("authorized with TOTP; {what}")), ..draft.clone() };
    app.audit.record(intent, true).await.map_err(|_| ApiError::Audit)
}

/// Refuses a call about an identity outside the admin's own trust domain.
fn own_domain(admin: &Identity, verb: &str, trust_domain: &str, identity: &str) -> Result<(), ApiError> {
    if trust_domain.is_empty() || identity.is_empty() {
        return Err(invalid("trust_domain and identity are required"));
    }
    if trust_domain != admin.domain() {
        return Err(ApiError::Denied(crate::access::policy::Denied(format!(
            "{admin} may {verb} identities of its own trust domain {} only, not of {trust_domain}",
            admin.domain(),
        ))));
    }
    Ok(())
}

/// Revokes an identity of the admin's own trust domain, or (`revoked:
/// false`) reinstates it; reinstating loosens, so lockdown refuses it.
/// A revocation also starts a new generation of the identity's upload
/// scope, as a quarantine does.
pub async fn revoke(app: &App, admin: &Identity, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let mut r: Revocation = serde_json::from_slice(body).map_err(invalid)?;
    own_domain(admin, "revoke", &r.trust_domain, &r.identity)?;
    if !r.revoked {
        refuse_loosening_in_lockdown(app, admin, Action::AdminRevoke, "reinstating an identity", "revoking one")
            .await?;
    }
    let verb = if r.revoked { "revoking" } else { "reinstating" };
    audit_intent(app, draft, format!("{verb} {} in trust domain {}", r.identity, r.trust_domain)).await?;
    r.by = Some(by(admin));
    r.time = Some(crate::unix_now());
    let body = serde_json::to_vec(&r).expect("serialises");
    let until = crate::unix_now() + crate::store::LONGEST_LOCK_SECS;
    let folder = switches::revocation_folder(&r.trust_domain, &r.identity);
    app.store.put_new(&switches::switch_name(&format!("{folder}/")), body.into(), until).await?;
    app.load_revocations().await?;
    Ok(Reply::json(StatusCode::CREATED, &r))
}

/// Quarantines the uploads of an identity of the admin's own trust domain:
/// from now on, on every proxy of the store, nothing it uploaded before
/// counts for its dedup queries and commits (nor did it ever for anyone
/// else's), so its next backup uploads everything again, as copies beside
/// the locked objects (SPEC §9 "Dedup scopes"). Only tightens, so lockdown
/// serves it.
pub async fn quarantine(app: &App, admin: &Identity, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let mut q: switches::Quarantine = serde_json::from_slice(body).map_err(invalid)?;
    own_domain(admin, "quarantine", &q.trust_domain, &q.identity)?;
    audit_intent(app, draft, format!("quarantining the uploads of {} in trust domain {}", q.identity, q.trust_domain))
        .await?;
    q.by = Some(by(admin));
    q.time = Some(crate::unix_now());
    let body = serde_json::to_vec(&q).expect("serialises");
    let until = crate::unix_now() + crate::store::LONGEST_LOCK_SECS;
    let folder = switches::quarantine_folder(&q.trust_domain, &q.identity);
    app.store.put_new(&switches::switch_name(&format!("{folder}/")), body.into(), until).await?;
    app.load_revocations().await?;
    let generation = app.generation(&Identity::new(&q.trust_domain, &q.identity));
    let msg = format!("the uploads of {} ({}) were quarantined by {admin}", q.identity, q.trust_domain);
    app.watch
        .alerts
        .raise("quarantine", crate::monitor::alerts::Severity::High, None, Some(q.identity.clone()), msg, None)
        .await;
    Ok(Reply::json(
        StatusCode::CREATED,
        &serde_json::json!({ "trust_domain": q.trust_domain, "identity": q.identity, "generation": generation }),
    ))
}

pub async fn reload(app: &App, draft: &Draft) -> Result<Reply, ApiError> {
    audit_intent(app, draft, "reloading the configuration".into()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.reload.send(tx).await.map_err(|_| ApiError::Conflict("the proxy is shutting down".into()))?;
    match rx.await {
        Ok(Ok(())) => Ok(Reply::empty(StatusCode::OK)),
        Ok(Err(e)) => Err(invalid(e)),
        Err(_) => Err(ApiError::Conflict("the proxy is shutting down".into())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockdownRequest {
    on: bool,
}

/// Lockdown serves the admin calls that only tighten; the loosening form of
/// one (`what`; `instead` is the tightening form) is refused and alerted.
async fn refuse_loosening_in_lockdown(
    app: &App,
    admin: &Identity,
    action: Action,
    what: &str,
    instead: &str,
) -> Result<(), ApiError> {
    if !app.lockdown.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    app.lockdown_refused(admin, action).await;
    Err(ApiError::Denied(crate::access::policy::Denied(format!(
        "the proxy is in lockdown: {what} is refused ({instead} is allowed)"
    ))))
}

pub async fn lockdown(app: &App, admin: &Identity, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let req: LockdownRequest = serde_json::from_slice(body).map_err(invalid)?;
    let what = if req.on { "entering lockdown" } else { "lifting lockdown" };
    audit_intent(app, draft, what.into()).await?;
    write_switch(&*app.store, LOCKDOWN, req.on, by(admin)).await?;
    app.lockdown.store(req.on, std::sync::atomic::Ordering::Release);
    let msg = format!("{what}, by {admin}");
    app.watch
        .alerts
        .raise("lockdown", crate::monitor::alerts::Severity::Critical, None, Some(admin.to_string()), msg, None)
        .await;
    Ok(Reply::json(StatusCode::OK, &serde_json::json!({ "lockdown": req.on })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldRequest {
    repo: RepoName,
    /// One snapshot, or every snapshot of the repository.
    #[serde(default)]
    snapshot: Option<SnapshotId>,
    on: bool,
}

/// Every object a snapshot needs (`lifecycle::objects_of`).
async fn objects_of(app: &App, repo: &RepoName, snapshot: SnapshotId) -> Result<BTreeSet<String>, ApiError> {
    crate::lifecycle::objects_of(&*app.store, repo, snapshot)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no snapshot {snapshot} in {repo}")))
}

async fn snapshots_of(app: &App, repo: &RepoName) -> Result<Vec<SnapshotId>, ApiError> {
    let prefix = layout::prefix(repo, layout::Kind::Snapshots);
    Ok(app.store.list(&prefix).await?.iter().filter_map(|k| k[prefix.len()..].parse().ok()).collect())
}

/// Puts or lifts a legal hold on a snapshot (or all of a repository's) and
/// every object it references. Lifting leaves alone whatever another held
/// snapshot still references.
pub async fn hold(app: &App, admin: &Identity, source: IpAddr, draft: &Draft, body: &[u8]) -> Result<Reply, ApiError> {
    let req: HoldRequest = serde_json::from_slice(body).map_err(invalid)?;
    scope(app, admin, Action::AdminHold, &req.repo, source)?;
    if !req.on {
        refuse_loosening_in_lockdown(app, admin, Action::AdminHold, "lifting a legal hold", "putting one").await?;
    }
    let repo = &req.repo;
    let targets = match req.snapshot {
        Some(s) => vec![s],
        None => snapshots_of(app, repo).await?,
    };
    let verb = if req.on { "putting" } else { "lifting" };
    audit_intent(app, draft, format!("{verb} a legal hold on {} snapshot(s) of {repo}", targets.len())).await?;
    // The switch first: a lifecycle pass reads it just before deleting a
    // root, so from here on no pass deletes what this call will hold.
    for s in &targets {
        write_switch(&*app.store, &hold_prefix(repo, s), req.on, by(admin)).await?;
    }
    let mut objects = BTreeSet::new();
    for s in &targets {
        objects.extend(objects_of(app, repo, *s).await?);
    }
    if !req.on {
        // Objects still needed by snapshots that stay held keep their hold.
        for other in snapshots_of(app, repo).await? {
            if !targets.contains(&other) && read_switch(&*app.store, &hold_prefix(repo, &other)).await? == Some(true) {
                for o in objects_of(app, repo, other).await? {
                    objects.remove(&o);
                }
            }
        }
    }
    // Roots first: a pass deleting what the hold is meant to keep deletes
    // roots first too, and checks each root's hold just before.
    let root_prefix = layout::prefix(repo, layout::Kind::Snapshots);
    let (roots, rest): (Vec<&String>, Vec<&String>) = objects.iter().partition(|k| k.starts_with(&root_prefix));
    for key in roots.into_iter().chain(rest) {
        // Gone since it was listed: deleted by a pass that ran before the
        // switch was written, when the snapshot was deletable.
        match app.store.set_legal_hold(key, req.on).await {
            Err(crate::store::StoreError::NotFound(_)) => {}
            other => other?,
        }
    }
    Ok(Reply::json(
        StatusCode::OK,
        &serde_json::json!({ "snapshots": targets.len(), "objects": objects.len(), "on": req.on }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireRequest {
    repo: RepoName,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct ExpireReport {
    dry_run: bool,
    deleted: Vec<Doomed>,
    /// Snapshots past retention kept because of a legal hold.
    held: Vec<String>,
    /// Objects that could not be deleted (they stay; expiry can run again).
    failed: Vec<Doomed>,
}

pub async fn expire(
    app: &App,
    admin: &Identity,
    source: IpAddr,
    draft: &Draft,
    body: &[u8],
) -> Result<Reply, ApiError> {
    let req: ExpireRequest = serde_json::from_slice(body).map_err(invalid)?;
    scope(app, admin, Action::AdminExpire, &req.repo, source)?;
    let now = crate::unix_now();
    let spare = crate::lifecycle::pass::keepers(app, &req.repo).await?;
    let (doomed, held) = expiry_plan(&*app.store, &req.repo, now, &spare).await?;
    if req.dry_run {
        return Ok(Reply::json(
            StatusCode::OK,
            &ExpireReport { dry_run: true, deleted: doomed, held, failed: Vec::new() },
        ));
    }
    audit_intent(app, draft, format!("expiring {} objects of {}", doomed.len(), req.repo)).await?;
    let Deleted { deleted, failed } = delete_doomed(app, &req.repo, doomed, now).await;
    Ok(Reply::json(StatusCode::OK, &ExpireReport { dry_run: false, deleted, held, failed }))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::testkit::{self, admin, draft, staged};

    const HERE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn lockdown_is_stored_for_every_proxy_and_holds_reach_every_object() {
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let req = staged(&t, &repo, 2).await;
        crate::api::snapshots::commit(&t.app, &mut draft("commit"), &repo, &testkit::uploader(), req.encode().into())
            .await
            .unwrap();

        let body = serde_json::json!({ "repo": repo, "snapshot": req.snapshot, "on": true }).to_string();
        let held = hold(&t.app, &admin(), HERE, &draft("admin-hold"), body.as_bytes()).await.unwrap();
        let held: serde_json::Value = serde_json::from_slice(&held.body).unwrap();
        // Root, index, two chunks, one data key record, the config.
        assert_eq!(held["objects"], 6, "{held}");
        for key in [layout::snapshot(&repo, &req.snapshot), layout::chunk(&repo, &req.chunks[1])] {
            assert!(t.app.store.head(&key).await.unwrap().unwrap().legal_hold, "{key}");
        }

        lockdown(&t.app, &admin(), &draft("admin-lockdown"), br#"{"on": true}"#).await.unwrap();
        assert!(t.app.lockdown.load(std::sync::atomic::Ordering::Acquire));
        // Lifting a hold loosens: refused during lockdown, and the hold stays.
        let lift = serde_json::json!({ "repo": repo, "snapshot": req.snapshot, "on": false }).to_string();
        let err = hold(&t.app, &admin(), HERE, &draft("admin-hold"), lift.as_bytes()).await.unwrap_err();
        assert!(matches!(err, ApiError::Denied(_)), "{err}");
        assert!(t.app.store.head(&layout::snapshot(&repo, &req.snapshot)).await.unwrap().unwrap().legal_hold);
        // Another proxy on the same store learns the lockdown from it.
        let other = testkit::app_with_store(&t, t.app.store.clone());
        assert!(other.load_lockdown().await.unwrap(), "the switch is in the store");
    }

    #[tokio::test]
    async fn an_admins_reach_stops_at_its_trust_domain() {
        let t = testkit::app().await;
        let outside = serde_json::json!({ "repo": "prod/db", "on": true }).to_string();
        let err = hold(&t.app, &admin(), HERE, &draft("admin-hold"), outside.as_bytes()).await.unwrap_err();
        assert!(matches!(err, ApiError::Denied(_)), "{err}");
        let expire_outside = br#"{"repo": "prod/db", "dry_run": true}"#;
        let err = expire(&t.app, &admin(), HERE, &draft("admin-expire"), expire_outside).await.unwrap_err();
        assert!(matches!(err, ApiError::Denied(_)), "{err}");
        let other_domain = br#"{"trust_domain": "prod", "identity": "spiffe://prod/writer"}"#;
        let err = revoke(&t.app, &admin(), &draft("admin-revoke"), other_domain).await.unwrap_err();
        assert!(matches!(err, ApiError::Denied(_)), "{err}");
        // Inside it: the writer is revoked, and the record is in the store.
        let writer = br#"{"trust_domain": "dev", "identity": "spiffe://coffer.dev/writer"}"#;
        revoke(&t.app, &admin(), &draft("admin-revoke"), writer).await.unwrap();
        assert!(t.app.is_revoked(&crate::access::identity::Identity::new("dev", "spiffe://coffer.dev/writer")));
        assert_eq!(t.app.store.list(switches::IDENTITY_SWITCHES).await.unwrap().len(), 1);
    }

    /// A quarantine starts a new generation of the identity's upload scope
    /// on every proxy: its earlier uploads (and those from before scopes)
    /// stop counting for it, and its next upload goes beside them. A
    /// revocation does the same; another domain's admin cannot do either.
    #[tokio::test]
    async fn a_quarantine_makes_an_identitys_uploads_stop_counting_everywhere() {
        use coffer_proto::snapshot::{decode_ids, encode_ids};
        let t = testkit::app().await;
        let repo: RepoName = "dev/unit".parse().unwrap();
        let req = staged(&t, &repo, 2).await;
        let writer = testkit::writer();
        let other = testkit::app_on(&t).await;
        let missing = |app: std::sync::Arc<App>| {
            let (repo, ids) = (repo.clone(), req.chunks.clone());
            async move {
                let who = app.uploader(&testkit::writer());
                decode_ids(&crate::api::chunks::missing(&app, &repo, &who, &encode_ids(&ids)).await.unwrap().body)
                    .unwrap()
            }
        };
        assert!(missing(t.app.clone()).await.is_empty());

        let outside = br#"{"trust_domain": "prod", "identity": "spiffe://prod/writer"}"#;
        let err = quarantine(&t.app, &admin(), &draft("admin-quarantine"), outside).await.unwrap_err();
        assert!(matches!(err, ApiError::Denied(_)), "{err}");
        let body = br#"{"trust_domain": "dev", "identity": "spiffe://coffer.dev/writer"}"#;
        let reply = quarantine(&t.app, &admin(), &draft("admin-quarantine"), body).await.unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()["generation"], 1);
        assert_eq!(
            t.app.uploader(&writer),
            crate::catalog::Uploader { scope: coffer_proto::Scope::of("dev", writer.name(), 1), legacy: false }
        );
        assert!(!t.app.is_revoked(&writer), "a quarantine is not a revocation");
        assert_eq!(missing(t.app.clone()).await, req.chunks, "its earlier uploads no longer count");
        // The other proxy learns it at its next poll.
        assert!(missing(other.clone()).await.is_empty(), "before the poll");
        other.load_revocations().await.unwrap();
        assert_eq!(missing(other.clone()).await, req.chunks, "after the poll");

        // Its upload now goes beside the locked one.
        let (key_id, key, record) = t.data_key(&repo);
        crate::api::repo::put_key(&t.app, &testkit::writer_grant(), &repo, key_id, record).await.unwrap();
        let (id, envelope) = t.chunk(&repo, key_id, &key, &[0; 100]);
        assert_eq!(id, req.chunks[0]);
        let digest = Some(blake3::hash(&envelope).to_hex().to_string());
        let who = t.app.uploader(&writer);
        crate::api::chunks::put_chunk(&t.app, &repo, &who, id, envelope, digest).await.unwrap();
        assert!(t.app.store.head(&layout::chunk_copy(&repo, &id, &who.scope)).await.unwrap().is_some());

        // A record deleted behind the proxies' backs does not bring the
        // old uploads back.
        let record = t.app.store.list(switches::QUARANTINES).await.unwrap();
        t.app.store.delete(&record[0], u64::MAX).await.unwrap();
        t.app.load_revocations().await.unwrap();
        assert_eq!(t.app.generation(&writer), 1, "generations never go down");

        // A revocation starts a generation too.
        let revoked = br#"{"trust_domain": "dev", "identity": "spiffe://coffer.dev/writer"}"#;
        revoke(&t.app, &admin(), &draft("admin-revoke"), revoked).await.unwrap();
        assert_eq!(t.app.generation(&writer), 2);
        let lifted = br#"{"trust_domain": "dev", "identity": "spiffe://coffer.dev/writer", "revoked": false}"#;
        revoke(&t.app, &admin(), &draft("admin-revoke"), lifted).await.unwrap();
        assert_eq!(t.app.generation(&writer), 2, "reinstating starts none");
    }
}
