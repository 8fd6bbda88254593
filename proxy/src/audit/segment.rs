//! Sealed segments: the event lines of a stretch of the log, then one seal
//! line, `{"seal":{...},"signature":"<hex Ed25519>"}`. The signature covers
//! the seal header's JSON exactly as it appears in the line.
//!
//! Local file: `sealed/<first-seq, 20 digits>.seg` (`.seg.shipped` once in
//! the store); store object: `audit/<proxy-id>/<first-seq, 20 digits>`.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a seal vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealHeader {
    pub proxy: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// `prev` of the first event: the last hash of the segment before.
    pub first_prev: String,
    /// `hash` of the last event.
    pub last_hash: String,
    /// BLAKE3 of the event lines, newlines included.
    pub events_blake3: String,
    pub sealed_ms: u64,
    /// The Ed25519 public key that signed it, hex.
    pub public_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealLine {
    seal: SealHeader,
    signature: String,
}

/// The name of a segment starting at `first_seq`.
pub fn name(first_seq: u64) -> String {
    format!("{first_seq:020}")
}

/// Writes a sealed segment file atomically (temp file, fsync, rename,
/// folder fsync).
pub fn write_sealed(
    dir: &Path,
    header: &SealHeader,
    events: &str,
    key: &aws_lc_rs::signature::Ed25519KeyPair,
) -> std::io::Result<()> {
    let header_json = serde_json::to_string(header).expect("serialises");
    let signature = hex::encode(key.sign(header_json.as_bytes()).as_ref());
    let line = serde_json::to_string(&SealLine { seal: header.clone(), signature }).expect("serialises");
    let path = dir.join(format!("{}.seg", name(header.first_seq)));
    let tmp = dir.join(format!(".{}.tmp", name(header.first_seq)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(events.as_bytes())?;
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A segment split into its event lines and its seal.
pub struct Parsed<'a> {
    pub events: Vec<&'a str>,
    /// The event lines as they were, for the BLAKE3 check.
    pub events_text: &'a str,
    pub header: SealHeader,
    pub header_json: String,
    pub signature: Vec<u8>,
}

/// Splits a segment; `None` if its last line is not a seal (truncated), or
/// not byte for byte the seal the proxy writes: the signature covers the
/// header, not the line's spelling (spacing, key order, hex case), so only
/// the one canonical spelling is accepted and every byte stays covered.
pub fn parse(text: &str) -> Option<Parsed<'_>> {
    let body = text.strip_suffix('\n')?;
    let (events_text, seal_line) = match body.rfind('\n') {
        Some(i) => (&text[..=i], &body[i + 1..]),
        None => ("", body),
    };
    let seal: SealLine = serde_json::from_str(seal_line).ok()?;
    let signature = hex::decode(&seal.signature).ok()?;
    if serde_json::to_string(&seal).ok()? != seal_line || hex::encode(&signature) != seal.signature {
        return None;
    }
    let header_json = serde_json::to_string(&seal.seal).ok()?;
    Some(Parsed { events: events_text.lines().collect(), events_text, signature, header: seal.seal, header_json })
}

/// Whether `signature` over the header is valid for `public_key`.
pub fn signature_ok(p: &Parsed<'_>, public_key: &[u8]) -> bool {
    use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
    UnparsedPublicKey::new(&ED25519, public_key).verify(p.header_json.as_bytes(), &p.signature).is_ok()
}

/// Local segment files, in order: (file name, contents).
pub fn read_local(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e?;
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".seg") || n.ends_with(".seg.shipped") {
                    out.push((n, std::fs::read_to_string(e.path())?));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// The seal of the newest local segment, if any (reading only that one).
pub fn last_sealed(dir: &Path) -> std::io::Result<Option<SealHeader>> {
    let newest = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".seg") || n.ends_with(".seg.shipped"))
            .max(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(name) = newest else { return Ok(None) };
    let text = std::fs::read_to_string(dir.join(&name))?;
    parse(&text)
        .map(|p| Some(p.header))
        .ok_or_else(|| std::io::Error::other(format!("audit segment {name} has no seal")))
}
