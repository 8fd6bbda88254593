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
    if let Ok(i) = IndexSegment::decode(data) {
        assert_eq!(i.encode(), data);
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

/// Every decoder at once.
pub fn fuzz_all(data: &[u8]) {
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

/// One well-formed object of each binary kind (manifest, commit body, index
/// segment), for seed corpora beside the test vectors' envelopes.
pub fn structured_seeds() -> Vec<Vec<u8>> {
    let id = ChunkId::from_bytes([7; 32]);
    let snapshot = SnapshotId::from_bytes([1; 16]);
    vec![
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
