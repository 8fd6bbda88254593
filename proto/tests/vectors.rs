//! Test vectors as files with an expected outcome, the bad ones included.
//!
//! Each `testdata/vectors/*.json` names the keys, repository and object id
//! to open an envelope with, and what must happen: `ok` (with the
//! plaintext), `format-error` (refused before any cryptography) or
//! `integrity-error` (refused by authentication or the keyed hash).
//! Regenerate with `cargo test -p coffer-proto --test vectors -- --ignored`;
//! the regenerated files must then still pass, and a diff shows what moved.

use std::path::{Path, PathBuf};

use coffer_proto::envelope::{self, Compression, Kind};
use coffer_proto::keys::{DataKey, IdKey};
use coffer_proto::{chunk, ChunkId, KeyId, RepoName, SnapshotId};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Vector {
    description: String,
    kind: String,
    repo: String,
    object_id: String,
    data_key: String,
    id_key: String,
    envelope: String,
    expect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/vectors")
}

fn key(hex_str: &str) -> DataKey {
    DataKey::from_slice(&hex::decode(hex_str).unwrap()).unwrap()
}

/// What opening the vector's envelope does.
fn outcome(v: &Vector) -> (String, Option<Vec<u8>>) {
    let sealed = hex::decode(&v.envelope).unwrap();
    let repo: RepoName = v.repo.parse().unwrap();
    if envelope::parse_header(&sealed).is_err() {
        return ("format-error".into(), None);
    }
    let dek = key(&v.data_key);
    let opened = match v.kind.as_str() {
        "chunk" => {
            let id: ChunkId = v.object_id.parse().unwrap();
            chunk::open(&sealed, &dek, &repo, &id, &IdKey::from_data_key(key(&v.id_key)))
        }
        "snapshot-root" => {
            let id: SnapshotId = v.object_id.parse().unwrap();
            envelope::open(&sealed, Kind::SnapshotRoot, &dek, &repo, id.as_bytes()).map(|(_, p)| p)
        }
        other => panic!("unknown vector kind {other}"),
    };
    match opened {
        Ok(p) => ("ok".into(), Some(p)),
        Err(_) => ("integrity-error".into(), None),
    }
}

#[test]
fn vectors_have_their_expected_outcome() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let v: Vector = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let (got, plain) = outcome(&v);
        assert_eq!(got, v.expect, "{}: {}", path.display(), v.description);
        if let Some(expected) = &v.plaintext {
            assert_eq!(hex::encode(plain.unwrap()), *expected, "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} vectors found");
}

