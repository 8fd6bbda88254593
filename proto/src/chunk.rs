//! The per-chunk transform: compress (when it pays) and seal; open,
//! decompress and check the keyed hash against the chunk's id.

use std::cell::RefCell;
use std::io;

use zstd::stream::raw::{Encoder, InBuffer, Operation as _, OutBuffer};

use crate::envelope::{self, Compression, Kind};
use crate::keys::{DataKey, IdKey};
use crate::{ChunkId, IntegrityError, KeyId, RepoName, CHUNK_MAX};

/// Compressed output must save at least 1/32 of the input, or the chunk is
/// stored uncompressed: decompressing costs time on every restore.
const MIN_SAVING_DIVISOR: usize = 32;

/// Compresses (zstd at `level`, skipped when it does not pay) and seals a
/// chunk whose id the caller computed with [`IdKey::chunk_id`].
pub fn seal(plaintext: &[u8], key: &DataKey, key_id: KeyId, repo: &RepoName, id: &ChunkId, level: i32) -> Vec<u8> {
    seal_parts(&[plaintext], key, key_id, repo, id, level)
}

/// As [`seal`], for a chunk given as the parts it was read in, in order. The
/// parts are compressed as one zstd frame straight into the envelope's
/// buffer, which is then encrypted in place: the chunk is never gathered
/// into one buffer, and the envelope is the only allocation its size.
pub fn seal_parts(
    parts: &[impl AsRef<[u8]>],
    key: &DataKey,
    key_id: KeyId,
    repo: &RepoName,
    id: &ChunkId,
    level: i32,
) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let mut buf = Vec::with_capacity(envelope::HEADER_LEN + zstd::zstd_safe::compress_bound(len) + envelope::TAG_LEN);
    buf.resize(envelope::HEADER_LEN, 0);
    let pays = compress_into(parts, len, level, &mut buf).is_ok()
        && buf.len() - envelope::HEADER_LEN + len / MIN_SAVING_DIVISOR < len;
    let comp = if pays {
        Compression::Zstd
    } else {
        buf.truncate(envelope::HEADER_LEN);
        for part in parts {
            buf.extend_from_slice(part.as_ref());
        }
        Compression::None
    };
    envelope::seal_in_place(Kind::Chunk, comp, key_id, key, repo, id.as_bytes(), buf)
}

thread_local! {
    /// Each sealing thread keeps its zstd context between chunks, rather
    /// than allocating and clearing its tables and window for every chunk.
    static ENCODER: RefCell<Option<(i32, Encoder<'static>)>> = const { RefCell::new(None) };
}

/// Appends one zstd frame of `parts` (`len` bytes in all) to `out`, which
/// has the capacity for it ([`zstd::zstd_safe::compress_bound`]).
fn compress_into(parts: &[impl AsRef<[u8]>], len: usize, level: i32, out: &mut Vec<u8>) -> io::Result<()> {
    ENCODER.with_borrow_mut(|slot| {
        let encoder = match slot {
            Some((l, e)) if *l == level => e,
            _ => &mut slot.insert((level, Encoder::new(level)?)).1,
        };
        // A fresh frame, whatever an earlier failure left behind.
        encoder.reinit()?;
        encoder.set_pledged_src_size(Some(len as u64))?;
        let full = || io::Error::other("zstd output exceeds its bound");
        for part in parts {
            let mut input = InBuffer::around(part.as_ref());
            while input.pos() < input.src.len() {
                let mut output = OutBuffer::around_pos(out, out.len());
                encoder.run(&mut input, &mut output)?;
                if output.pos() == output.capacity() && input.pos() < input.src.len() {
                    return Err(full());
                }
            }
        }
        loop {
            let mut output = OutBuffer::around_pos(out, out.len());
            if encoder.finish(&mut output, true)? == 0 {
                return Ok(());
            }
            if output.pos() == output.capacity() {
                return Err(full());
            }
        }
    })
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
