//! Snapshots: the encrypted root, the manifest it points to, the commit body
//! the agent sends and the plaintext index segment the proxy writes.
//!
//! ```text
//! manifest = "CFM1" || count u64 || (chunk-id[32] || len u32) * count
//! commit   = "CFC1" || snapshot-id[16] || u32 len(root) || root envelope
//!            || stats || count u64 || chunk-id[32] * count
//! index    = "CFI2" || snapshot-id[16] || committed u64 || retain-until u64
//!            || stats || keys u64 || key-id[16] * keys
//!            || count u64 || (chunk-id[32] || size u32 || retain-until u64) * count
//!            ("CFI1", written before key ids were recorded, has no key list)
//! stats    = bytes-in u64 || bytes-new u64 || stored-new u64 || chunks u64 || chunks-new u64
//! ```

use serde::{Deserialize, Serialize};

use crate::wire::json_decode;
use crate::wire::Reader;
use crate::{ChunkId, FormatError, SnapshotId, ENVELOPE_MAX};

mod index;
pub mod pack;
pub use index::{IndexEntry, IndexHeader, IndexRecords, IndexSegment, IndexView};

/// Current snapshot root format version.
pub const ROOT_VERSION: u32 = 1;
const MANIFEST_MAGIC: &[u8; 4] = b"CFM1";
const COMMIT_MAGIC: &[u8; 4] = b"CFC1";
/// A root envelope is small; anything larger is refused before allocation.
pub const ROOT_MAX: usize = 1024 * 1024;

/// One entry of a manifest: a chunk of the stream, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    pub id: ChunkId,
    pub len: u32,
}

const MANIFEST_ENTRY_LEN: usize = ChunkId::LEN + 4;

/// The ordered chunks of a stream. Stored, like data, as chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest(pub Vec<ManifestEntry>);

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.0.len() * MANIFEST_ENTRY_LEN);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        for e in &self.0 {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        r.magic(MANIFEST_MAGIC, "manifest (CFM1)")?;
        let n = r.count(MANIFEST_ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let id = ChunkId::from_bytes(r.array()?);
            let len = r.u32()?;
            entries.push(ManifestEntry { id, len });
        }
        r.finish()?;
        Ok(Self(entries))
    }

    /// Total plaintext length of the stream.
    pub fn stream_len(&self) -> u64 {
        self.0.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// The plaintext of a snapshot root envelope (JSON, then sealed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRoot {
    pub version: u32,
    pub id: SnapshotId,
    pub name: String,
    pub host: String,
    /// `stdin`, `file:<path>` or `command:<argv joined by spaces>`.
    pub source: String,
    /// Unix seconds.
    pub started: u64,
    pub finished: u64,
    /// Plaintext length of the stream.
    pub bytes: u64,
    /// BLAKE3 of the whole plaintext stream, hex.
    pub blake3: String,
    /// The manifest's own chunks, in order.
    pub manifest: Vec<ManifestRef>,
    /// The chunk-id key (epoch) the snapshot's ids were made with; absent
    /// means the one in the repository config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key: Option<crate::KeyId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRef {
    pub id: ChunkId,
    pub len: u32,
}

impl SnapshotRoot {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("roots always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let root: SnapshotRoot = json_decode(bytes, "snapshot root")?;
        if root.version != ROOT_VERSION {
            return Err(FormatError::Unsupported { what: "snapshot root version", value: root.version.into() });
        }
        Ok(root)
    }
}

/// Plain statistics the agent reports with a commit; the proxy records
/// them in the index segment (for listings and, later, anomaly detection).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// Plaintext bytes read from the source.
    pub bytes_in: u64,
    /// Plaintext stream bytes in chunks that were new to the repository
    /// (the manifest's own chunks are not stream bytes: never above `bytes_in`).
    pub bytes_new: u64,
    /// Envelope bytes uploaded, the manifest's chunks included.
    pub stored_new: u64,
    /// Chunks in the stream (with repeats).
    pub chunks: u64,
    /// Chunks uploaded, the manifest's included.
    pub chunks_new: u64,
}

