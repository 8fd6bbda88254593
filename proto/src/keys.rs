//! Key material and wrapped key records.
//!
//! Plaintext keys live only in [`DataKey`] and [`IdKey`]: zeroized on drop,
//! neither `Debug` nor `Clone`, read through `expose_secret`. What is stored
//! and sent is a [`KeyRecord`]: the key wrapped by a key-encryption key (KEK)
//! under an [`EncryptionContext`] that binds it to one repository, purpose
//! and key id.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{ChunkId, FormatError, IntegrityError, KeyId, RepoName};

/// Length of every symmetric key in Coffer.
pub const KEY_LEN: usize = 32;
/// Chunks sealed under one data key before the agent rolls a new one; keeps
/// random 96-bit nonces far from their collision bound.
pub const CHUNKS_PER_DATA_KEY: u64 = 1 << 24;

fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(k.as_mut()).expect("the system RNG failed");
    k
}

/// A 256-bit AES-GCM data key (DEK) in plaintext.
pub struct DataKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    aead: LessSafeKey,
}

impl DataKey {
    pub fn random() -> Self {
        Self::from_secret(random_key())
    }

    pub fn from_secret(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32-byte key"));
        Self { bytes, aead }
    }

    /// Builds a key from a slice that must be exactly 32 bytes (a KMS
    /// plaintext, say); the caller's copy remains its to zeroize.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(FormatError::Invalid { what: "data key", reason: format!("expected {KEY_LEN} bytes") });
        }
        k.copy_from_slice(bytes);
        Ok(Self::from_secret(k))
    }

    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }
}

/// The repository's chunk-id key (IDK): keys the BLAKE3 hash that names
/// chunks, so that ids reveal nothing about content without it.
pub struct IdKey(Zeroizing<[u8; KEY_LEN]>);

impl IdKey {
    pub fn random() -> Self {
        Self(random_key())
    }

    pub fn from_data_key(key: DataKey) -> Self {
        Self(key.bytes)
    }

    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The MAC of a repository config's parameters under a key derived
    /// from this one (the config's own chunk-id key): whoever lacks the key
    /// (the proxy, the bucket) cannot change them unnoticed.
    pub fn config_mac(&self, canonical: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key("coffer 2026-12-02 repository config MAC v1", self.0.as_ref());
        *blake3::keyed_hash(&key, canonical).as_bytes()
    }

    /// The chunker's gear table, keyed: 256 words of BLAKE3 output under a
    /// key derived from this one, so the cut points (and so the chunk and
    /// envelope sizes) of a stream differ per repository and reveal nothing
    /// to someone who can guess the plaintext but lacks the key. Returns
    /// the table and the table shifted left by one, as FastCDC uses them.
    pub fn gear_tables(&self) -> (Box<[u64; 256]>, Box<[u64; 256]>) {
        let key = blake3::derive_key("coffer 2026-12-02 chunker gear v1", self.0.as_ref());
        let mut bytes = [0u8; 256 * 8];
        blake3::Hasher::new_keyed(&key).finalize_xof().fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        for (g, b) in gear.iter_mut().zip(bytes.chunks_exact(8)) {
            *g = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        let mut shifted = Box::new([0u64; 256]);
        for (s, g) in shifted.iter_mut().zip(gear.iter()) {
            *s = g << 1;
        }
        (gear, shifted)
    }

    /// The id of a chunk with this plaintext.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(&self.0, plaintext).as_bytes())
    }

    /// Computes a chunk's id from its plaintext fed in parts, in order: the
    /// same id as [`IdKey::chunk_id`] of the parts joined.
    pub fn chunk_hasher(&self) -> ChunkIdHasher {
        ChunkIdHasher(blake3::Hasher::new_keyed(&self.0))
    }
}

/// See [`IdKey::chunk_hasher`].
pub struct ChunkIdHasher(blake3::Hasher);

impl ChunkIdHasher {
    pub fn update(&mut self, part: &[u8]) {
        self.0.update(part);
    }

    pub fn finish(&self) -> ChunkId {
        ChunkId::from_bytes(*self.0.finalize().as_bytes())
    }
}

/// What a wrapped key may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// A data key that seals chunks and snapshot roots.
    Data,
    /// The repository's chunk-id key.
    ChunkId,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Data => "data",
            Purpose::ChunkId => "chunk-id",
        }
    }
}

pub const CONTEXT_REPO: &str = "coffer:repo";
pub const CONTEXT_PURPOSE: &str = "coffer:purpose";
pub const CONTEXT_KEY_ID: &str = "coffer:key-id";

