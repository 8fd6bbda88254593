//! `coffer verify`: every snapshot asked for is checked, whatever an earlier
//! one showed, and each damaged one is named (with `--json`, listed with
//! its problem) before the exit status says so.

use std::sync::Arc;

use coffer_agent::progress::Progress;
use coffer_agent::repo::OpenRepo;
use coffer_agent::restore;
use coffer_proto::SnapshotId;

use crate::Failure;

/// Which snapshots, and how much of each, to check.
pub(crate) struct Which {
    pub snapshot: Option<SnapshotId>,
    pub since: Option<std::time::Duration>,
    pub subset: Option<restore::Subset>,
}

pub(crate) async fn run(
    repo: &Arc<OpenRepo>,
    in_flight: usize,
    which: Which,
    json: bool,
    progress: &mut Progress,
) -> Result<(), Failure> {
    // A listing that lost a snapshot this host remembers fails the check.
    let mut lost = Vec::new();
    let ids = match which.snapshot {
        Some(id) => vec![id],
        None => {
            let after = which.since.map_or(0, |d| coffer_agent::unix_now().saturating_sub(d.as_secs()));
            let listed = repo.client.list_snapshots(&repo.name).await?;
            lost = repo.check_listing(&listed);
            listed.into_iter().filter(|s| s.committed >= after).map(|s| s.id).collect()
        }
    };

    if ids.is_empty() {
        let lately = if which.since.is_some() { " committed in that time" } else { "" };
        eprintln!("coffer: repository {} has no snapshots{lately} to verify", repo.name);
    }
    // Every snapshot is checked, whatever an earlier one showed: a
    // damaged one is named and the next one checked.
    let mut damaged = Vec::new();
    let mut checked = Vec::new();
    let total = ids.len();
    for (done, id) in ids.into_iter().enumerate() {
        progress.snapshot(&id.to_string(), Some((done, total)));
        let checked_one = match which.subset {
            None => restore::verify(repo.clone(), id, in_flight, progress).await,
            Some(subset) => restore::verify_subset(repo.clone(), id, in_flight, subset, progress).await,
        };
        progress.finish();
        let problem = match checked_one {
            Ok(v) => {
                if !json {
                    let what = if which.subset.is_some() { "data chunks of the subset read" } else { "chunks" };
                    println!("{}: ok ({} bytes, {} {what})", v.id, v.bytes, v.chunks);
                }
                checked.push(crate::cli::output::Verified::ok(v.id, v.bytes, v.chunks as u64));
                continue;
            }
            Err(e @ (restore::RestoreError::Chunk { .. } | restore::RestoreError::Snapshot { .. })) => e.to_string(),
            Err(restore::RestoreError::Client(e)) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                format!("an object it needs is missing: {e}")
            }
            Err(e) => return Err(e.into()),
        };
        eprintln!("coffer: {id}: DAMAGED: {problem}");
        checked.push(crate::cli::output::Verified::damaged(id, problem));
        damaged.push(id);
    }
    if json {
        crate::print_json(&crate::cli::output::Verification { repo: repo.name.clone(), snapshots: checked })?;
    }
    if !damaged.is_empty() {
        let names: Vec<String> = damaged.iter().map(ToString::to_string).collect();
        return Err(anyhow::anyhow!("{} of {total} snapshots are damaged: {}", damaged.len(), names.join(", ")).into());
    }
    if !lost.is_empty() {
        return Err(crate::cli::listing::went_backwards(&lost).into());
    }
    Ok(())
}