/// Bytes per new chunk by which [`SnapshotStats::at_least_seen`] takes an
/// envelope's plaintext to be smaller than its sealed body: more than zstd
/// adds to 8 MiB it cannot compress, and than a manifest chunk lists per
/// data chunk.
pub const SEEN_SLACK: u64 = 1024;

/// A commit's stats that cannot be true of what it references.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the commit's stats contradict what it references: {0}")]
pub struct StatsError(String);

impl SnapshotStats {
    /// Checks the agent's claims against what the proxy sees of the
    /// commit: `referenced` distinct chunks whose envelopes total
    /// `referenced_bytes`. Every bound holds for an honest agent (whose
    /// uploads include the manifest's own chunks, which the stream counts
    /// do not); a claim outside them is a lie or a bug, and is refused so it
    /// can neither overflow a sum nor skew the anomaly detector.
    pub fn check(&self, referenced: u64, referenced_bytes: u64) -> Result<(), StatsError> {
        let chunk_max = u64::from(crate::CHUNK_MAX);
        let overhead = crate::envelope::OVERHEAD as u64;
        // A manifest entry takes at least an id, and a manifest chunk at
        // most CHUNK_MAX: so many stream chunks per referenced chunk, at most.
        let per_referenced = chunk_max / ChunkId::LEN as u64;
        let fail = |what: String| Err(StatsError(what));
        if self.chunks_new > referenced {
            return fail(format!("{} new chunks, but {referenced} referenced", self.chunks_new));
        }
        if self.stored_new > referenced_bytes {
            return fail(format!("{} new envelope bytes, but {referenced_bytes} referenced", self.stored_new));
        }
        if self.stored_new < self.chunks_new.saturating_mul(overhead)
            || self.stored_new > self.chunks_new.saturating_mul(ENVELOPE_MAX as u64)
        {
            return fail(format!("{} new envelope bytes for {} new chunks", self.stored_new, self.chunks_new));
        }
        if self.bytes_new > self.chunks_new.saturating_mul(chunk_max) {
            return fail(format!("{} new bytes in {} new chunks", self.bytes_new, self.chunks_new));
        }
        if self.chunks > referenced.saturating_mul(per_referenced) {
            return fail(format!("{} stream chunks for {referenced} referenced", self.chunks));
        }
        if self.bytes_in > self.chunks.saturating_mul(chunk_max) {
            return fail(format!("{} bytes read in {} chunks", self.bytes_in, self.chunks));
        }
        Ok(())
    }

    /// These stats raised, where they claim less, to what the proxy saw
    /// stored in the run: `seen_chunks` new objects of `seen_bytes` envelope
    /// bytes (each capped by what the commit references). New stream bytes
    /// are at least those envelopes less their overhead and
    /// [`SEEN_SLACK`] each (what zstd adds to data it cannot compress, and
    /// the manifest's own chunks, which are not stream bytes), so an honest
    /// agent's claims are never raised by its own run; `bytes_in`, and
    /// `chunks` as far as `bytes_in` needs, rise with them. Stats that pass
    /// [`check`] still pass it raised, for the same references.
    ///
    /// [`check`]: SnapshotStats::check
    pub fn at_least_seen(self, seen_chunks: u64, seen_bytes: u64, referenced: u64, referenced_bytes: u64) -> Self {
        let per_chunk = crate::envelope::OVERHEAD as u64 + SEEN_SLACK;
        let (seen_chunks, seen_bytes) = (seen_chunks.min(referenced), seen_bytes.min(referenced_bytes));
        let seen_plain = seen_bytes.saturating_sub(seen_chunks.saturating_mul(per_chunk));
        let bytes_new = self.bytes_new.max(seen_plain);
        let bytes_in = self.bytes_in.max(bytes_new);
        Self {
            bytes_in,
            bytes_new,
            stored_new: self.stored_new.max(seen_bytes),
            chunks: self.chunks.max(bytes_in.div_ceil(u64::from(crate::CHUNK_MAX))),
            chunks_new: self.chunks_new.max(seen_chunks),
        }
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for v in [self.bytes_in, self.bytes_new, self.stored_new, self.chunks, self.chunks_new] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        Ok(Self {
            bytes_in: r.u64()?,
            bytes_new: r.u64()?,
            stored_new: r.u64()?,
            chunks: r.u64()?,
            chunks_new: r.u64()?,
        })
    }
}

