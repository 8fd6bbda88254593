//! Entry points for fuzzers: each takes arbitrary bytes, must never panic,
//! and checks that whatever decodes re-encodes to something that decodes
//! to the same value. `cargo fuzz` targets (and the bounded proptest runs
//! in CI) are a line each calling these.

use crate::envelope;
use crate::keys::KeyRecord;
use crate::repo::RepoConfig;
use crate::snapshot::{
    decode_ids, encode_ids, CommitRequest, IndexEntry, IndexSegment, Manifest, ManifestEntry, SnapshotRoot,
    SnapshotStats,
};
use crate::{ChunkId, KeyId, SnapshotId};

pub fn fuzz_envelope(data: &[u8]) {
    let _ = envelope::parse_header(data);
}

pub fn fuzz_key_record(data: &[u8]) {
    if let Ok(r) = KeyRecord::decode(data) {
        assert_eq!(KeyRecord::decode(&r.encode()).as_ref(), Ok(&r));
    }
}

pub fn fuzz_config(data: &[u8]) {
    if let Ok(c) = RepoConfig::decode(data) {
        assert_eq!(RepoConfig::decode(&c.encode()).as_ref(), Ok(&c));
    }
}

pub fn fuzz_snapshot_root(data: &[u8]) {
    if let Ok(r) = SnapshotRoot::decode(data) {
        assert_eq!(SnapshotRoot::decode(&r.encode()).as_ref(), Ok(&r));
    }
}

pub fn fuzz_commit(data: &[u8]) {
    if let Ok(c) = CommitRequest::decode(data) {
        assert_eq!(c.encode(), data, "a decoded commit re-encodes to the same bytes");
    }
}

pub fn fuzz_manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
    }
}

pub fn fuzz_index(data: &[u8]) {
    let header = crate::snapshot::IndexHeader::decode(data);
    if let Ok(i) = IndexSegment::decode(data) {
        assert_eq!(i.encode(), data);
        let h = header.expect("a whole segment has a header");
        assert_eq!(
            (h.snapshot, h.committed, h.retain_until, h.stats),
            (i.snapshot, i.committed, i.retain_until, i.stats)
        );
    }
}

pub fn fuzz_ids(data: &[u8]) {
    if let Ok(ids) = decode_ids(data) {
        assert_eq!(encode_ids(&ids), data);
    }
}

/// The API's router and repository names on arbitrary text: a path that
/// routes is exactly the path its action builds (so the proxy and the
/// client cannot disagree), and a repository name that parses prints back
/// as itself.
pub fn fuzz_route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, path) = text.split_once(' ').unwrap_or(("GET", &text));
    if let Ok(r) = crate::endpoint::route(method, path) {
        assert_eq!(r.action.method(), method);
        assert_eq!(r.action.path(r.repo.as_ref(), r.object.as_deref()), path);
    }
    if let Ok(name) = text.parse::<crate::RepoName>() {
        assert_eq!(name.to_string(), text);
    }
}

/// A fixed data key and chunk-id key, for the opening entry points (the
/// fuzzer plays a hostile writer, who holds both).
fn fixed_keys() -> (crate::keys::DataKey, crate::keys::IdKey) {
    let key = crate::keys::DataKey::from_secret(zeroize::Zeroizing::new([7; crate::keys::KEY_LEN]));
    let id_key = crate::keys::IdKey::from_data_key(crate::keys::DataKey::from_secret(zeroize::Zeroizing::new(
        [9; crate::keys::KEY_LEN],
    )));
    (key, id_key)
}

/// Opening what a hostile writer sealed: `data` as the authenticated body
/// of a chunk envelope marked zstd (a bomb, garbage, a truncated frame) and
/// as a stored envelope itself. Never panics, never yields more than a
/// chunk's worth, and only ever the chunk its id names.
pub fn fuzz_open(data: &[u8]) {
    use crate::envelope::{Compression, Kind};
    let repo: crate::RepoName = "fuzz/open".parse().expect("a valid name");
    let (key, id_key) = fixed_keys();
    let key_id = KeyId::from_bytes([1; 16]);
    let id = ChunkId::from_bytes([3; 32]);
    let sealed = envelope::seal(Kind::Chunk, Compression::Zstd, key_id, &key, &repo, id.as_bytes(), data);
    if let Ok(plain) = crate::chunk::open(&sealed, &key, &repo, &id, &id_key) {
        assert!(plain.len() <= crate::CHUNK_MAX as usize);
        assert_eq!(id_key.chunk_id(&plain), id);
    }
    let _ = crate::chunk::open(data, &key, &repo, &id, &id_key);
    for kind in [Kind::Chunk, Kind::SnapshotRoot] {
        let _ = envelope::open(data, kind, &key, &repo, id.as_bytes());
    }
}

/// Chunk-id key epochs: what decodes re-encodes to the same value, and is
/// bound to the repository it was decoded for.
pub fn fuzz_epoch(data: &[u8]) {
    let repo: crate::RepoName = "fuzz/epoch".parse().expect("a valid name");
    if let Ok(e) = crate::repo::Epoch::decode(data, &repo) {
        assert_eq!(crate::repo::Epoch::decode(&e.encode(), &repo).as_ref(), Ok(&e));
    }
}

