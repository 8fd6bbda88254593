//! Listing packs (SPEC §7 "Listing packs"): what a listing needs of many
//! snapshots, copied into one object the proxy writes, so that a listing
//! reads a few objects instead of three per snapshot (its index header,
//! its root and the root's data key record).
//!
//! ```text
//! pack  = "CFP1" || count u32le || entry * count      (ascending snapshot ids)
//! entry = snapshot-id[16] || committed u64le || retain-until u64le || stats
//!         || u32le len(root) || root envelope || u32le len(key) || key record
//! ```
//!
//! A pack is a copy, never the truth: a reader still opens each root with
//! its key, unwrapped by the key provider under the repository's context,
//! so a forged pack can hide a snapshot but not change one.

use crate::envelope::{self, Kind};
use crate::keys::{KeyRecord, Purpose};
use crate::snapshot::{SnapshotStats, ROOT_MAX};
use crate::wire::Reader;
use crate::{FormatError, SnapshotId};

const PACK_MAGIC: &[u8; 4] = b"CFP1";
/// Snapshots one pack holds at most.
pub const PACK_SNAPSHOTS_MAX: usize = 1024;
/// Bytes of a pack at most: its writer stops adding snapshots before.
pub const PACK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A key record is a small JSON object; anything larger is refused.
pub const KEY_RECORD_MAX: usize = 64 * 1024;

/// One snapshot in a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub snapshot: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
    pub stats: SnapshotStats,
    /// The root envelope, as stored.
    pub root: Vec<u8>,
    /// The record of the data key that sealed the root, as stored.
    pub key: Vec<u8>,
}

impl PackEntry {
    fn encoded_len(&self) -> usize {
        SnapshotId::LEN + 8 + 8 + 5 * 8 + 4 + self.root.len() + 4 + self.key.len()
    }

    /// Checks that the root is a root envelope and the key record is the
    /// data key record its header names.
    pub fn check(&self) -> Result<(), FormatError> {
        let bad = |reason: String| FormatError::Invalid { what: "pack entry", reason };
        let header = envelope::parse_header(&self.root)?;
        if header.kind != Kind::SnapshotRoot {
            return Err(bad(format!("snapshot {}: its root is not a root envelope", self.snapshot)));
        }
        let record = KeyRecord::decode(&self.key)?;
        if record.key_id != header.key_id || record.purpose != Purpose::Data {
            return Err(bad(format!("snapshot {}: the key record is not the data key of its root", self.snapshot)));
        }
        Ok(())
    }
}

/// Encodes `entries` (at most [`PACK_SNAPSHOTS_MAX`], ascending by snapshot
/// id and distinct, as [`decode`] requires).
pub fn encode(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.iter().map(PackEntry::encoded_len).sum::<usize>());
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(e.snapshot.as_bytes());
        out.extend_from_slice(&e.committed.to_le_bytes());
        out.extend_from_slice(&e.retain_until.to_le_bytes());
        e.stats.encode_into(&mut out);
        out.extend_from_slice(&(e.root.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.root);
        out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.key);
    }
    out
}

/// The bytes one entry adds to a pack.
pub fn entry_len(e: &PackEntry) -> usize {
    e.encoded_len()
}

