//! Deterministic test and benchmark data: the same seed gives the same bytes
//! on every machine, so runs can be compared.

use std::io::Write as _;

/// Pseudo-random (incompressible) bytes: BLAKE3 in XOF mode.
pub fn random_bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Compressible, dump-like text: numbered rows with repeating words, as a
/// `pg_dump` of a plain table looks.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = seed;
    while out.len() < len {
        i += 1;
        writeln!(
            out,
            "{i}\tcustomer-{}\tactive\t{}\t2026-11-{:02}\tsome repeated payload text",
            i % 997,
            i * 31 % 10007,
            i % 28 + 1
        )
        .expect("vec write");
    }
    out.truncate(len);
    out
}

/// What a generated stream looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Incompressible, no repeats.
    Random,
    /// Dump-like text (compresses about 5:1 with zstd).
    Text,
    /// Alternating 4 MiB blocks of the two.
    Mixed,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Kind::Random),
            "text" => Ok(Kind::Text),
            "mixed" => Ok(Kind::Mixed),
            other => Err(format!("unknown data kind {other:?} (random, text or mixed)")),
        }
    }
}

/// Block size of generated streams: each block is made on its own, so a
/// stream of any length is written without holding it.
pub const BLOCK: usize = 4 << 20;

/// Block `i` of a generated stream of `kind`.
pub fn block(kind: Kind, i: u64) -> Vec<u8> {
    match kind {
        Kind::Random => random_bytes(&format!("block {i}"), BLOCK),
        // Row numbers continue across blocks, as in one long dump.
        Kind::Text => text_bytes(i * 60_000, BLOCK),
        Kind::Mixed if i % 2 == 0 => random_bytes(&format!("block {i}"), BLOCK),
        Kind::Mixed => text_bytes(i * 60_000, BLOCK),
    }
}

/// Writes `len` bytes of `kind` to `out`.
pub fn generate(kind: Kind, len: u64, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut left = len;
    let mut i = 0;
    while left > 0 {
        let b = block(kind, i);
        let n = left.min(b.len() as u64) as usize;
        out.write_all(&b[..n])?;
        left -= n as u64;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_streams_are_deterministic_and_of_the_asked_length() {
        for kind in [Kind::Random, Kind::Text, Kind::Mixed] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            generate(kind, BLOCK as u64 + 12_345, &mut a).unwrap();
            generate(kind, BLOCK as u64 + 12_345, &mut b).unwrap();
            assert_eq!(a.len(), BLOCK + 12_345);
            assert_eq!(a, b, "{kind:?}");
        }
        let mut mixed = Vec::new();
        generate(Kind::Mixed, 2 * BLOCK as u64, &mut mixed).unwrap();
        assert_eq!(mixed[..BLOCK], block(Kind::Random, 0)[..]);
        assert_eq!(mixed[BLOCK..], block(Kind::Text, 1)[..]);
        assert_ne!(block(Kind::Random, 0), block(Kind::Random, 1), "blocks must not repeat");
    }
}
