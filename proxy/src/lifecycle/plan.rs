//! `coffer-proxy lifecycle plan`: what a repository's schedule keeps, and
//! until when, and what it lets go, read from the store, changing nothing.

use std::collections::BTreeSet;

use coffer_proto::layout;
use coffer_proto::snapshot::IndexHeader;
use coffer_proto::{RepoName, SnapshotId};
use serde::Serialize;

use crate::access::switches::{hold_prefix, read_switch};
use crate::keep::{select, KeepRules, Keeper};
use crate::store::{fan_out, ObjectStore, StoreError};

/// Index segment headers read at once (ranged reads of 76 bytes).
const HEADERS_IN_FLIGHT: usize = 32;

/// A snapshot no rule keeps: its lock ends when it ends, and then it may go
/// (unless a legal hold keeps it).
#[derive(Clone, Debug, Serialize)]
pub struct LetGo {
    pub id: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
    pub held: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub repo: String,
    pub rules: KeepRules,
    pub keep: Vec<Keeper>,
    pub let_go: Vec<LetGo>,
}

/// The plan for `repo` under `rules`, from its committed snapshots.
pub async fn plan(store: &dyn ObjectStore, repo: &RepoName, rules: &KeepRules) -> Result<Plan, StoreError> {
    let prefix = layout::prefix(repo, layout::Kind::Snapshots);
    let ids: Vec<SnapshotId> =
        store.list(&prefix).await?.iter().filter_map(|k| k[prefix.len()..].parse().ok()).collect();
    let headers = fan_out(HEADERS_IN_FLIGHT, ids.iter().copied(), |id| async move {
        let bytes = store.get_head(&layout::index(repo, &id), IndexHeader::LEN).await?;
        Ok::<_, StoreError>(bytes.and_then(|b| IndexHeader::decode(&b).ok()).filter(|h| h.snapshot == id))
    })
    .await?;
    let known: Vec<(SnapshotId, u64, u64)> =
        headers.into_iter().flatten().map(|h| (h.snapshot, h.committed, h.retain_until)).collect();
    let keep = select(&known.iter().map(|(id, t, _)| (*id, *t)).collect::<Vec<_>>(), rules);
    let mut let_go = Vec::new();
    for (id, committed, retain_until) in known {
        if keep.iter().any(|k| k.id == id) {
            continue;
        }
        let held = read_switch(store, &hold_prefix(repo, &id)).await? == Some(true);
        let_go.push(LetGo { id, committed, retain_until, held });
    }
    let_go.sort_by_key(|l| (l.committed, l.id));
    Ok(Plan { repo: repo.to_string(), rules: *rules, keep, let_go })
}

/// What expiry may delete in a repository right now, under its plan.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Due {
    pub objects: usize,
    /// Their stored size (what deleting them frees).
    pub bytes: u64,
}

/// What the pass would delete in `repo` at `now`, and the bytes it frees.
pub async fn due(store: &dyn ObjectStore, repo: &RepoName, plan: &Plan, now: u64) -> Result<Due, StoreError> {
    let spare = spared(plan);
    let (doomed, _) = crate::lifecycle::expiry_plan(store, repo, now, &spare).await?;
    let sizes = fan_out(HEADERS_IN_FLIGHT, doomed.iter(), |d| async move {
        Ok::<_, StoreError>(store.head(&d.key).await?.map_or(0, |m| m.size))
    })
    .await?;
    Ok(Due { objects: doomed.len(), bytes: sizes.iter().sum() })
}

/// The snapshots of a plan that expiry must spare: every keeper, and the
/// newest snapshot whatever the rules say.
pub fn spared(plan: &Plan) -> BTreeSet<SnapshotId> {
    let mut out: BTreeSet<SnapshotId> = plan.keep.iter().map(|k| k.id).collect();
    let newest = plan.keep.iter().map(|k| (k.committed, k.id)).chain(plan.let_go.iter().map(|l| (l.committed, l.id)));
    out.extend(newest.max().map(|(_, id)| id));
    out
}