/// The body of `POST /v1/repos/{repo}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    pub snapshot: SnapshotId,
    pub root: Vec<u8>,
    pub stats: SnapshotStats,
    /// Every chunk the snapshot references (data and manifest), each once.
    pub chunks: Vec<ChunkId>,
}

impl CommitRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.root.len() + self.chunks.len() * ChunkId::LEN);
        out.extend_from_slice(COMMIT_MAGIC);
        out.extend_from_slice(self.snapshot.as_bytes());
        out.extend_from_slice(&(self.root.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.root);
        self.stats.encode_into(&mut out);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for id in &self.chunks {
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let view = CommitView::decode(bytes)?;
        let chunks = view.chunks().collect();
        Ok(Self { snapshot: view.snapshot, root: view.root.to_vec(), stats: view.stats, chunks })
    }
}

/// A commit body read in place: the root and the chunk ids stay in the
/// body's bytes (a commit may name millions), read one at a time.
#[derive(Clone, Copy, Debug)]
pub struct CommitView<'a> {
    pub snapshot: SnapshotId,
    pub root: &'a [u8],
    pub stats: SnapshotStats,
    ids: &'a [u8],
}

impl<'a> CommitView<'a> {
    /// Checks the whole body, as [`CommitRequest::decode`] does, without
    /// copying the ids out of it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        r.magic(COMMIT_MAGIC, "commit (CFC1)")?;
        let snapshot = SnapshotId::from_bytes(r.array()?);
        let root_len = r.u32()? as usize;
        if root_len > ROOT_MAX.min(ENVELOPE_MAX) {
            return Err(FormatError::TooLarge { what: "snapshot root", len: root_len as u64, max: ROOT_MAX as u64 });
        }
        let root = r.take(root_len)?;
        let stats = SnapshotStats::decode_from(&mut r)?;
        let n = r.count(ChunkId::LEN)?;
        let ids = r.take(n * ChunkId::LEN)?;
        r.finish()?;
        Ok(Self { snapshot, root, stats, ids })
    }

    /// How many chunk ids the commit lists.
    pub fn chunk_count(&self) -> usize {
        self.ids.len() / ChunkId::LEN
    }

    /// The chunk ids, in the order the body lists them.
    pub fn chunks(&self) -> impl ExactSizeIterator<Item = ChunkId> + 'a {
        self.ids.chunks_exact(ChunkId::LEN).map(|c| ChunkId::from_bytes(c.try_into().expect("exact chunks")))
    }
}

/// The chunk ids of a `POST .../chunks/missing` body or answer: bare
/// concatenated 32-byte ids.
pub fn encode_ids(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.as_bytes().iter().copied()).collect()
}

