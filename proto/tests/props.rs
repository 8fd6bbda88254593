//! Property tests for every encode/decode pair: round trips, and no input
//! (truncated, extended, random) ever panics a decoder.

use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::keys::{DataKey, IdKey};
use coffer_proto::repo::{ChunkerParams, RepoConfig};
use coffer_proto::snapshot::{
    decode_ids, encode_ids, CommitRequest, IndexEntry, IndexSegment, Manifest, ManifestEntry, SnapshotStats,
};
use coffer_proto::{chunk, ChunkId, FormatError, KeyId, RepoName, Scope, SnapshotId};
use proptest::prelude::*;

fn chunk_id() -> impl Strategy<Value = ChunkId> {
    any::<[u8; 32]>().prop_map(ChunkId::from_bytes)
}

fn stats() -> impl Strategy<Value = SnapshotStats> {
    any::<[u64; 5]>().prop_map(|[a, b, c, d, e]| SnapshotStats {
        bytes_in: a,
        bytes_new: b,
        stored_new: c,
        chunks: d,
        chunks_new: e,
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    prop::collection::vec((chunk_id(), any::<u32>()), 0..40)
        .prop_map(|v| Manifest(v.into_iter().map(|(id, len)| ManifestEntry { id, len }).collect()))
}

fn commit() -> impl Strategy<Value = CommitRequest> {
    (any::<[u8; 16]>(), prop::collection::vec(any::<u8>(), 0..200), stats(), prop::collection::vec(chunk_id(), 0..40))
        .prop_map(|(s, root, stats, chunks)| CommitRequest { snapshot: SnapshotId::from_bytes(s), root, stats, chunks })
}

fn index() -> impl Strategy<Value = IndexSegment> {
    (
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u64>(),
        stats(),
        prop::option::of(prop::collection::btree_set(any::<[u8; 16]>(), 0..5)),
        prop::option::of(any::<[u8; 8]>()),
        prop::collection::vec((chunk_id(), any::<u32>(), any::<u64>(), any::<bool>()), 0..40),
    )
        .prop_map(|(s, committed, retain_until, stats, keys, scope, entries)| {
            // A scope (CFI3) comes with keys, and only CFI3 records copies.
            let scope = scope.filter(|_| keys.is_some()).map(Scope::from_bytes);
            IndexSegment {
                snapshot: SnapshotId::from_bytes(s),
                committed,
                retain_until,
                stats,
                keys: keys.map(|set| set.into_iter().map(KeyId::from_bytes).collect()),
                scope,
                chunks: entries
                    .into_iter()
                    .map(|(id, size, retain_until, copy)| IndexEntry {
                        id,
                        size,
                        retain_until,
                        copy: copy && scope.is_some(),
                    })
                    .collect(),
            }
        })
}

/// Every strict prefix fails, and so does one extra byte.
fn refuses_truncation_and_trailing<T: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, FormatError>) {
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err(), "trailing byte accepted");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn manifest_round_trip(m in manifest()) {
        let bytes = m.encode();
        prop_assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        refuses_truncation_and_trailing(&bytes, Manifest::decode);
    }

    #[test]
    fn commit_round_trip(c in commit()) {
        let bytes = c.encode();
        prop_assert_eq!(CommitRequest::decode(&bytes).unwrap(), c);
        refuses_truncation_and_trailing(&bytes, CommitRequest::decode);
    }

    #[test]
    fn index_key_lists_must_be_sorted_and_distinct(mut i in index(), a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
        prop_assume!(a != b);
        let (lo, hi) = (KeyId::from_bytes(a.min(b)), KeyId::from_bytes(a.max(b)));
        i.keys = Some(vec![hi, lo]);
        prop_assert!(IndexSegment::decode(&i.encode()).is_err(), "a descending list decoded");
        i.keys = Some(vec![lo, lo]);
        prop_assert!(IndexSegment::decode(&i.encode()).is_err(), "a repeated key decoded");
        i.keys = Some(vec![lo, hi]);
        prop_assert_eq!(IndexSegment::decode(&i.encode()).unwrap(), i);
    }

    #[test]
    fn an_index_copy_flag_is_zero_or_one(mut i in index(), scope in any::<[u8; 8]>(), id in chunk_id(), flag in 2u8..) {
        i.scope = Some(Scope::from_bytes(scope));
        i.keys.get_or_insert_with(Vec::new);
        i.chunks.push(IndexEntry { id, size: 1, retain_until: 2, copy: false });
        let mut bytes = i.encode();
        // The last byte is the last entry's copy flag.
        *bytes.last_mut().unwrap() = flag;
        prop_assert!(IndexSegment::decode(&bytes).is_err());
        i.chunks.last_mut().unwrap().copy = true;
        prop_assert_eq!(*i.encode().last().unwrap(), 1);
    }

    #[test]
    fn index_round_trip(i in index()) {
        let bytes = i.encode();
        let header = coffer_proto::snapshot::IndexHeader::decode(&bytes[..coffer_proto::snapshot::IndexHeader::LEN]).unwrap();
        prop_assert_eq!((header.snapshot, header.committed, header.retain_until, header.stats), (i.snapshot, i.committed, i.retain_until, i.stats));
        prop_assert!(coffer_proto::snapshot::IndexHeader::decode(&bytes[..coffer_proto::snapshot::IndexHeader::LEN - 1]).is_err());
        prop_assert_eq!(IndexSegment::decode(&bytes).unwrap(), i);
        refuses_truncation_and_trailing(&bytes, IndexSegment::decode);
    }

    #[test]
    fn id_list_round_trip(ids in prop::collection::vec(chunk_id(), 0..50)) {
        prop_assert_eq!(decode_ids(&encode_ids(&ids)).unwrap(), ids);
    }

    /// Paths made of the API's own words, ids and hostile segments: what
    /// routes builds back to itself (`fuzz_route`), nothing panics.
    #[test]
    fn routes_round_trip(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "HEAD"]),
        segs in prop::collection::vec(prop::sample::select(vec![
            "repos", "chunks", "missing", "keys", "config", "snapshots", "epochs", "admin", "whoami", "expire",
            "dev", "db", "a", "..", "", "%2e", "A", "x y",
            "abababababababababababababababababababababababababababababababab",
            "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
        ]), 0..8),
        prefix in prop::sample::select(vec!["/v1/", "/v1", "/v2/", "/", ""]),
    ) {
        let path = format!("{prefix}{}", segs.join("/"));
        coffer_proto::fuzz::fuzz_route(format!("{method} {path}").as_bytes());
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        coffer_proto::fuzz::fuzz_all(&bytes);
    }

    /// Mutations of the test vectors (the seed corpus): flipped, cut and
    /// spliced bytes of real objects.
    #[test]
    fn mutated_vectors_never_panic(seed in 0usize..64, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), cut in any::<prop::sample::Index>()) {
        let corpus = seed_corpus();
        let mut data = corpus[seed % corpus.len()].clone();
        for (at, byte) in flips {
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] ^= byte;
            }
        }
        coffer_proto::fuzz::fuzz_all(&data);
        let cut = cut.index(data.len() + 1);
        coffer_proto::fuzz::fuzz_all(&data[..cut]);
    }

    #[test]
    fn chunk_seal_open_round_trip_and_any_flip_fails(data in prop::collection::vec(any::<u8>(), 0..4096), flip in any::<prop::sample::Index>(), level in 1i32..4) {
        let repo: RepoName = "dev/db".parse().unwrap();
        let (dek, idk) = (DataKey::random(), IdKey::random());
        let id = idk.chunk_id(&data);
        let sealed = chunk::seal(&data, &dek, KeyId::random(), &repo, &id, level);
        prop_assert_eq!(&chunk::open(&sealed, &dek, &repo, &id, &idk).unwrap(), &data);
        let mut bad = sealed.clone();
        bad[flip.index(sealed.len())] ^= 0x01;
        prop_assert!(chunk::open(&bad, &dek, &repo, &id, &idk).is_err());
    }

    /// A chunk that compresses is stored compressed and one that does not
    /// is stored as it is, never larger than itself plus the envelope;
    /// both open to the same bytes.
    #[test]
    fn chunks_are_compressed_only_when_it_pays(row in "[a-z ]{8,40}\n", rows in 200usize..4000, noise in prop::collection::vec(any::<u8>(), 1024..65536), level in 1i32..6) {
        let repo: RepoName = "dev/db".parse().unwrap();
        let (dek, idk) = (DataKey::random(), IdKey::random());
        for (data, compressed) in [(row.repeat(rows).into_bytes(), true), (noise, false)] {
            let id = idk.chunk_id(&data);
            let sealed = chunk::seal(&data, &dek, KeyId::random(), &repo, &id, level);
            let header = envelope::parse_header(&sealed).unwrap();
            prop_assert_eq!(header.compression == Compression::Zstd, compressed, "{} bytes", data.len());
            prop_assert_eq!(sealed.len() <= data.len() + envelope::OVERHEAD, true);
            prop_assert_eq!(&chunk::open(&sealed, &dek, &repo, &id, &idk).unwrap(), &data);
        }
    }

    /// A chunk sealed from the parts it was read in opens to the parts
    /// joined, compressed exactly when the whole would be, at any level and
    /// however it is split (each thread keeps one zstd context between
    /// chunks and levels).
    #[test]
    fn chunks_sealed_from_parts_open_to_the_whole(
        row in "[a-z ]{8,40}\n",
        rows in 0usize..3000,
        noise in prop::collection::vec(any::<u8>(), 0..20000),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        level in 1i32..6,
    ) {
        let repo: RepoName = "dev/db".parse().unwrap();
        let (dek, idk) = (DataKey::random(), IdKey::random());
        for data in [row.repeat(rows).into_bytes(), noise.clone(), [row.repeat(rows).into_bytes(), noise].concat()] {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.sort_unstable();
            let parts: Vec<&[u8]> = std::iter::once(0).chain(at.iter().copied()).zip(at.iter().copied().chain(std::iter::once(data.len()))).map(|(a, b)| &data[a..b]).collect();
            let id = idk.chunk_id(&data);
            let sealed = chunk::seal_parts(&parts, &dek, KeyId::random(), &repo, &id, level);
            let whole = chunk::seal(&data, &dek, KeyId::random(), &repo, &id, level);
            let compression = |s: &[u8]| envelope::parse_header(s).unwrap().compression;
            prop_assert_eq!(compression(&sealed), compression(&whole));
            prop_assert_eq!(sealed.len(), whole.len());
            prop_assert_eq!(sealed.len() <= data.len() + envelope::OVERHEAD, true);
            prop_assert_eq!(&chunk::open(&sealed, &dek, &repo, &id, &idk).unwrap(), &data);
        }
    }

    #[test]
    fn envelope_binds_repo_id_and_kind(data in prop::collection::vec(any::<u8>(), 0..512), a in any::<[u8; 16]>(), b in any::<[u8; 16]>()) {
        prop_assume!(a != b);
        let repo: RepoName = "dev/db".parse().unwrap();
        let other: RepoName = "dev/db2".parse().unwrap();
        let key = DataKey::random();
        let sealed = envelope::seal(Kind::SnapshotRoot, Compression::None, KeyId::random(), &key, &repo, &a, &data);
        prop_assert_eq!(envelope::open(&sealed, Kind::SnapshotRoot, &key, &repo, &a).unwrap().1, data);
        prop_assert!(envelope::open(&sealed, Kind::SnapshotRoot, &key, &repo, &b).is_err());
        prop_assert!(envelope::open(&sealed, Kind::SnapshotRoot, &key, &other, &a).is_err());
        prop_assert!(envelope::open(&sealed, Kind::Chunk, &key, &repo, &a).is_err());
        prop_assert!(envelope::open(&sealed, Kind::SnapshotRoot, &DataKey::random(), &repo, &a).is_err());
    }
}