/// Chunk object names (an id, or an id and a scope: a copy): what parses
/// prints back as itself.
pub fn fuzz_chunk_name(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((id, copy)) = crate::layout::chunk_of(&text) {
        let name = match copy {
            Some(scope) => crate::layout::copy_name(&id, &scope),
            None => id.to_string(),
        };
        assert_eq!(text.rsplit('/').next(), Some(name.as_str()));
    }
}

/// Every decoder at once.
pub fn fuzz_all(data: &[u8]) {
    fuzz_open(data);
    fuzz_epoch(data);
    fuzz_chunk_name(data);
    fuzz_route(data);
    fuzz_envelope(data);
    fuzz_key_record(data);
    fuzz_config(data);
    fuzz_snapshot_root(data);
    fuzz_commit(data);
    fuzz_manifest(data);
    fuzz_index(data);
    fuzz_ids(data);
}

/// The two inputs a seed-mutation property feeds its fuzz entry points:
/// `seed` with bytes flipped (each `(at, mask)` XORs the byte at `at`, modulo
/// the length, with `mask`), and that cut to its first `cut` bytes (modulo
/// the length plus one).
pub fn flipped_and_cut(seed: &[u8], flips: &[(usize, u8)], cut: usize) -> [Vec<u8>; 2] {
    let mut data = seed.to_vec();
    if !data.is_empty() {
        for &(at, mask) in flips {
            let i = at % data.len();
            data[i] ^= mask;
        }
    }
    let cut = data[..cut % (data.len() + 1)].to_vec();
    [data, cut]
}

/// One well-formed object of each kind (manifest, commit body, index
/// segment, and the JSON objects: key record, repository config, epoch,
/// snapshot root), for seed corpora beside the test vectors' envelopes.
pub fn structured_seeds() -> Vec<Vec<u8>> {
    let id = ChunkId::from_bytes([7; 32]);
    let snapshot = SnapshotId::from_bytes([1; 16]);
    let repo: crate::RepoName = "fuzz/epoch".parse().expect("a valid name");
    let (kek, _) = crate::keys::LocalKek::generate();
    let record = |purpose, key_id| {
        let context = crate::keys::EncryptionContext::new(&repo, purpose, key_id);
        let (_, wrapped) = kek.generate_data_key(&context);
        KeyRecord {
            version: crate::keys::KEY_RECORD_VERSION,
            key_id,
            purpose,
            kek: kek.id().to_string(),
            context,
            wrapped,
        }
    };
    let id_key = record(crate::keys::Purpose::ChunkId, KeyId::from_bytes([3; 16]));
    let config = RepoConfig {
        version: 1,
        repo: repo.clone(),
        chunker: Default::default(),
        zstd_level: 3,
        id_key: id_key.clone(),
        created: 1_800_000_000,
        mac: Some("00".repeat(32)),
    };
    let epoch = crate::repo::Epoch { version: 1, created: 1_800_000_000_000, key: id_key };
    let root = SnapshotRoot {
        version: 1,
        id: snapshot,
        name: "pg_dump".into(),
        host: "db-01".into(),
        source: "command:pg_dump app".into(),
        started: 1_800_000_000,
        finished: 1_800_000_060,
        bytes: 9,
        blake3: "00".repeat(32),
        manifest: vec![crate::snapshot::ManifestRef { id, len: 9 }],
        id_key: Some(KeyId::from_bytes([3; 16])),
    };
    vec![
        record(crate::keys::Purpose::Data, KeyId::from_bytes([4; 16])).encode(),
        config.encode(),
        epoch.encode(),
        root.encode(),
        Manifest(vec![ManifestEntry { id, len: 9 }]).encode(),
        CommitRequest { snapshot, root: vec![2; 60], stats: SnapshotStats::default(), chunks: vec![id] }.encode(),
        IndexSegment {
            snapshot,
            committed: 1,
            retain_until: 2,
            stats: SnapshotStats::default(),
            keys: Some(vec![KeyId::from_bytes([5; 16])]),
            scope: Some(crate::Scope::from_bytes([6; 8])),
            chunks: vec![IndexEntry { id, size: 3, retain_until: 4, copy: true }],
        }
        .encode(),
        encode_ids(&[id]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON seeds are well formed, so mutations start from objects the
    /// decoders accept, not from their first error.
    #[test]
    fn the_json_seeds_decode() {
        let seeds = structured_seeds();
        let repo: crate::RepoName = "fuzz/epoch".parse().unwrap();
        assert!(KeyRecord::decode(&seeds[0]).is_ok());
        assert!(RepoConfig::decode(&seeds[1]).is_ok());
        assert!(crate::repo::Epoch::decode(&seeds[2], &repo).is_ok());
        assert!(SnapshotRoot::decode(&seeds[3]).is_ok());
        for seed in &seeds {
            fuzz_all(seed);
        }
    }

    #[test]
    fn flipping_and_cutting_wraps_around() {
        let [flipped, cut] = flipped_and_cut(b"abcd", &[(0, 0x20), (6, 0x20)], 7);
        assert_eq!(flipped, b"AbCd");
        assert_eq!(cut, b"Ab");
        assert_eq!(flipped_and_cut(b"", &[(3, 1)], 9), [Vec::<u8>::new(), Vec::new()]);
    }
}
