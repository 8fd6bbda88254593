//! `coffer-proxy keys report`: which KEKs wrapped which keys, for which
//! repository, uploaded when and by whom (from the audit trail), and each
//! KEK's current state and rotation as the key service reports it.

use std::collections::{BTreeMap, HashMap};

use coffer_proto::keys::{KeyRecord, Purpose};
use coffer_proto::repo::RepoConfig;
use serde::Serialize;

use crate::config::ProxyConfig;
use crate::keycheck::KekState;
use crate::parts::SetupError;

#[derive(Debug, Serialize)]
pub struct KeysReport {
    pub keks: Vec<KekEntry>,
}

#[derive(Debug, Serialize)]
pub struct KekEntry {
    pub kek: String,
    pub state: Option<KekState>,
    /// Why the state could not be read, if it could not.
    pub state_error: Option<String>,
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Serialize)]
pub struct KeyEntry {
    pub repo: String,
    pub key_id: String,
    pub purpose: &'static str,
    pub uploaded_by: Option<String>,
    /// Unix milliseconds of the upload's audit event.
    pub uploaded_ms: Option<u64>,
}

/// Builds the report from the store, the local audit trail and the key service.
pub async fn keys_report(cfg: &ProxyConfig) -> Result<KeysReport, SetupError> {
    let store = crate::parts::open_store_to_read(cfg).await?;
    let checker = crate::parts::key_checker(cfg).await?;

    // Who uploaded what, from the audit trail: (repo, key id or "config").
    let mut uploads: HashMap<(String, String), (String, u64)> = HashMap::new();
    let (segments, live) =
        crate::audit::local_trail(&cfg.audit.spool()).map_err(|e| SetupError::path("audit log", &cfg.audit.path, e))?;
    for line in segments.iter().flat_map(|(_, t)| t.lines()).chain(live.lines()) {
        let Ok(e) = serde_json::from_str::<crate::audit::Event>(line) else { continue };
        if e.outcome != crate::audit::Outcome::Ok || !matches!(e.action.as_str(), "put-key" | "put-config") {
            continue;
        }
        let object = e.object.clone().unwrap_or_else(|| "config".into());
        let who = format!("{} ({})", e.identity.unwrap_or_default(), e.trust_domain.unwrap_or_default());
        uploads.entry((e.repo.unwrap_or_default(), object)).or_insert((who, e.time_ms));
    }

    let mut by_kek: BTreeMap<String, Vec<KeyEntry>> = BTreeMap::new();
    for key in store.list("").await? {
        let record = if let Some(repo) = key.strip_suffix("/config") {
            let Some(bytes) = store.get(&key).await? else { continue };
            let Ok(cfg) = RepoConfig::decode(&bytes) else { continue };
            (repo.to_string(), "config".to_string(), cfg.id_key)
        } else if let Some((repo, id)) = key.split_once("/keys/") {
            let Some(bytes) = store.get(&key).await? else { continue };
            let Ok(rec) = KeyRecord::decode(&bytes) else { continue };
            (repo.to_string(), id.to_string(), rec)
        } else {
            continue;
        };
        let (repo, object, rec) = record;
        let upload = uploads.get(&(repo.clone(), object));
        by_kek.entry(rec.kek.clone()).or_default().push(KeyEntry {
            repo,
            key_id: rec.key_id.to_string(),
            purpose: match rec.purpose {
                Purpose::Data => "data",
                Purpose::ChunkId => "chunk-id",
            },
            uploaded_by: upload.map(|u| u.0.clone()),
            uploaded_ms: upload.map(|u| u.1),
        });
    }
    let mut keks = Vec::new();
    for (kek, keys) in by_kek {
        let (state, state_error) = match checker.describe(&kek).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e.to_string())),
        };
        keks.push(KekEntry { kek, state, state_error, keys });
    }
    Ok(KeysReport { keks })
}

// === compliance report ===

/// `coffer-proxy report`: per repository, what an auditor asks.
#[derive(Debug, Serialize)]
pub struct ComplianceReport {
    /// Unix seconds.
    pub generated: u64,
    /// Alerts are listed from this time on (unix seconds).
    pub since: u64,
    pub proxy_id: String,
    pub store: StoreFacts,
    /// `ok`, or the first break of the local audit chain.
    pub audit_chain: String,
    pub repos: Vec<RepoReport>,
}

#[derive(Debug, Serialize)]
pub struct StoreFacts {
    pub kind: &'static str,
    pub bucket: Option<String>,
    pub region: Option<String>,
    /// `compliance` or `governance` (S3), `write-once files` (filesystem).
    pub lock_mode: String,
}

