//! Checkpoints: where the chain stood (an event's seq and hash), signed by
//! the audit key and shipped to the locked store within a minute, long
//! before the hour's segment is sealed. The live file can be cut short or
//! deleted on the proxy host; a checkpoint in the store cannot, so
//! `audit verify` fails when the local trail does not reach the newest
//! checkpoint or holds another event at its seq (SPEC §11).
//!
//! Local file: `sealed/<seq, 20 digits>.ckpt` until shipped (then deleted);
//! store object: `audit/<proxy-id>/checkpoints/<seq, 20 digits>`. One line,
//! `{"checkpoint":{...},"signature":"<hex Ed25519>"}`, the signature over
//! the checkpoint's JSON exactly as it appears in the line.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The store folder of a proxy's checkpoints, below its segments' prefix.
pub const FOLDER: &str = "checkpoints/";
/// The local file suffix of a checkpoint not shipped yet.
pub const SUFFIX: &str = ".ckpt";

/// What a checkpoint vouches for: event `seq` of `proxy`'s trail has `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub proxy: String,
    pub seq: u64,
    pub hash: String,
    pub time_ms: u64,
    /// The Ed25519 public key that signed it, hex.
    pub public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    checkpoint: Checkpoint,
    signature: String,
}

/// Writes a checkpoint file atomically (temp file, fsync, rename, folder
/// fsync). The events it names must be on disk first.
pub fn write(dir: &Path, c: &Checkpoint, key: &aws_lc_rs::signature::Ed25519KeyPair) -> std::io::Result<()> {
    let json = serde_json::to_string(c).expect("serialises");
    let signature = hex::encode(key.sign(json.as_bytes()).as_ref());
    let line = serde_json::to_string(&Line { checkpoint: c.clone(), signature }).expect("serialises");
    let name = super::segment::name(c.seq);
    let tmp = dir.join(format!(".{name}.ckpt.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(format!("{name}{SUFFIX}")))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Why a stored checkpoint does not vouch for anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {0} is not one the proxy writes (truncated or altered)")]
    Unreadable(String),
    #[error("checkpoint {0} is not signed by the audit key")]
    Signature(String),
    #[error("checkpoint {key} names event {seq}: stored under another name")]
    Misnamed { key: String, seq: u64 },
}

/// Reads a checkpoint object `key` and checks its signature against the
/// pinned audit key. Only the one spelling the proxy writes is accepted.
pub fn open(key: &str, text: &str, public_key: &[u8]) -> Result<Checkpoint, CheckpointError> {
    use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
    let bad = || CheckpointError::Unreadable(key.to_string());
    let line_text = text.strip_suffix('\n').ok_or_else(bad)?;
    let line: Line = serde_json::from_str(line_text).map_err(|_| bad())?;
    let signature = hex::decode(&line.signature).map_err(|_| bad())?;
    if serde_json::to_string(&line).map_err(|_| bad())? != line_text || hex::encode(&signature) != line.signature {
        return Err(bad());
    }
    let json = serde_json::to_string(&line.checkpoint).map_err(|_| bad())?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(json.as_bytes(), &signature)
        .map_err(|_| CheckpointError::Signature(key.to_string()))?;
    Ok(line.checkpoint)
}

/// The seq a checkpoint's store key names (its last path segment).
pub fn seq_of_key(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

/// Opens every stored checkpoint (key, text): each must be signed by the
/// audit key and stored under its own seq. Newest first.
pub fn open_all(stored: &[(String, String)], public_key: &[u8]) -> Result<Vec<Checkpoint>, CheckpointError> {
    let mut out = Vec::new();
    for (key, text) in stored {
        let c = open(key, text, public_key)?;
        if seq_of_key(key) != Some(c.seq) {
            return Err(CheckpointError::Misnamed { key: key.clone(), seq: c.seq });
        }
        out.push(c);
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.seq));
    Ok(out)
}

/// Checks a trail that ends at `last_seq` (`hash_at` gives each event's
/// hash) against checkpoints: each must vouch for an event the trail holds
/// with that hash. Checking every one, not only the newest by name, means
/// a checkpoint root on the proxy host adds (it has the key) cannot hide
/// one it cannot delete. `None` when all agree, else the first problem.
pub fn check(checkpoints: &[Checkpoint], last_seq: u64, hash_at: impl Fn(u64) -> Option<String>) -> Option<String> {
    for c in checkpoints {
        // The time is the signer's word, and root on the proxy host holds
        // the key: one past year 9999 must not make the message panic.
        let secs = (c.time_ms / 1000).min(253_402_300_799);
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        if c.seq > last_seq {
            return Some(format!(
                "audit trail truncated: it ends at event {last_seq}, but the store holds a checkpoint of event {} \
                 (written {when})",
                c.seq
            ));
        }
        if hash_at(c.seq).as_deref() != Some(c.hash.as_str()) {
            return Some(format!(
                "audit trail rewritten: event {} is not the one the store's checkpoint (written {when}) vouches for",
                c.seq
            ));
        }
    }
    None
}