/// A (not really wrapped) chunk-id key record bound to `repo`.
fn chunk_id_record(repo: &RepoName) -> coffer_proto::keys::KeyRecord {
    use coffer_proto::keys::{EncryptionContext, KeyRecord, Purpose, KEY_RECORD_VERSION};
    let key_id = KeyId::random();
    KeyRecord {
        version: KEY_RECORD_VERSION,
        key_id,
        purpose: Purpose::ChunkId,
        kek: "local:00".into(),
        context: EncryptionContext::new(repo, Purpose::ChunkId, key_id),
        wrapped: vec![0; 60],
    }
}

#[test]
fn repo_config_round_trip_and_validation() {
    let repo: RepoName = "dev/db".parse().unwrap();
    let id_key = chunk_id_record(&repo);
    let cfg = RepoConfig {
        version: 1,
        repo: repo.clone(),
        chunker: ChunkerParams::default(),
        zstd_level: 3,
        id_key,
        created: 1,
        mac: None,
    };
    assert_eq!(RepoConfig::decode(&cfg.encode()).unwrap(), cfg);
    let huge = RepoConfig { chunker: ChunkerParams { min_size: 1, avg_size: 2, max_size: 1 << 30 }, ..cfg.clone() };
    assert!(RepoConfig::decode(&huge.encode()).is_err(), "chunker bounds FastCDC would assert on must be refused");
    let moved = RepoConfig { repo: "dev/other".parse().unwrap(), ..cfg.clone() };
    assert!(RepoConfig::decode(&moved.encode()).is_err(), "an id key bound to another repo must be refused");
    let v2 = RepoConfig { version: 2, ..cfg };
    assert!(matches!(RepoConfig::decode(&v2.encode()), Err(FormatError::Unsupported { .. })));
}

