//! The encrypted envelope that every chunk and snapshot root is stored in.
//!
//! ```text
//! envelope = header || ciphertext || tag[16]
//! header   = "CFR1" || kind u8 || alg u8 || comp u8 || reserved u8 (0)
//!            || key-id[16] || nonce[12]                       (36 bytes)
//! AAD      = header || u32 len(repo) || repo || object-id
//! ```
//!
//! The AAD binds the ciphertext to its repository and its object id, so a
//! chunk copied under another id or into another repository fails to open.

use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};

use crate::keys::DataKey;
use crate::wire::Reader;
use crate::{FormatError, IntegrityError, KeyId, RepoName};

pub const MAGIC: &[u8; 4] = b"CFR1";
pub const HEADER_LEN: usize = 4 + 4 + KeyId::LEN + NONCE_LEN;
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its (possibly compressed) plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The only algorithm: AES-256-GCM.
pub const ALG_AES_256_GCM: u8 = 1;

/// What an envelope holds; part of the AAD, so a root cannot pass as a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Chunk = 1,
    SnapshotRoot = 2,
}

/// How the plaintext was compressed before sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

/// A parsed, not yet authenticated, envelope header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub compression: Compression,
    pub key_id: KeyId,
    pub nonce: [u8; NONCE_LEN],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = self.kind as u8;
        h[5] = ALG_AES_256_GCM;
        h[6] = self.compression as u8;
        h[8..24].copy_from_slice(self.key_id.as_bytes());
        h[24..].copy_from_slice(&self.nonce);
        h
    }
}

/// Checks an envelope's structure without any key: magic, kind, algorithm,
/// compression, reserved byte and minimum length. The proxy runs this on
/// every upload; it cannot run more.
pub fn parse_header(envelope: &[u8]) -> Result<Header, FormatError> {
    let mut r = Reader::new(envelope);
    r.magic(MAGIC, "Coffer envelope (CFR1)")?;
    let kind = match r.u8()? {
        1 => Kind::Chunk,
        2 => Kind::SnapshotRoot,
        v => return Err(FormatError::Unsupported { what: "envelope kind", value: v.into() }),
    };
    let alg = r.u8()?;
    if alg != ALG_AES_256_GCM {
        return Err(FormatError::Unsupported { what: "envelope algorithm", value: alg.into() });
    }
    let compression = match r.u8()? {
        0 => Compression::None,
        1 => Compression::Zstd,
        v => return Err(FormatError::Unsupported { what: "envelope compression", value: v.into() }),
    };
    let reserved = r.u8()?;
    if reserved != 0 {
        return Err(FormatError::Unsupported { what: "envelope reserved byte", value: reserved.into() });
    }
    let key_id = KeyId::from_bytes(r.array()?);
    let nonce = r.array()?;
    r.take(TAG_LEN)?;
    Ok(Header { kind, compression, key_id, nonce })
}

fn aad(header: &[u8], repo: &RepoName, object_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 4 + repo.as_str().len() + object_id.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(repo.as_str().len() as u32).to_le_bytes());
    aad.extend_from_slice(repo.as_str().as_bytes());
    aad.extend_from_slice(object_id);
    aad
}

/// Seals `plaintext` (already compressed as `compression` says) with a fresh
/// random nonce. Random 96-bit nonces are safe for the at most
/// [`crate::keys::CHUNKS_PER_DATA_KEY`] envelopes one data key seals.
pub fn seal(
    kind: Kind,
    compression: Compression,
    key_id: KeyId,
    key: &DataKey,
    repo: &RepoName,
    object_id: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + OVERHEAD);
    buf.resize(HEADER_LEN, 0);
    buf.extend_from_slice(plaintext);
    seal_in_place(kind, compression, key_id, key, repo, object_id, buf)
}

/// Seals in place: `buf` holds [`HEADER_LEN`] bytes of room for the header
/// and then the plaintext (already compressed as `compression` says). The
/// header is written over the room, the plaintext encrypted where it lies
/// and the tag appended, so a buffer with [`TAG_LEN`] bytes to spare is
/// never copied. As [`seal`], with a fresh random nonce.
pub fn seal_in_place(
    kind: Kind,
    compression: Compression,
    key_id: KeyId,
    key: &DataKey,
    repo: &RepoName,
    object_id: &[u8],
    mut buf: Vec<u8>,
) -> Vec<u8> {
    assert!(buf.len() >= HEADER_LEN, "an envelope buffer starts with room for its header");
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("the system RNG failed");
    let header = Header { kind, compression, key_id, nonce }.encode();
    buf[..HEADER_LEN].copy_from_slice(&header);
    let tag = key
        .aead()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&header, repo, object_id)),
            &mut buf[HEADER_LEN..],
        )
        .expect("AES-GCM sealing of at most an 8 MiB chunk cannot fail");
    buf.extend_from_slice(tag.as_ref());
    buf
}

/// Opens an envelope, returning its header and (still compressed) plaintext.
/// The caller must have parsed the header to pick `key` by its key id.
pub fn open(
    envelope: &[u8],
    expect_kind: Kind,
    key: &DataKey,
    repo: &RepoName,
    object_id: &[u8],
) -> Result<(Header, Vec<u8>), IntegrityError> {
    let header = parse_header(envelope).map_err(|_| IntegrityError)?;
    if header.kind != expect_kind {
        return Err(IntegrityError);
    }
    let mut buf = envelope[HEADER_LEN..].to_vec();
    let len = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(header.nonce),
            Aad::from(aad(&envelope[..HEADER_LEN], repo, object_id)),
            &mut buf,
        )
        .map_err(|_| IntegrityError)?
        .len();
    buf.truncate(len);
    Ok((header, buf))
}
