use thiserror::Error;

/// A byte string that is not a well-formed Coffer object.
///
/// Raised before any cryptography runs; it names the structural problem so
/// that operators can tell a truncated upload from a version mismatch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    #[error("truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("bad magic: not a {expected} object")]
    BadMagic { expected: &'static str },
    #[error("unsupported {what} {value}")]
    Unsupported { what: &'static str, value: u64 },
    #[error("{0} trailing bytes after the object")]
    TrailingBytes(usize),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("too large: {what} of {len} bytes exceeds {max}")]
    TooLarge { what: &'static str, len: u64, max: u64 },
}

/// An object that is well-formed but fails authentication: wrong key, wrong
/// repository or id in the AAD, a flipped bit, a chunk swapped under another
/// id, or a keyed hash that does not match.
///
/// Deliberately opaque: which check failed is not reported.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("integrity check failed")]
pub struct IntegrityError;
