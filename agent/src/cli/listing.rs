//! `coffer snapshots`: the repository's snapshots with what their roots say.

use coffer_agent::repo::OpenRepo;
use coffer_agent::restore;
use coffer_proto::SnapshotId;
use serde::Serialize;

use crate::Failure;

/// A refused listing, with whose config can list.
pub(crate) fn denied_hint(e: coffer_client::ClientError) -> anyhow::Error {
    let hint = "listing is for a reader or auditor identity: use the reader's config (--config or COFFER_CONFIG)";
    match e.status() == Some(http::StatusCode::FORBIDDEN) {
        true => anyhow::anyhow!("{e}\n  {hint}"),
        false => e.into(),
    }
}

/// Snapshot roots `coffer snapshots` fetches at once.
const ROOTS_IN_FLIGHT: usize = 32;

#[derive(Serialize)]
pub(crate) struct Listed {
    pub(crate) id: SnapshotId,
    pub(crate) committed: u64,
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) source: String,
    pub(crate) bytes: u64,
    pub(crate) stats: coffer_proto::snapshot::SnapshotStats,
}

/// The listing's failure when it lacks snapshots this host remembers
/// (`OpenRepo::check_listing`), each named on stderr.
pub(crate) fn went_backwards(lost: &[String]) -> anyhow::Error {
    for problem in lost {
        eprintln!("coffer: {problem}");
    }
    anyhow::anyhow!("the listing lacks {} snapshots this host remembers, still locked: it went backwards", lost.len())
}

/// A listing: the snapshots whose roots could be read; the problems with
/// the others (a root that is missing or fails its checks does not hide
/// the rest); and the snapshots this host remembers that it lacks.
pub(crate) struct Listing {
    pub(crate) listed: Vec<Listed>,
    pub(crate) unreadable: Vec<String>,
    pub(crate) lost: Vec<String>,
}

/// The repository's snapshots with what their roots say.
pub(crate) async fn list_snapshots(repo: &OpenRepo) -> Result<Listing, Failure> {
    use futures_util::StreamExt as _;
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    let infos = repo.client.list_snapshots_with_roots(&repo.name).await.map_err(denied_hint)?;
    let lost = repo.check_listing(&infos);
    // Roots are fetched (and their keys unwrapped) several at a time, in order.
    // A root the listing carried (a listing pack's copy) is opened as it
    // is; one that fails its checks there is fetched on its own.
    let mut roots = futures_util::stream::iter(infos.into_iter().map(|mut info| async move {
        let copy = info.root.take();
        let root = match copy {
            Some(c) => match restore::open_root(repo, info.id, &c.envelope, Some(&c.key)).await {
                Ok(root) => Ok(root),
                Err(e) => {
                    tracing::warn!(
                        "snapshot {}: the listing's copy of its root was refused ({e}); fetching it",
                        info.id
                    );
                    restore::load_root(repo, info.id).await
                }
            },
            None => restore::load_root(repo, info.id).await,
        };
        (info, root)
    }))
    .buffered(ROOTS_IN_FLIGHT);
    while let Some((info, root)) = roots.next().await {
        let root = match root {
            Ok(root) => root,
            Err(e @ restore::RestoreError::Snapshot { .. }) => {
                unreadable.push(e.to_string());
                continue;
            }
            Err(restore::RestoreError::Client(e)) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                unreadable.push(format!("integrity error: snapshot {}: its root is missing", info.id));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        out.push(Listed {
            id: info.id,
            committed: info.committed,
            name: root.name,
            host: root.host,
            source: root.source,
            bytes: root.bytes,
            stats: info.stats,
        });
    }
    Ok(Listing { listed: out, unreadable, lost })
}