pub fn decode_ids(bytes: &[u8]) -> Result<Vec<ChunkId>, FormatError> {
    if bytes.len() % ChunkId::LEN != 0 {
        return Err(FormatError::Invalid {
            what: "chunk id list",
            reason: format!("length {} is not a multiple of {}", bytes.len(), ChunkId::LEN),
        });
    }
    Ok(bytes.chunks_exact(ChunkId::LEN).map(|c| ChunkId::from_bytes(c.try_into().expect("exact chunks"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(bytes_in: u64, bytes_new: u64, stored_new: u64, chunks: u64, chunks_new: u64) -> SnapshotStats {
        SnapshotStats { bytes_in, bytes_new, stored_new, chunks, chunks_new }
    }

    #[test]
    fn honest_stats_pass_and_lies_are_refused() {
        // A first backup: 3 stream chunks (one repeated), 2 distinct data
        // chunks and 1 manifest chunk uploaded, all referenced.
        let honest = stats(3_000, 2_100, 1_500, 3, 3);
        honest.check(3, 1_600).unwrap();
        // A re-backup of the same stream: only a new manifest chunk.
        stats(3_000, 100, 90, 3, 1).check(3, 1_600).unwrap();
        // Empty stream: one empty manifest chunk.
        stats(0, 0, 60, 0, 1).check(1, 60).unwrap();

        let lies = [
            ("every stat u64::MAX", stats(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX)),
            ("more new chunks than referenced", stats(3_000, 2_100, 1_500, 3, 4)),
            ("more stored than referenced", stats(3_000, 2_100, 1_601, 3, 3)),
            ("stored less than the envelopes' overhead", stats(3_000, 2_100, 10, 3, 3)),
            ("new bytes beyond the chunks' maximum", stats(u64::MAX, u64::MAX, 1_500, 3, 3)),
            ("stream chunks no manifest could list", stats(0, 0, 1_500, 3 * (1 << 18) + 1, 3)),
            ("bytes read beyond the chunks' maximum", stats(3 * (8 << 20) + 1, 2_100, 1_500, 3, 3)),
        ];
        for (what, s) in lies {
            let e = s.check(3, 1_600).unwrap_err();
            assert!(e.to_string().contains("contradict"), "{what}: {e}");
        }
    }

    /// A host that says its new data was old: the proxy's own count of what
    /// it stored in the run raises the stats, and what passed the checks
    /// still does, whatever was claimed and seen.
    #[test]
    fn stats_rise_to_what_the_proxy_saw_and_still_pass_the_checks() {
        let understated = stats(3_000, 100, 90, 3, 1);
        let raised = understated.at_least_seen(3, 1_500, 3, 1_600);
        assert_eq!(raised.chunks_new, 3);
        assert_eq!(raised.stored_new, 1_500);
        assert_eq!(raised.bytes_new, 100, "1 500 bytes in 3 small envelopes may hold no more than claimed");
        let big = stats(3 << 20, 100, 90, 3, 1).at_least_seen(3, 3 << 20, 3, 3 << 20);
        assert_eq!(big.bytes_new, (3 << 20) - 3 * (crate::envelope::OVERHEAD as u64 + SEEN_SLACK));
        big.check(3, 3 << 20).unwrap();
        assert_eq!(raised.bytes_in, 3_000, "what was read already covers it");
        raised.check(3, 1_600).unwrap();
        // Honest claims are left as they are.
        let honest = stats(3_000, 2_100, 1_500, 3, 3);
        assert_eq!(honest.at_least_seen(3, 1_500, 3, 1_600), honest);
        // Seen beyond what the commit references (another run's uploads
        // on the same proxy): capped by the references.
        stats(0, 0, 60, 0, 1).at_least_seen(50, 1 << 30, 3, 1_600).check(3, 1_600).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn raised_stats_pass_whenever_the_claims_did(
            r in proptest::array::uniform5(proptest::num::u64::ANY),
            seen_sizes in proptest::collection::vec(crate::envelope::OVERHEAD as u64..=ENVELOPE_MAX as u64, 0..8),
            seen_chunks in 0usize..8,
            referenced_sizes in proptest::collection::vec(crate::envelope::OVERHEAD as u64..=ENVELOPE_MAX as u64, 1..8),
        ) {
            let (referenced, referenced_bytes) = (referenced_sizes.len() as u64, referenced_sizes.iter().sum::<u64>());
            let (overhead, chunk_max) = (crate::envelope::OVERHEAD as u64, u64::from(crate::CHUNK_MAX));
            // Any claim the checks let through, built from random parts.
            let chunks_new = r[0] % (referenced + 1);
            let (lo, hi) = (chunks_new * overhead, (chunks_new * ENVELOPE_MAX as u64).min(referenced_bytes));
            proptest::prop_assume!(lo <= hi);
            let stored_new = lo + r[1] % (hi - lo + 1);
            let bytes_new = r[2] % (chunks_new * chunk_max + 1);
            let chunks = r[3] % (referenced * (chunk_max / ChunkId::LEN as u64) + 1);
            let bytes_in = r[4] % (chunks * chunk_max + 1);
            let s = stats(bytes_in, bytes_new, stored_new, chunks, chunks_new);
            s.check(referenced, referenced_bytes).unwrap();
            // What a proxy can see: whole envelopes, each of a legal size.
            let seen: Vec<u64> = seen_sizes.into_iter().take(seen_chunks).collect();
            let raised = s.at_least_seen(seen.len() as u64, seen.iter().sum(), referenced, referenced_bytes);
            proptest::prop_assert!(raised.check(referenced, referenced_bytes).is_ok(), "{s:?} raised to {raised:?}");
        }
    }
}
