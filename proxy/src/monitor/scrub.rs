//! Integrity scrub: every run re-reads a random sample of the chunks that
//! snapshots reference and compares each object's BLAKE3 with the digest
//! recorded when it was written. A missing object or a mismatch is an
//! alert naming the object and every snapshot that references it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::snapshot::IndexSegment;
use coffer_proto::{ChunkId, RepoName, Scope, SnapshotId};
use serde::Deserialize;

use crate::audit::AuditLog;
use crate::audit::{Draft, Outcome};
use crate::monitor::alerts::Severity;
use crate::monitor::detect::Watch;
use crate::store::{ObjectStore, StoreError};
use coffer_proto::layout as keys;

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    /// Chunks re-read per run; 0 turns the scrub off.
    pub objects_per_run: usize,
    /// Seconds between runs.
    pub interval_secs: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self { objects_per_run: 100, interval_secs: 3600 }
    }
}

/// Something wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub repo: RepoName,
    pub key: String,
    pub problem: &'static str,
    pub snapshots: Vec<SnapshotId>,
}

fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("the system RNG failed");
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
}

/// The index segments in the store: (repo, key).
async fn segments(store: &dyn ObjectStore) -> Result<Vec<(RepoName, String)>, StoreError> {
    Ok(store
        .list("")
        .await?
        .into_iter()
        .filter_map(|k| {
            let (repo, _) = k.split_once("/index/").filter(|_| !keys::is_pack(&k))?;
            Some((repo.parse().ok()?, k))
        })
        .collect())
}

/// Every snapshot of `repo` whose index lists `id`.
async fn referencing(store: &dyn ObjectStore, repo: &RepoName, id: &ChunkId) -> Result<Vec<SnapshotId>, StoreError> {
    let mut out = Vec::new();
    for key in store.list(&format!("{repo}/index/")).await?.into_iter().filter(|k| !keys::is_pack(k)) {
        if let Some(seg) = store.get(&key).await?.and_then(|b| IndexSegment::decode(&b).ok()) {
            if seg.chunks.iter().any(|e| e.id == *id) {
                out.push(seg.snapshot);
            }
        }
    }
    Ok(out)
}

/// One run: checks up to `sample` referenced chunks. Returns how many were
/// checked and what was wrong.
pub async fn run_once(store: &dyn ObjectStore, sample: usize) -> Result<(usize, Vec<Finding>), StoreError> {
    let mut segs = segments(store).await?;
    // The object each sampled entry's snapshot uses: the id's first upload
    // or its committer's copy.
    let mut picked: BTreeSet<(RepoName, ChunkId, Option<Scope>)> = BTreeSet::new();
    // Random segments, then random entries in each, until the sample is full.
    while picked.len() < sample && !segs.is_empty() {
        let (repo, key) = segs.swap_remove(random_below(segs.len()));
        let Some(seg) = store.get(&key).await?.and_then(|b| IndexSegment::decode(&b).ok()) else { continue };
        let mut entries = seg.chunks;
        while picked.len() < sample && !entries.is_empty() {
            let e = entries.swap_remove(random_below(entries.len()));
            picked.insert((repo.clone(), e.id, seg.scope.filter(|_| e.copy)));
        }
    }
    let mut findings = Vec::new();
    for (repo, id, copy) in &picked {
        let key = keys::chunk_at(repo, id, copy.as_ref());
        let problem = match store.head(&key).await? {
            None => Some("is missing"),
            Some(meta) => match (meta.digest, store.get(&key).await?) {
                (_, None) => Some("is missing"),
                (Some(d), Some(body)) if *blake3::hash(&body).as_bytes() != d => {
                    Some("does not match the digest recorded when it was written")
                }
                _ => None,
            },
        };
        if let Some(problem) = problem {
            let snapshots = referencing(store, repo, id).await?;
            findings.push(Finding { repo: repo.clone(), key, problem, snapshots });
        }
    }
    // A put over a stored object (in a versioned bucket, a new version on
    // top of the locked one, with a digest of the writer's choosing) or a
    // delete marker hiding it: the digest check above cannot see it, the
    // version history does. Checked for the repositories sampled.
    let repos: BTreeSet<&RepoName> = picked.iter().map(|(r, _, _)| r).collect();
    for repo in repos {
        for key in store.rewritten(&format!("{repo}/")).await? {
            let problem = "was written again or hidden by a delete marker after it was stored (the locked \
                           original is in the bucket's version history)";
            let chunk = keys::chunk_of(&key).filter(|_| key.contains("/chunks/"));
            let snapshots = match chunk {
                Some((id, _)) => referencing(store, repo, &id).await?,
                None => Vec::new(),
            };
            findings.push(Finding { repo: repo.clone(), key, problem, snapshots });
        }
    }
    Ok((picked.len(), findings))
}

/// Runs forever (aborted at shutdown), every `interval_secs`.
pub async fn scrub_loop(store: Arc<dyn ObjectStore>, watch: Arc<Watch>, audit: AuditLog, cfg: ScrubConfig) {
    if cfg.objects_per_run == 0 {
        return;
    }
    let every = Duration::from_secs(cfg.interval_secs.max(1));
    // The first run waits a full interval: no burst of reads at every start.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let (outcome, checked, reason) = match run_once(&*store, cfg.objects_per_run).await {
            Ok((checked, findings)) => {
                for f in &findings {
                    let snaps: Vec<String> = f.snapshots.iter().map(ToString::to_string).collect();
                    let msg = format!("scrub: {} {}; referenced by snapshots [{}]", f.key, f.problem, snaps.join(", "));
                    let dedup = Some((format!("scrub:{}", f.key), crate::monitor::detect::QUIET_SECS * 6));
                    watch
                        .alerts
                        .raise("scrub", Severity::Critical, Some(f.repo.to_string()), Some(f.key.clone()), msg, dedup)
                        .await;
                }
                let outcome = if findings.is_empty() { Outcome::Ok } else { Outcome::Error };
                (outcome, checked, format!("{checked} objects checked, {} problems", findings.len()))
            }
            Err(e) => (Outcome::Error, 0, format!("scrub could not run: {e}")),
        };
        let draft = Draft {
            peer: "proxy".into(),
            action: "scrub",
            bytes: checked as u64,
            outcome: Some(outcome),
            reason: Some(reason),
            ..Default::default()
        };
        let _ = audit.record(draft, false).await;
    }
}