/// The envelopes of the test vectors plus one well-formed object of each
/// binary kind.
fn seed_corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/vectors");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            hex::decode(v["envelope"].as_str().unwrap()).unwrap()
        })
        .collect();
    out.extend(coffer_proto::fuzz::structured_seeds());
    out
}

/// A config's parameters are authenticated under its chunk-id key: any
/// change to them, or a MAC made under another key, is caught; a legacy
/// config (no MAC) says so, and its chunker sizes must clear the floors.
#[test]
fn config_mac_catches_every_changed_parameter() {
    use coffer_proto::keys::IdKey;
    let repo: RepoName = "dev/db".parse().unwrap();
    let id_key = chunk_id_record(&repo);
    let mut cfg = RepoConfig {
        version: 1,
        repo,
        chunker: ChunkerParams::default(),
        zstd_level: 3,
        id_key,
        created: 1,
        mac: None,
    };
    let idk = IdKey::random();
    assert!(!cfg.check_mac(&idk).unwrap(), "a legacy config");
    cfg.check_legacy_floors().unwrap();
    cfg.authenticate(&idk);
    let back = RepoConfig::decode(&cfg.encode()).unwrap();
    assert!(back.check_mac(&idk).unwrap());
    assert!(back.check_mac(&IdKey::random()).is_err(), "another repository's key");
    let changed = [
        RepoConfig { chunker: ChunkerParams { min_size: 64, avg_size: 256, max_size: 1024 }, ..cfg.clone() },
        RepoConfig { chunker: ChunkerParams { avg_size: 2 << 20, ..cfg.chunker }, ..cfg.clone() },
        RepoConfig { zstd_level: 1, ..cfg.clone() },
    ];
    for c in changed {
        assert!(c.check_mac(&idk).is_err(), "{:?} {}", c.chunker, c.zstd_level);
        let legacy = RepoConfig { mac: None, ..c };
        if legacy.chunker.avg_size < coffer_proto::repo::LEGACY_CHUNK_AVG_FLOOR {
            assert!(legacy.check_legacy_floors().is_err(), "tiny chunks without a MAC");
        }
    }
    let garbage = RepoConfig { mac: Some("zz".into()), ..cfg.clone() };
    assert!(garbage.check_mac(&idk).is_err());
}

/// The gear tables differ per chunk-id key and are stable for one.
#[test]
fn gear_tables_are_keyed() {
    use coffer_proto::keys::IdKey;
    let (a, b) = (IdKey::random(), IdKey::random());
    let (ga, la) = a.gear_tables();
    assert_eq!(a.gear_tables().0, ga, "stable for one key");
    assert_ne!(b.gear_tables().0, ga, "keyed");
    assert!(ga.iter().zip(la.iter()).all(|(g, l)| *l == g << 1));
    let distinct: std::collections::HashSet<u64> = ga.iter().copied().collect();
    assert_eq!(distinct.len(), 256);
}
