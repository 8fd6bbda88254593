//! What a report needs of committed snapshots, read from listing packs
//! where they hold it (SPEC §7 "Listing packs"): each snapshot's index
//! header fields. A snapshot no pack holds costs one ranged GET of its
//! index header. A pack is a copy anyone with write access to the bucket
//! could forge as a new object, so the newest snapshot a pack gives (whose
//! date decides the RPO) is checked against its own header, and on any
//! difference no pack is used. Key records (their KEKs decide residency)
//! are always read themselves.

use std::collections::{HashMap, HashSet};

use coffer_proto::layout;
use coffer_proto::snapshot::pack::{self, PACK_BYTES_MAX};
use coffer_proto::snapshot::IndexHeader;
use coffer_proto::{RepoName, SnapshotId};

use crate::store::{fan_out, ObjectStore, StoreError};

/// Index headers read at once.
const HEADERS_IN_FLIGHT: usize = 32;

/// The headers of `ids`, oldest first (a snapshot whose header cannot be
/// read is left out).
pub(crate) async fn headers(
    store: &dyn ObjectStore,
    repo: &RepoName,
    pack_keys: &[&String],
    ids: &[SnapshotId],
) -> Result<Vec<IndexHeader>, StoreError> {
    let wanted: HashSet<&SnapshotId> = ids.iter().collect();
    let mut found: HashMap<SnapshotId, IndexHeader> = HashMap::new();
    for key in pack_keys {
        let Some(bytes) = store.get_head(key, PACK_BYTES_MAX + 1).await? else { continue };
        if layout::pack(repo, &pack::pack_id(&bytes)) != **key {
            tracing::warn!("listing pack {key} is not named by its BLAKE3, and is not used");
            continue;
        }
        let entries = match pack::decode(&bytes) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("listing pack {key} is unreadable, and is not used: {e}");
                continue;
            }
        };
        for e in entries.into_iter().filter(|e| wanted.contains(&e.snapshot)) {
            let header = IndexHeader {
                snapshot: e.snapshot,
                committed: e.committed,
                retain_until: e.retain_until,
                stats: e.stats,
            };
            found.entry(e.snapshot).or_insert(header);
        }
    }
    if let Some(newest) = found.values().max_by_key(|h| (h.committed, h.snapshot)).copied() {
        let own = header_of(store, repo, newest.snapshot).await?;
        if own.is_none_or(|h| (h.committed, h.stats) != (newest.committed, newest.stats)) {
            tracing::warn!(%repo, "a listing pack misstates snapshot {}: the report reads every header", newest.snapshot);
            found.clear();
        }
    }
    let rest: Vec<SnapshotId> = ids.iter().filter(|id| !found.contains_key(id)).copied().collect();
    let read = fan_out(HEADERS_IN_FLIGHT, rest, |id| header_of(store, repo, id)).await?;
    let mut out: Vec<IndexHeader> = found.into_values().chain(read.into_iter().flatten()).collect();
    out.sort_by_key(|h| (h.committed, h.snapshot));
    Ok(out)
}

/// A snapshot's own index header (one ranged GET).
async fn header_of(
    store: &dyn ObjectStore,
    repo: &RepoName,
    id: SnapshotId,
) -> Result<Option<IndexHeader>, StoreError> {
    let bytes = store.get_head(&layout::index(repo, &id), IndexHeader::LEN).await?;
    Ok(bytes.and_then(|b| IndexHeader::decode(&b).ok()).filter(|h| h.snapshot == id))
}