/// Reads a pack, checking every entry: a root that is not a root envelope,
/// a key record that is not its root's data key, snapshots out of order or
/// twice, or more than [`PACK_SNAPSHOTS_MAX`] of them, refuse the pack.
pub fn decode(bytes: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    if bytes.len() > PACK_BYTES_MAX {
        return Err(FormatError::TooLarge {
            what: "listing pack",
            len: bytes.len() as u64,
            max: PACK_BYTES_MAX as u64,
        });
    }
    let mut r = Reader::new(bytes);
    r.magic(PACK_MAGIC, "listing pack (CFP1)")?;
    let n = r.u32()? as usize;
    if n > PACK_SNAPSHOTS_MAX {
        return Err(FormatError::TooLarge {
            what: "listing pack's snapshots",
            len: n as u64,
            max: PACK_SNAPSHOTS_MAX as u64,
        });
    }
    let mut out: Vec<PackEntry> = Vec::with_capacity(n);
    for _ in 0..n {
        let snapshot = SnapshotId::from_bytes(r.array()?);
        if out.last().is_some_and(|last| last.snapshot >= snapshot) {
            return Err(FormatError::Invalid {
                what: "listing pack",
                reason: format!("snapshot {snapshot} is out of order or listed twice"),
            });
        }
        let (committed, retain_until) = (r.u64()?, r.u64()?);
        let stats = SnapshotStats::decode_from(&mut r)?;
        let root = sized(&mut r, "snapshot root", ROOT_MAX)?;
        let key = sized(&mut r, "key record", KEY_RECORD_MAX)?;
        let entry = PackEntry { snapshot, committed, retain_until, stats, root, key };
        entry.check()?;
        out.push(entry);
    }
    r.finish()?;
    Ok(out)
}

fn sized(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Vec<u8>, FormatError> {
    let len = r.u32()? as usize;
    if len > max {
        return Err(FormatError::TooLarge { what, len: len as u64, max: max as u64 });
    }
    Ok(r.take(len)?.to_vec())
}

/// A pack's name in the store: the BLAKE3 of its bytes, 64 hex digits (so
/// two proxies packing the same snapshots write one object, and no pack's
/// name reads as a snapshot id).
pub fn pack_id(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Compression;
    use crate::keys::{DataKey, EncryptionContext};
    use crate::{KeyId, RepoName};

    fn entry(n: u8, key_id: KeyId) -> PackEntry {
        let repo: RepoName = "prod/db".parse().unwrap();
        let snapshot = SnapshotId::from_bytes([n; 16]);
        let key = DataKey::random();
        let root =
            envelope::seal(Kind::SnapshotRoot, Compression::None, key_id, &key, &repo, snapshot.as_bytes(), b"{}");
        let record = KeyRecord {
            version: 1,
            key_id,
            purpose: Purpose::Data,
            kek: "local:0000000000000000".into(),
            context: EncryptionContext::new(&repo, Purpose::Data, key_id),
            wrapped: vec![7; 60],
        };
        let stats = SnapshotStats { bytes_in: n.into(), bytes_new: 1, stored_new: 2, chunks: 3, chunks_new: 4 };
        PackEntry { snapshot, committed: 1_000 + u64::from(n), retain_until: 9_000, stats, root, key: record.encode() }
    }

    #[test]
    fn a_pack_reads_back_and_refuses_what_a_forger_would_change() {
        let entries = vec![entry(1, KeyId::from_bytes([1; 16])), entry(2, KeyId::from_bytes([2; 16]))];
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(pack_id(&bytes).len(), 64);
        assert!(pack_id(&bytes).parse::<SnapshotId>().is_err(), "a pack's name is never a snapshot id");

        // Out of order, or twice.
        let swapped = encode(&[entries[1].clone(), entries[0].clone()]);
        assert!(decode(&swapped).unwrap_err().to_string().contains("out of order"));
        let twice = encode(&[entries[0].clone(), entries[0].clone()]);
        assert!(decode(&twice).is_err());
        // A key record that is not the root's data key.
        let mut other = entries[0].clone();
        other.key = entries[1].key.clone();
        assert!(decode(&encode(&[other])).unwrap_err().to_string().contains("not the data key"));
        // A chunk envelope passed off as a root.
        let mut chunk = entries[0].clone();
        chunk.root[4] = Kind::Chunk as u8;
        assert!(decode(&encode(&[chunk])).is_err());
        // Truncated, trailing bytes, or a count beyond the bound.
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[bytes.as_slice(), b"x"].concat()).is_err());
        let mut many = bytes.clone();
        many[4..8].copy_from_slice(&(PACK_SNAPSHOTS_MAX as u32 + 1).to_le_bytes());
        assert!(decode(&many).unwrap_err().to_string().contains("snapshots"));
    }
}
