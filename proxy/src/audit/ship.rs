//! Shipping sealed segments to the object store, with Object Lock.

use std::path::Path;

use bytes::Bytes;

use super::checkpoint;
use crate::store::ObjectStore;

/// Where a proxy's segments live in the store.
pub fn store_prefix(proxy_id: &str) -> String {
    format!("audit/{proxy_id}/")
}

/// A shipped segment: its key in the store and the BLAKE3 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipped {
    pub key: String,
    pub blake3: String,
}

/// The text of the alert that announces a shipped segment's hash, so a
/// receiver outside the proxy host keeps a copy that host cannot rewrite.
pub fn seal_message(s: &Shipped) -> String {
    format!(
        "audit segment {} shipped, blake3={}: keep this outside the proxy host; \
         `coffer-proxy audit verify --store --seals FILE` checks the store against such lines",
        s.key, s.blake3
    )
}

/// The (key, BLAKE3) pairs in text holding `seal_message`s, one per line
/// (webhook payloads as a receiver stored them, or the messages alone).
pub fn parse_seals(text: &str) -> Vec<Shipped> {
    text.lines()
        .filter_map(|line| {
            let at = line.find("audit segment ")? + "audit segment ".len();
            let key = line[at..].split(' ').next()?.to_string();
            let h = line.find("blake3=")? + "blake3=".len();
            let blake3 = line.get(h..h + 64)?.to_string();
            (blake3.bytes().all(|b| b.is_ascii_hexdigit()) && key.starts_with("audit/"))
                .then_some(Shipped { key, blake3 })
        })
        .collect()
}

/// Why shipping stopped (it is tried again later).
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{}: {source}", path.display())]
    Local { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(
        "audit checkpoint {0} is already in the store with other contents: does a second proxy use this \
         proxy_id, or was the audit spool put back from an older copy?"
    )]
    Clash(String),
}

/// What one shipping pass did: the segments it shipped (each to be
/// announced, even when the pass then failed), and why it stopped short.
#[derive(Debug)]
pub struct Shipping {
    pub shipped: Vec<Shipped>,
    pub failed: Option<ShipError>,
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> ShipError + '_ {
    move |source| ShipError::Local { path: path.to_path_buf(), source }
}

/// Uploads every local segment not shipped yet, oldest first, and marks
/// each shipped (`.seg` → `.seg.shipped`) once the store holds it; and
/// every checkpoint, deleted once the store holds it. Stops at the first
/// segment that fails (retried next time); a checkpoint that fails holds
/// nothing back.
pub async fn ship_pending(dir: &Path, store: &dyn ObjectStore, proxy_id: &str, retain_until: u64) -> Shipping {
    let mut shipped = Vec::new();
    let failed = ship_into(&mut shipped, dir, store, proxy_id, retain_until).await.err();
    Shipping { shipped, failed }
}

async fn ship_into(
    shipped: &mut Vec<Shipped>,
    dir: &Path,
    store: &dyn ObjectStore,
    proxy_id: &str,
    retain_until: u64,
) -> Result<(), ShipError> {
    let mut pending: Vec<String> = std::fs::read_dir(dir)
        .map_err(at(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg") || n.ends_with(checkpoint::SUFFIX))
        .collect();
    pending.sort();
    // Checkpoints first, and each tried whatever the others do: neither a
    // segment nor a checkpoint that cannot be shipped holds back the rest.
    pending.sort_by_key(|n| !n.ends_with(checkpoint::SUFFIX));
    let mut failed = None;
    for name in pending {
        let path = dir.join(&name);
        if let Some(seq) = name.strip_suffix(checkpoint::SUFFIX) {
            let key = format!("{}{}{seq}", store_prefix(proxy_id), checkpoint::FOLDER);
            if let Err(e) = ship_checkpoint(store, &path, &key, retain_until).await {
                failed.get_or_insert(e);
            }
            continue;
        }
        let body = std::fs::read(&path).map_err(at(&path))?;
        let key = format!("{}{}", store_prefix(proxy_id), name.trim_end_matches(".seg"));
        let blake3 = blake3::hash(&body).to_hex().to_string();
        store.put_new(&key, Bytes::from(body), retain_until).await?;
        std::fs::rename(&path, dir.join(format!("{name}.shipped"))).map_err(at(&path))?;
        shipped.push(Shipped { key, blake3 });
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Puts one checkpoint file in the store and deletes it. One already
/// stored under that seq must vouch for the same event (a restarted proxy
/// checkpoints its newest event again, at another time): another event is
/// a second proxy with this proxy_id, or a spool put back from an older
/// copy.
async fn ship_checkpoint(store: &dyn ObjectStore, path: &Path, key: &str, retain_until: u64) -> Result<(), ShipError> {
    let io = |source| ShipError::Local { path: path.to_path_buf(), source };
    let body = Bytes::from(std::fs::read(path).map_err(io)?);
    if store.put_new(key, body.clone(), retain_until).await? == crate::store::PutOutcome::Exists {
        let vouched = |b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).ok()?;
            Some((v["checkpoint"]["seq"].as_u64()?, v["checkpoint"]["hash"].as_str()?.to_string()))
        };
        let stored = vouched(&store.get(key).await?.unwrap_or_default());
        if stored.is_none() || stored != vouched(&body) {
            return Err(ShipError::Clash(key.to_string()));
        }
    }
    std::fs::remove_file(path).map_err(io)
}

/// Local segments and checkpoints not in the store yet.
pub fn unshipped(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.ends_with(".seg") || name.ends_with(checkpoint::SUFFIX)
                })
                .count()
        })
        .unwrap_or(0)
}