#[test]
#[ignore = "writes testdata; run by hand to regenerate"]
fn regenerate_vectors() {
    let dek_hex = "11".repeat(32);
    let idk_hex = "22".repeat(32);
    let other_key = "33".repeat(32);
    let repo: RepoName = "dev/db".parse().unwrap();
    let idk = IdKey::from_data_key(key(&idk_hex));
    let key_id = KeyId::from_bytes([0x44; 16]);
    let text = b"CREATE TABLE t (id int);\n".repeat(200);
    let id = idk.chunk_id(&text);
    let sealed = chunk::seal(&text, &key(&dek_hex), key_id, &repo, &id, 3);
    let raw = b"\x00\x01random-looking, incompressible".to_vec();
    let raw_id = idk.chunk_id(&raw);
    let sealed_raw = chunk::seal(&raw, &key(&dek_hex), key_id, &repo, &raw_id, 3);
    let snap = SnapshotId::from_bytes([0x55; 16]);
    let root =
        envelope::seal(Kind::SnapshotRoot, Compression::None, key_id, &key(&dek_hex), &repo, snap.as_bytes(), b"{}");

    let mut flipped_tag = sealed.clone();
    *flipped_tag.last_mut().unwrap() ^= 0x01;
    let mut flipped_body = sealed.clone();
    flipped_body[envelope::HEADER_LEN + 3] ^= 0x80;
    let mut v2 = sealed.clone();
    v2[3] = b'2';
    let mut alg = sealed.clone();
    alg[5] = 2;
    let mut kind = sealed.clone();
    kind[4] = 9;
    let mut comp = sealed.clone();
    comp[6] = 7;

    let hexs = |b: &[u8]| hex::encode(b);
    let v = |description: &str,
             kind: &str,
             repo: &str,
             object: String,
             dek: &str,
             envelope: &[u8],
             expect: &str,
             plain: Option<&[u8]>| Vector {
        description: description.into(),
        kind: kind.into(),
        repo: repo.into(),
        object_id: object,
        data_key: dek.into(),
        id_key: idk_hex.clone(),
        envelope: hexs(envelope),
        expect: expect.into(),
        plaintext: plain.map(hexs),
    };
    let c = |s: &str| s.to_string();
    let vectors = [
        (
            "good-chunk-zstd",
            v("a compressible chunk, zstd", "chunk", "dev/db", id.to_hex(), &dek_hex, &sealed, "ok", Some(&text)),
        ),
        (
            "good-chunk-raw",
            v(
                "an incompressible chunk, stored raw",
                "chunk",
                "dev/db",
                raw_id.to_hex(),
                &dek_hex,
                &sealed_raw,
                "ok",
                Some(&raw),
            ),
        ),
        (
            "good-root",
            v("a snapshot root", "snapshot-root", "dev/db", snap.to_hex(), &dek_hex, &root, "ok", Some(b"{}")),
        ),
        (
            "truncated",
            v(
                "the last 5 bytes cut off",
                "chunk",
                "dev/db",
                raw_id.to_hex(),
                &dek_hex,
                &sealed_raw[..sealed_raw.len() - 5],
                "integrity-error",
                None,
            ),
        ),
        (
            "truncated-header",
            v(
                "shorter than header and tag",
                "chunk",
                "dev/db",
                id.to_hex(),
                &dek_hex,
                &sealed[..40],
                "format-error",
                None,
            ),
        ),
        (
            "flipped-tag-bit",
            v(
                "one bit of the tag flipped",
                "chunk",
                "dev/db",
                id.to_hex(),
                &dek_hex,
                &flipped_tag,
                "integrity-error",
                None,
            ),
        ),
        (
            "flipped-ciphertext-bit",
            v(
                "one bit of the ciphertext flipped",
                "chunk",
                "dev/db",
                id.to_hex(),
                &dek_hex,
                &flipped_body,
                "integrity-error",
                None,
            ),
        ),
        (
            "wrong-key",
            v(
                "opened with another data key",
                "chunk",
                "dev/db",
                id.to_hex(),
                &other_key,
                &sealed,
                "integrity-error",
                None,
            ),
        ),
        (
            "swapped-chunk",
            v(
                "a valid chunk presented under another chunk's id",
                "chunk",
                "dev/db",
                raw_id.to_hex(),
                &dek_hex,
                &sealed,
                "integrity-error",
                None,
            ),
        ),
        (
            "wrong-repo",
            v(
                "a valid chunk presented in another repository",
                "chunk",
                "dev/other",
                id.to_hex(),
                &dek_hex,
                &sealed,
                "integrity-error",
                None,
            ),
        ),
        (
            "root-as-chunk",
            v(
                "a snapshot root presented as a chunk",
                "chunk",
                "dev/db",
                c(&"55".repeat(32)),
                &dek_hex,
                &root,
                "integrity-error",
                None,
            ),
        ),
        ("unknown-version", v("magic CFR2", "chunk", "dev/db", id.to_hex(), &dek_hex, &v2, "format-error", None)),
        (
            "unknown-algorithm",
            v("algorithm byte 2", "chunk", "dev/db", id.to_hex(), &dek_hex, &alg, "format-error", None),
        ),
        ("unknown-kind", v("kind byte 9", "chunk", "dev/db", id.to_hex(), &dek_hex, &kind, "format-error", None)),
        (
            "unknown-compression",
            v("compression byte 7", "chunk", "dev/db", id.to_hex(), &dek_hex, &comp, "format-error", None),
        ),
    ];
    std::fs::create_dir_all(dir()).unwrap();
    for (name, vector) in vectors {
        let json = serde_json::to_string_pretty(&vector).unwrap() + "\n";
        std::fs::write(dir().join(format!("{name}.json")), json).unwrap();
    }
}
