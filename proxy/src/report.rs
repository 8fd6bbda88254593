//! `coffer-proxy keys report`: which KEKs wrapped which keys, for which
//! repository, uploaded when and by whom (from the audit trail), and each
//! KEK's current state and rotation as the key service reports it.

use std::collections::{BTreeMap, HashMap};

use coffer_proto::keys::{KeyRecord, Purpose};
use coffer_proto::repo::RepoConfig;
use serde::Serialize;

use crate::config::ProxyConfig;
use crate::keycheck::KekState;

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
pub async fn keys_report(cfg: &ProxyConfig) -> Result<KeysReport, String> {
    let store = crate::server::open_store(cfg).await?;
    let checker = crate::server::key_checker(cfg).await?;

    // Who uploaded what, from the audit trail: (repo, key id or "config").
    let mut uploads: HashMap<(String, String), (String, u64)> = HashMap::new();
    let (segments, live) = crate::audit::local_trail(&cfg.audit.spool()).map_err(|e| e.to_string())?;
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
    for key in store.list("").await.map_err(|e| e.to_string())? {
        let record = if let Some(repo) = key.strip_suffix("/config") {
            let Some(bytes) = store.get(&key).await.map_err(|e| e.to_string())? else { continue };
            let Ok(cfg) = RepoConfig::decode(&bytes) else { continue };
            (repo.to_string(), "config".to_string(), cfg.id_key)
        } else if let Some((repo, id)) = key.split_once("/keys/") {
            let Some(bytes) = store.get(&key).await.map_err(|e| e.to_string())? else { continue };
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
