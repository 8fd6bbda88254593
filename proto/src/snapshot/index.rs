//! The index segment the proxy writes beside each snapshot, and views that
//! read a segment in place.

use super::SnapshotStats;
use crate::wire::Reader;
use crate::{ChunkId, FormatError, KeyId, Scope, SnapshotId};

const INDEX_MAGIC: &[u8; 4] = b"CFI3";
const INDEX_V2_MAGIC: &[u8; 4] = b"CFI2";
const INDEX_V1_MAGIC: &[u8; 4] = b"CFI1";

/// One chunk as recorded in an index segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    /// Stored (envelope) size.
    pub size: u32,
    /// Unix seconds until which the chunk is locked.
    pub retain_until: u64,
    /// Whether the snapshot uses its scope's copy of the chunk
    /// (`layout::chunk_copy`) rather than the id's first upload. Always
    /// false in a segment from before scopes (CFI2, CFI1).
    pub copy: bool,
}

const INDEX_V2_ENTRY_LEN: usize = ChunkId::LEN + 4 + 8;
const INDEX_ENTRY_LEN: usize = INDEX_V2_ENTRY_LEN + 1;

/// The plaintext index segment the proxy writes at `index/<snapshot-id>`
/// before the snapshot root: what the snapshot references and how long each
/// object is locked, so retention decisions need no per-chunk HEAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSegment {
    pub snapshot: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
    pub stats: SnapshotStats,
    /// Every data key the snapshot needs (its root's, its manifest's and
    /// its chunks'), sorted and distinct; `None` in a segment from before
    /// key ids were recorded (CFI1), which needs all of them.
    pub keys: Option<Vec<KeyId>>,
    /// The upload scope of the identity that committed the snapshot: its
    /// chunks are the first uploads of their ids or this scope's copies.
    /// `None` in a segment from before scopes (CFI2, CFI1); a segment with
    /// a scope also records `keys`.
    pub scope: Option<Scope>,
    /// The proxy writes them in ascending id order (so a duplicate is next
    /// to its twin); segments written before that are in the commit's
    /// order. Readers take either.
    pub chunks: Vec<IndexEntry>,
}

impl IndexSegment {
    /// Encodes as CFI3 when the segment has a scope, else as the version
    /// its fields allow (CFI2 with keys, CFI1 without).
    pub fn encode(&self) -> Vec<u8> {
        let keys = self.keys.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(96 + keys.len() * KeyId::LEN + self.chunks.len() * INDEX_ENTRY_LEN);
        self.encode_head(self.chunks.len(), &mut out);
        for e in &self.chunks {
            let record = record(e);
            out.extend_from_slice(&record[..if self.scope.is_some() { INDEX_ENTRY_LEN } else { INDEX_V2_ENTRY_LEN }]);
        }
        out
    }

    /// Everything before the entries, for `count` of them.
    fn encode_head(&self, count: usize, out: &mut Vec<u8>) {
        let keys = self.keys.as_deref().unwrap_or_default();
        out.extend_from_slice(match (&self.scope, &self.keys) {
            (Some(_), _) => INDEX_MAGIC,
            (None, Some(_)) => INDEX_V2_MAGIC,
            (None, None) => INDEX_V1_MAGIC,
        });
        out.extend_from_slice(self.snapshot.as_bytes());
        out.extend_from_slice(&self.committed.to_le_bytes());
        out.extend_from_slice(&self.retain_until.to_le_bytes());
        self.stats.encode_into(out);
        if self.keys.is_some() || self.scope.is_some() {
            out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
            for k in keys {
                out.extend_from_slice(k.as_bytes());
            }
        }
        if let Some(scope) = &self.scope {
            out.extend_from_slice(scope.as_bytes());
        }
        out.extend_from_slice(&(count as u64).to_le_bytes());
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let view = IndexView::decode(bytes)?;
        let chunks = view.entries().collect();
        let IndexView { snapshot, committed, retain_until, stats, keys, scope, .. } = view;
        Ok(Self { snapshot, committed, retain_until, stats, keys, scope, chunks })
    }
}