#[derive(Debug, Serialize)]
pub struct RepoReport {
    pub repo: String,
    pub classification: Option<crate::access::governance::Classification>,
    pub retention_days: u64,
    pub rpo_secs: Option<u64>,
    /// Unix seconds of the newest snapshot.
    pub last_snapshot: Option<u64>,
    /// Whether the newest snapshot is within the RPO (None: no RPO set).
    pub rpo_met: Option<bool>,
    pub snapshots: usize,
    pub bytes_in: u64,
    pub bytes_new: u64,
    pub stored_new: u64,
    /// Share of bytes read that were already stored (0 to 1).
    pub dedup_ratio: f64,
    /// Stored bytes per new byte (below 1: compressed).
    pub compression_ratio: f64,
    pub keks: Vec<KekEntry>,
    /// `ok`, or why the repository's data or keys are outside its regions.
    pub residency: String,
    pub legal_holds: Vec<String>,
    /// The repository policy's schedule (`keep`), if it has one.
    pub schedule: Option<crate::keep::KeepRules>,
    /// How many snapshots the schedule keeps now.
    pub kept: Option<usize>,
    /// When the next snapshot no rule keeps may be deleted (its lock ends;
    /// a held one waits for its hold), unix seconds.
    pub next_expiry: Option<u64>,
    /// Snapshots the audit trail says were committed, still within their
    /// retention, whose root is not in the store: deleted or rolled back
    /// behind the proxy's back.
    pub missing_snapshots: Vec<String>,
    pub alerts: Vec<AlertLine>,
    /// Each committed snapshot, oldest first (for the charts).
    pub history: Vec<SnapshotPoint>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotPoint {
    pub id: String,
    /// Unix seconds.
    pub committed: u64,
    pub bytes_in: u64,
    pub bytes_new: u64,
}

#[derive(Debug, Serialize)]
pub struct AlertLine {
    pub time_ms: u64,
    pub kind: String,
    pub message: String,
}

/// Builds the compliance report from the store, the configuration, the key
/// service and the local audit trail.
pub async fn compliance_report(cfg: &ProxyConfig, since: u64) -> Result<ComplianceReport, SetupError> {
    use crate::config::StoreConfig;
    let store = crate::parts::open_store_to_read(cfg).await?;
    let checker = crate::parts::key_checker(cfg).await?;
    let policies = cfg.repo_policies()?;
    let now = crate::unix_now();
    let store_facts = match &cfg.store {
        StoreConfig::Fs { .. } => {
            StoreFacts { kind: "fs", bucket: None, region: None, lock_mode: "write-once files".into() }
        }
        StoreConfig::S3(s3) => StoreFacts {
            kind: "s3",
            bucket: Some(s3.bucket.clone()),
            region: s3.region.clone(),
            lock_mode: format!("{:?}", s3.lock_mode).to_lowercase(),
        },
    };
    let spool = cfg.audit.spool();
    let (segments, live) =
        crate::audit::local_trail(&spool).map_err(|e| SetupError::path("audit log", &cfg.audit.path, e))?;
    let key = crate::audit::public_key(&spool).ok();
    let audit_chain = match crate::audit::verify(&segments, Some(&live), key.as_deref()) {
        Ok(_) => "ok".to_string(),
        Err(b) => b.to_string(),
    };
    let mut alerts: HashMap<String, Vec<AlertLine>> = HashMap::new();
    // Every snapshot a commit event names, with the event's time (seconds).
    let mut committed: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for line in segments.iter().flat_map(|(_, t)| t.lines()).chain(live.lines()) {
        let Ok(e) = serde_json::from_str::<crate::audit::Event>(line) else { continue };
        if e.action == "commit" && e.outcome == crate::audit::Outcome::Ok {
            if let (Some(repo), Some(snapshot)) = (&e.repo, &e.object) {
                committed.entry(repo.clone()).or_default().entry(snapshot.clone()).or_insert(e.time_ms / 1000);
            }
        }
        if e.action == "alert" && e.time_ms >= since.saturating_mul(1000) {
            let kind = e.object.as_deref().and_then(|o| o.split(':').next()).unwrap_or("").to_string();
            let line = AlertLine { time_ms: e.time_ms, kind, message: e.reason.unwrap_or_default() };
            alerts.entry(e.repo.unwrap_or_default()).or_default().push(line);
        }
    }
    let rpo_rules: Vec<(crate::access::policy::RepoPattern, u64)> = cfg
        .alerts
        .rpo
        .iter()
        .map(|r| (r.repos.clone(), r.secs))
        .chain(cfg.repo_policies.iter().filter_map(|p| p.rpo_secs.map(|s| (p.repos.clone(), s))))
        .filter_map(|(p, s)| crate::access::policy::RepoPattern::parse(&p).ok().map(|p| (p, s)))
        .collect();

    let mut repos = Vec::new();
    let all = store.list("").await?;
    for config_key in all.iter().filter(|k| k.ends_with("/config")) {
        let Ok(repo) = config_key.trim_end_matches("/config").parse::<coffer_proto::RepoName>() else { continue };
        let policy = policies.for_repo(&repo).ok().flatten();
        let (mut snaps, mut last) = (0usize, None::<u64>);
        let (mut bytes_in, mut bytes_new, mut stored_new) = (0u64, 0u64, 0u64);
        let mut holds = Vec::new();
        let mut history = Vec::new();
        let roots: std::collections::HashSet<&String> =
            all.iter().filter(|k| k.starts_with(&format!("{repo}/snapshots/"))).collect();
        // Only committed snapshots (with a root) count, read from listing
        // packs where they can be: a report of a large repository reads a
        // few objects, not one or more per snapshot.
        let ids: Vec<coffer_proto::SnapshotId> = all
            .iter()
            .filter(|k| k.starts_with(&format!("{repo}/index/")) && !coffer_proto::layout::is_pack(k))
            .filter_map(|k| coffer_proto::layout::id_of(k))
            .filter(|id| roots.contains(&coffer_proto::layout::snapshot(&repo, id)))
            .collect();
        let pack_keys: Vec<&String> = all
            .iter()
            .filter(|k| k.starts_with(&format!("{repo}/index/")) && coffer_proto::layout::is_pack(k))
            .collect();
        let headers = super::packed::headers(&*store, &repo, &pack_keys, &ids).await?;
        // The snapshots with a hold switch, from the bucket's listing.
        let switched: std::collections::HashSet<&str> = all
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("{}{repo}/", crate::access::switches::HOLDS)))
            .filter_map(|rest| rest.split_once('/').map(|(id, _)| id))
            .collect();
        for index in headers {
            snaps += 1;
            last = last.max(Some(index.committed));
            // Saturating: segments written before the proxy checked the
            // agent's stats may hold anything.
            bytes_in = u64::saturating_add(bytes_in, index.stats.bytes_in);
            bytes_new = u64::saturating_add(bytes_new, index.stats.bytes_new);
            stored_new = u64::saturating_add(stored_new, index.stats.stored_new);
            history.push(SnapshotPoint {
                id: index.snapshot.to_string(),
                committed: index.committed,
                bytes_in: index.stats.bytes_in,
                bytes_new: index.stats.bytes_new,
            });
            if !switched.contains(index.snapshot.to_string().as_str()) {
                continue;
            }
            let held = crate::access::switches::read_switch(
                &*store,
                &crate::access::switches::hold_prefix(&repo, &index.snapshot),
            )
            .await?;
            if held == Some(true) {
                holds.push(index.snapshot.to_string());
            }
        }
        let mut kek_names: Vec<String> = Vec::new();
        for key in all.iter().filter(|k| k.starts_with(&format!("{repo}/keys/")) || *k == config_key) {
            let Some(bytes) = store.get(key).await? else { continue };
            let kek = if key == config_key {
                RepoConfig::decode(&bytes).ok().map(|c| c.id_key.kek)
            } else {
                KeyRecord::decode(&bytes).ok().map(|r| r.kek)
            };
            if let Some(k) = kek.filter(|k| !kek_names.contains(k)) {
                kek_names.push(k);
            }
        }
        let mut keks = Vec::new();
        for kek in &kek_names {
            let (state, state_error) = match checker.describe(kek).await {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e.to_string())),
            };
            keks.push(KekEntry { kek: kek.clone(), state, state_error, keys: Vec::new() });
        }
        let residency = match policies.for_repo(&repo) {
            Err(e) => e.0,
            Ok(_) => kek_names
                .iter()
                .find_map(|k| policies.check_kek(&repo, k).err())
                .map_or_else(|| "ok".to_string(), |d| d.0),
        };
        let rpo = rpo_rules.iter().find(|(p, _)| p.matches(&repo)).map(|(_, s)| *s);
        let retention_days = policy.and_then(|p| p.retention_days).map_or(u64::from(cfg.retention.days), u64::from);
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut missing_snapshots: Vec<String> = committed
            .remove(repo.as_str())
            .unwrap_or_default()
            .into_iter()
            .filter(|(id, at)| {
                at.saturating_add(retention_days * 86_400) > now && !roots.contains(&format!("{repo}/snapshots/{id}"))
            })
            .map(|(id, _)| id)
            .collect();
        missing_snapshots.sort();
        let schedule = policies.keep_rules(&repo);
        let plan = match &schedule {
            Some(rules) => Some(crate::lifecycle::plan::plan(&*store, &repo, rules).await?),
            None => None,
        };
        let kept = plan.as_ref().map(|p| p.keep.len());
        let next_expiry = plan.as_ref().and_then(|p| p.let_go.iter().filter(|l| !l.held).map(|l| l.retain_until).min());
        repos.push(RepoReport {
            repo: repo.to_string(),
            classification: policy.map(|p| p.classification),
            retention_days,
            rpo_secs: rpo,
            last_snapshot: last,
            rpo_met: rpo.map(|r| last.is_some_and(|t| now.saturating_sub(t) <= r)),
            snapshots: snaps,
            bytes_in,
            bytes_new,
            stored_new,
            dedup_ratio: 1.0 - ratio(bytes_new, bytes_in).min(1.0),
            compression_ratio: ratio(stored_new, bytes_new),
            keks,
            residency,
            legal_holds: holds,
            schedule,
            kept,
            next_expiry,
            missing_snapshots,
            alerts: alerts.remove(repo.as_str()).unwrap_or_default(),
            history: {
                history.sort_by_key(|p| p.committed);
                history
            },
        });
    }
    Ok(ComplianceReport {
        generated: now,
        since,
        proxy_id: cfg.proxy_id.clone(),
        store: store_facts,
        audit_chain,
        repos,
    })
}