/// The encryption context a key is wrapped under (KMS's term): string pairs
/// that must be presented again to unwrap it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new(repo: &RepoName, purpose: Purpose, key_id: KeyId) -> Self {
        let mut m = BTreeMap::new();
        m.insert(CONTEXT_REPO.to_string(), repo.to_string());
        m.insert(CONTEXT_PURPOSE.to_string(), purpose.as_str().to_string());
        m.insert(CONTEXT_KEY_ID.to_string(), key_id.to_hex());
        Self(m)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The canonical encoding used as AAD by the local provider: pairs in
    /// byte order of their keys, each `u32 len || key || u32 len || value`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            for s in [k, v] {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }

    /// Whether this is exactly the context Coffer would build for these
    /// names; anything extra or missing is a mismatch.
    pub fn matches(&self, repo: &RepoName, purpose: Purpose, key_id: KeyId) -> bool {
        *self == Self::new(repo, purpose, key_id)
    }
}

/// Current key record format version.
pub const KEY_RECORD_VERSION: u32 = 1;

/// A wrapped key as stored at `keys/<key-id>` (data keys) or inside the
/// repository config (the chunk-id key). JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub version: u32,
    pub key_id: KeyId,
    pub purpose: Purpose,
    /// The KEK that wrapped it: a KMS key ARN, or `local:<fingerprint>`.
    pub kek: String,
    pub context: EncryptionContext,
    /// The wrapped key (a KMS ciphertext blob, or a local-provider blob), base64.
    #[serde(with = "b64")]
    pub wrapped: Vec<u8>,
}

impl KeyRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key records always serialise")
    }

    /// Decodes and checks the version and that the context agrees with the
    /// record's own key id and purpose.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let rec: KeyRecord = crate::wire::json_decode(bytes, "key record")?;
        if rec.version != KEY_RECORD_VERSION {
            return Err(FormatError::Unsupported { what: "key record version", value: rec.version.into() });
        }
        let key_id = rec.key_id.to_hex();
        if rec.context.get(CONTEXT_KEY_ID) != Some(key_id.as_str())
            || rec.context.get(CONTEXT_PURPOSE) != Some(rec.purpose.as_str())
        {
            return Err(FormatError::Invalid {
                what: "key record",
                reason: "context does not name the record's key id and purpose".into(),
            });
        }
        Ok(rec)
    }

    /// The repository the context binds this key to, if it names a valid one.
    pub fn repo(&self) -> Option<RepoName> {
        self.context.get(CONTEXT_REPO)?.parse().ok()
    }
}

pub(crate) mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Domain separation for the local provider's wrapping AAD.
const LOCAL_AAD_PREFIX: &[u8] = b"coffer-local-kek-v1\0";
/// Length of a local-provider wrapped key: nonce, key, tag.
pub const LOCAL_WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + 16;
/// First line of a local master-key file.
pub const LOCAL_KEY_FILE_HEADER: &str = "coffer-local-master-key v1";

/// The local provider's key-encryption key: a 256-bit master key from a
/// 0600 file, wrapping data keys with AES-256-GCM and the canonical
/// encryption context (plus the KEK id) as AAD.
///
/// For dev mode and single-host deployments: whoever holds the file can
/// unwrap every key, so it gives none of KMS's separation of duties.
pub struct LocalKek {
    key: LessSafeKey,
    id: String,
}

impl LocalKek {
    /// Creates a new master key and its file contents.
    pub fn generate() -> (Self, Zeroizing<String>) {
        let k = random_key();
        let file = Zeroizing::new(format!("{LOCAL_KEY_FILE_HEADER}\n{}\n", hex::encode(k.as_ref())));
        (Self::from_secret(&k), file)
    }

    /// Parses the contents of a master-key file.
    pub fn from_file_contents(contents: &str) -> Result<Self, FormatError> {
        let invalid = || FormatError::Invalid {
            what: "local master key file",
            reason: format!("expected `{LOCAL_KEY_FILE_HEADER}` and a line of 64 hex digits"),
        };
        let mut lines = contents.lines();
        if lines.next() != Some(LOCAL_KEY_FILE_HEADER) {
            return Err(invalid());
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        let line = lines.next().ok_or_else(invalid)?.trim();
        hex::decode_to_slice(line, k.as_mut()).map_err(|_| invalid())?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(invalid());
        }
        Ok(Self::from_secret(&k))
    }