/// An entry as CFI3 encodes it (CFI2's is its first 44 bytes).
fn record(e: &IndexEntry) -> [u8; INDEX_ENTRY_LEN] {
    let mut r = [0u8; INDEX_ENTRY_LEN];
    r[..ChunkId::LEN].copy_from_slice(e.id.as_bytes());
    r[ChunkId::LEN..ChunkId::LEN + 4].copy_from_slice(&e.size.to_le_bytes());
    r[ChunkId::LEN + 4..INDEX_V2_ENTRY_LEN].copy_from_slice(&e.retain_until.to_le_bytes());
    r[INDEX_V2_ENTRY_LEN] = u8::from(e.copy);
    r
}

/// Reads an entry of `len` bytes (CFI3's, or CFI2's without the copy flag).
fn entry(r: &[u8]) -> IndexEntry {
    let (id, rest) = r.split_at(ChunkId::LEN);
    let (size, rest) = rest.split_at(4);
    IndexEntry {
        id: ChunkId::from_bytes(id.try_into().expect("an id's bytes")),
        size: u32::from_le_bytes(size.try_into().expect("four bytes")),
        retain_until: u64::from_le_bytes(rest[..8].try_into().expect("eight bytes")),
        copy: rest.get(8) == Some(&1),
    }
}

/// Records of room kept before a new segment's entries for its head (its
/// keys above all), so that the entries become the segment in place.
const HEAD_ROOM: usize = 256;

/// The entries of a new (CFI3) segment in their encoded form, built in
/// place: a commit of millions of chunks holds one copy of them, and they
/// become the segment without another.
#[derive(Clone, Debug, Default)]
pub struct IndexRecords(Vec<[u8; INDEX_ENTRY_LEN]>);

impl IndexRecords {
    /// An entry per id, with no size, lock or copy yet.
    pub fn from_ids(ids: impl ExactSizeIterator<Item = ChunkId>) -> Self {
        let mut records = Vec::with_capacity(ids.len() + HEAD_ROOM);
        records.extend(ids.map(|id| record(&IndexEntry { id, size: 0, retain_until: 0, copy: false })));
        Self(records)
    }

    /// Puts the entries in id order, and names an id listed twice.
    pub fn sort(&mut self) -> Result<(), ChunkId> {
        self.0.sort_unstable_by(|a, b| a[..ChunkId::LEN].cmp(&b[..ChunkId::LEN]));
        match self.0.windows(2).find(|w| w[0][..ChunkId::LEN] == w[1][..ChunkId::LEN]) {
            Some(w) => Err(entry(&w[0]).id),
            None => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> IndexEntry {
        entry(&self.0[i])
    }

    pub fn set(&mut self, i: usize, e: &IndexEntry) {
        self.0[i] = record(e);
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = IndexEntry> + '_ {
        self.0.iter().map(|r| entry(r))
    }

    /// The encoded segment: `head`'s fields (it must have a scope; its
    /// `chunks` are not looked at) and these entries, which are moved
    /// within their own allocation rather than copied into another.
    pub fn into_segment(self, head: &IndexSegment) -> Vec<u8> {
        assert!(head.scope.is_some(), "new segments are CFI3");
        let mut prefix = Vec::new();
        head.encode_head(self.0.len(), &mut prefix);
        let mut out = self.0.into_flattened();
        let n = out.len();
        out.resize(n + prefix.len(), 0);
        out.copy_within(0..n, prefix.len());
        out[..prefix.len()].copy_from_slice(&prefix);
        out
    }
}

/// An index segment read in place: its header, keys and scope decoded,
/// its entries checked but left in the segment's bytes and read one at a
/// time (a segment may hold millions).
#[derive(Clone, Debug)]
pub struct IndexView<'a> {
    pub snapshot: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
    pub stats: SnapshotStats,
    pub keys: Option<Vec<KeyId>>,
    pub scope: Option<Scope>,
    entries: &'a [u8],
}

impl<'a> IndexView<'a> {
    /// Checks the whole segment, as [`IndexSegment::decode`] does.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let (version, magic) = if bytes.starts_with(INDEX_V1_MAGIC) {
            (1, INDEX_V1_MAGIC)
        } else if bytes.starts_with(INDEX_V2_MAGIC) {
            (2, INDEX_V2_MAGIC)
        } else {
            (3, INDEX_MAGIC)
        };
        r.magic(magic, "index segment (CFI3, CFI2 or CFI1)")?;
        let snapshot = SnapshotId::from_bytes(r.array()?);
        let committed = r.u64()?;
        let retain_until = r.u64()?;
        let stats = SnapshotStats::decode_from(&mut r)?;
        let keys = if version == 1 {
            None
        } else {
            let n = r.count(KeyId::LEN)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                let k = KeyId::from_bytes(r.array()?);
                if keys.last().is_some_and(|last| *last >= k) {
                    return Err(FormatError::Invalid {
                        what: "index segment",
                        reason: "key ids are not sorted and distinct".into(),
                    });
                }
                keys.push(k);
            }
            Some(keys)
        };
        let scope = if version == 3 { Some(Scope::from_bytes(r.array()?)) } else { None };
        let entry_len = if scope.is_some() { INDEX_ENTRY_LEN } else { INDEX_V2_ENTRY_LEN };
        let n = r.count(entry_len)?;
        let entries = r.take(n * entry_len)?;
        r.finish()?;
        if scope.is_some() && entries.chunks_exact(entry_len).any(|e| e[INDEX_V2_ENTRY_LEN] > 1) {
            return Err(FormatError::Invalid {
                what: "index segment",
                reason: "an entry's copy flag is neither 0 nor 1".into(),
            });
        }
        Ok(Self { snapshot, committed, retain_until, stats, keys, scope, entries })
    }

    /// How many chunks the segment records.
    pub fn len(&self) -> usize {
        self.entries.len() / self.entry_len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry_len(&self) -> usize {
        if self.scope.is_some() {
            INDEX_ENTRY_LEN
        } else {
            INDEX_V2_ENTRY_LEN
        }
    }

    /// The entries, in the segment's order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = IndexEntry> + 'a {
        self.entries.chunks_exact(self.entry_len()).map(entry)
    }
}

