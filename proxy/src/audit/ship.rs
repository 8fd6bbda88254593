//! Shipping sealed segments to the object store, with Object Lock.

use std::path::Path;

use bytes::Bytes;

use crate::store::ObjectStore;

/// Where a proxy's segments live in the store.
pub fn store_prefix(proxy_id: &str) -> String {
    format!("audit/{proxy_id}/")
}

/// Uploads every local segment not shipped yet, oldest first, and marks
/// each shipped (`.seg` → `.seg.shipped`) once the store holds it. Returns
/// how many were shipped; stops at the first failure (retried next time).
pub async fn ship_pending(
    dir: &Path,
    store: &dyn ObjectStore,
    proxy_id: &str,
    retain_until: u64,
) -> Result<usize, String> {
    let mut pending: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    pending.sort();
    let mut shipped = 0;
    for name in pending {
        let path = dir.join(&name);
        let body = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = format!("{}{}", store_prefix(proxy_id), name.trim_end_matches(".seg"));
        store.put_new(&key, Bytes::from(body), retain_until).await.map_err(|e| e.to_string())?;
        std::fs::rename(&path, dir.join(format!("{name}.shipped"))).map_err(|e| format!("{}: {e}", path.display()))?;
        shipped += 1;
    }
    Ok(shipped)
}

/// Local segments not in the store yet.
pub fn unshipped(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|it| it.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".seg")).count())
        .unwrap_or(0)
}