    fn from_secret(k: &[u8; KEY_LEN]) -> Self {
        let fp = blake3::derive_key("coffer local kek id v1", k);
        Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte key")),
            id: format!("local:{}", hex::encode(&fp[..8])),
        }
    }

    /// `local:` and a fingerprint of the master key (not the key itself).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(&self, ctx: &EncryptionContext) -> Vec<u8> {
        let mut aad = LOCAL_AAD_PREFIX.to_vec();
        aad.extend_from_slice(self.id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&ctx.canonical_bytes());
        aad
    }

    /// A fresh data key and its wrapped form.
    pub fn generate_data_key(&self, ctx: &EncryptionContext) -> (DataKey, Vec<u8>) {
        let key = random_key();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG failed");
        let mut out = Vec::with_capacity(LOCAL_WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key.as_ref());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(ctx)),
                &mut out[NONCE_LEN..],
            )
            .expect("sealing 32 bytes cannot fail");
        out.extend_from_slice(tag.as_ref());
        (DataKey::from_secret(key), out)
    }

    /// Unwraps a key; fails (opaquely) for a wrong master key, a wrong
    /// context or any altered byte.
    pub fn decrypt(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Result<DataKey, IntegrityError> {
        if wrapped.len() != LOCAL_WRAPPED_LEN {
            return Err(IntegrityError);
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN]).map_err(|_| IntegrityError)?;
        let mut buf = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
        let plain = self.key.open_in_place(nonce, Aad::from(self.aad(ctx)), &mut buf).map_err(|_| IntegrityError)?;
        let key = DataKey::from_slice(plain).map_err(|_| IntegrityError);
        buf.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn repo() -> RepoName {
        "dev/db".parse().unwrap()
    }

    #[test]
    fn a_chunk_id_hashed_in_parts_is_the_id_of_the_whole() {
        let key = IdKey::random();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cuts in [&[][..], &[0, 5000][..], &[1, 1024, 1025, 4999][..]] {
            let mut h = key.chunk_hasher();
            let mut at = 0;
            for &cut in cuts.iter().chain([&5000]) {
                h.update(&data[at..cut]);
                at = cut;
            }
            assert_eq!(h.finish(), key.chunk_id(&data), "cut at {cuts:?}");
        }
        assert_ne!(key.chunk_hasher().finish(), IdKey::random().chunk_hasher().finish(), "the key matters");
    }

    #[test]
    fn local_wrap_round_trip_and_context_binding() {
        let (kek, file) = LocalKek::generate();
        let again = LocalKek::from_file_contents(&file).unwrap();
        assert_eq!(kek.id(), again.id());
        let kid = KeyId::random();
        let ctx = EncryptionContext::new(&repo(), Purpose::Data, kid);
        let (dek, wrapped) = kek.generate_data_key(&ctx);
        assert_eq!(wrapped.len(), LOCAL_WRAPPED_LEN);
        let back = again.decrypt(&wrapped, &ctx).unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());

        let other_repo = EncryptionContext::new(&"dev/other".parse().unwrap(), Purpose::Data, kid);
        assert!(kek.decrypt(&wrapped, &other_repo).is_err());
        let other_purpose = EncryptionContext::new(&repo(), Purpose::ChunkId, kid);
        assert!(kek.decrypt(&wrapped, &other_purpose).is_err());
        let (other_kek, _) = LocalKek::generate();
        assert!(other_kek.decrypt(&wrapped, &ctx).is_err());
        let mut flipped = wrapped.clone();
        flipped[20] ^= 1;
        assert!(kek.decrypt(&flipped, &ctx).is_err());
    }

    #[test]
    fn master_key_file_is_strict() {
        assert!(LocalKek::from_file_contents("").is_err());
        assert!(LocalKek::from_file_contents(&format!("{LOCAL_KEY_FILE_HEADER}\nabcd\n")).is_err());
        let (_, file) = LocalKek::generate();
        assert!(LocalKek::from_file_contents(&format!("{}junk\n", *file)).is_err());
    }

    #[test]
    fn key_record_refuses_mismatched_context_and_unknown_fields() {
        let kid = KeyId::random();
        let rec = KeyRecord {
            version: KEY_RECORD_VERSION,
            key_id: kid,
            purpose: Purpose::Data,
            kek: "local:00".into(),
            context: EncryptionContext::new(&repo(), Purpose::Data, kid),
            wrapped: vec![1, 2, 3],
        };
        assert_eq!(KeyRecord::decode(&rec.encode()).unwrap(), rec);
        let wrong = KeyRecord { key_id: KeyId::random(), ..rec.clone() };
        assert!(KeyRecord::decode(&wrong.encode()).is_err());
        let v2 = KeyRecord { version: 2, ..rec.clone() };
        assert!(matches!(KeyRecord::decode(&v2.encode()), Err(FormatError::Unsupported { .. })));
        let mut json: serde_json::Value = serde_json::from_slice(&rec.encode()).unwrap();
        json["extra"] = 1.into();
        assert!(KeyRecord::decode(json.to_string().as_bytes()).is_err());
        let mut trailing = rec.encode();
        trailing.extend_from_slice(b"{}");
        assert!(KeyRecord::decode(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn canonical_context_is_injective(a in "[a-z:]{0,8}", b in "[a-z:]{0,8}", c in "[a-z:]{0,8}", d in "[a-z:]{0,8}") {
            let x = EncryptionContext([(a.clone(), b.clone())].into_iter().collect());
            let y = EncryptionContext([(c.clone(), d.clone())].into_iter().collect());
            prop_assert_eq!(x.canonical_bytes() == y.canonical_bytes(), (a, b) == (c, d));
        }
    }
}