/// The start of every index segment version: what a listing needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub snapshot: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
    pub stats: SnapshotStats,
}

impl IndexHeader {
    /// Bytes of a segment the header takes: magic, snapshot id, committed,
    /// retain-until and the five stats.
    pub const LEN: usize = 4 + SnapshotId::LEN + 8 + 8 + 5 * 8;

    /// Reads the header from the first [`Self::LEN`] bytes of a segment of
    /// any version (what follows is not looked at).
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let head = bytes.get(..Self::LEN).ok_or_else(|| FormatError::Truncated { needed: Self::LEN - bytes.len() })?;
        let mut r = Reader::new(head);
        let magic = [INDEX_V1_MAGIC, INDEX_V2_MAGIC, INDEX_MAGIC].into_iter().find(|m| head.starts_with(*m));
        r.magic(magic.unwrap_or(INDEX_MAGIC), "index segment (CFI3, CFI2 or CFI1)")?;
        let header = Self {
            snapshot: SnapshotId::from_bytes(r.array()?),
            committed: r.u64()?,
            retain_until: r.u64()?,
            stats: SnapshotStats::decode_from(&mut r)?,
        };
        r.finish()?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    #[test]
    fn records_built_in_place_encode_as_the_segment_does() {
        let mut head = IndexSegment {
            snapshot: SnapshotId::from_bytes([1; 16]),
            committed: 10,
            retain_until: 20,
            stats: SnapshotStats::default(),
            // More keys than the room kept before the entries: the segment
            // is still whole, only moved.
            keys: Some(
                (0..=(HEAD_ROOM * INDEX_ENTRY_LEN / KeyId::LEN) as u32)
                    .map(|k| KeyId::from_bytes([k.to_be_bytes(); 4].concat().try_into().unwrap()))
                    .collect(),
            ),
            scope: Some(Scope::from_bytes([2; 8])),
            chunks: Vec::new(),
        };
        let mut records = IndexRecords::from_ids([3, 1, 2].map(id).into_iter());
        records.sort().unwrap();
        assert_eq!(records.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3].map(id));
        for i in 0..records.len() {
            let e = IndexEntry { size: 100 + i as u32, retain_until: 1000 + i as u64, copy: i == 1, ..records.get(i) };
            records.set(i, &e);
        }
        head.chunks = records.iter().collect();
        let encoded = records.clone().into_segment(&head);
        assert_eq!(encoded, head.encode());
        assert_eq!(IndexSegment::decode(&encoded).unwrap(), head);
        head.keys = Some(vec![KeyId::from_bytes([9; 16])]);
        assert_eq!(records.into_segment(&head), head.encode(), "a head within the room");

        let mut twice = IndexRecords::from_ids([5, 4, 5].map(id).into_iter());
        assert_eq!(twice.sort(), Err(id(5)), "an id listed twice is named");
    }
}
