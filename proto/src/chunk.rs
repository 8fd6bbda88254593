//! The per-chunk transform: compress (when it pays) and seal; open,
//! decompress and check the keyed hash against the chunk's id.

use crate::envelope::{self, Compression, Kind};
use crate::keys::{DataKey, IdKey};
use crate::{ChunkId, IntegrityError, KeyId, RepoName, CHUNK_MAX};

/// Compressed output must save at least 1/32 of the input, or the chunk is
/// stored uncompressed: decompressing costs time on every restore.
const MIN_SAVING_DIVISOR: usize = 32;

/// Compresses (zstd at `level`, skipped when it does not pay) and seals a
/// chunk whose id the caller computed with [`IdKey::chunk_id`].
pub fn seal(plaintext: &[u8], key: &DataKey, key_id: KeyId, repo: &RepoName, id: &ChunkId, level: i32) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plaintext, level).ok();
    let (comp, body) = match &compressed {
        Some(c) if c.len() + plaintext.len() / MIN_SAVING_DIVISOR < plaintext.len() => {
            (Compression::Zstd, c.as_slice())
        }
        _ => (Compression::None, plaintext),
    };
    envelope::seal(Kind::Chunk, comp, key_id, key, repo, id.as_bytes(), body)
}

/// Opens a chunk envelope and proves it is the chunk named `id`: the AEAD
/// binds it to repo and id, and the keyed hash of the plaintext must equal
/// `id`. Any failure is the same opaque [`IntegrityError`].
pub fn open(
    sealed: &[u8],
    key: &DataKey,
    repo: &RepoName,
    id: &ChunkId,
    id_key: &IdKey,
) -> Result<Vec<u8>, IntegrityError> {
    let (header, body) = envelope::open(sealed, Kind::Chunk, key, repo, id.as_bytes())?;
    let plain = match header.compression {
        Compression::None => body,
        Compression::Zstd => zstd::bulk::decompress(&body, CHUNK_MAX as usize).map_err(|_| IntegrityError)?,
    };
    if id_key.chunk_id(&plain) != *id {
        return Err(IntegrityError);
    }
    Ok(plain)
}
