//! Newtypes for every kind of name, so that a chunk id can never be passed
//! where a snapshot id is expected, and a repository name is validated once,
//! at the edge, before it can reach a store path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FormatError;

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        /// Parses exactly `2 * LEN` lowercase hex digits.
        impl FromStr for $name {
            type Err = FormatError;

            fn from_str(s: &str) -> Result<Self, FormatError> {
                let invalid = |reason: &str| FormatError::Invalid {
                    what: stringify!($name),
                    reason: reason.to_string(),
                };
                if s.len() != 2 * $len {
                    return Err(invalid(&format!("expected {} hex digits, got {}", 2 * $len, s.len())));
                }
                if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(invalid("expected lowercase hex digits"));
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| invalid("bad hex"))?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A chunk's id: the BLAKE3 hash of its plaintext keyed with the
    /// repository's chunk-id key, so ids reveal nothing without that key.
    ChunkId,
    32
);
hex_id!(
    /// A snapshot's id: 16 random bytes chosen by the agent.
    SnapshotId,
    16
);
hex_id!(
    /// A data key's id: 16 random bytes chosen by the agent; it names the
    /// wrapped key record and is carried in every envelope sealed with it.
    KeyId,
    16
);

hex_id!(
    /// An upload scope: whose uploads of a chunk id a dedup answer may
    /// count (SPEC §9 "Dedup scopes"). Derived from an identity's trust
    /// domain and name (and how many times its uploads were quarantined),
    /// so every proxy computes the same scope for the same caller.
    Scope,
    8
);

impl Scope {
    /// The owner of an upload with no scope recorded that the store wrote
    /// after scopes began: it counts for no one.
    pub const UNSCOPED: Scope = Scope([0xff; 8]);

    /// The scope of the identity `name` in trust domain `domain`, in its
    /// `generation` (0 until its uploads are first quarantined).
    pub fn of(domain: &str, name: &str, generation: u32) -> Self {
        let mut h = blake3::Hasher::new_derive_key("coffer 2026 upload scope v1");
        h.update(&(domain.len() as u64).to_le_bytes());
        h.update(domain.as_bytes());
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&generation.to_le_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        Self(out)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).expect("the system RNG failed");
    out
}

impl SnapshotId {
    pub fn random() -> Self {
        Self(random_bytes())
    }
}

impl KeyId {
    pub fn random() -> Self {
        Self(random_bytes())
    }
}

/// Longest repository name, in bytes.
pub const REPO_NAME_MAX: usize = 128;
/// Most `/`-separated segments in a repository name.
pub const REPO_SEGMENTS_MAX: usize = 4;
/// Segment names that would collide with the object layout under a repo.
pub const RESERVED_SEGMENTS: [&str; 8] = ["admin", "audit", "chunks", "config", "epochs", "index", "keys", "snapshots"];

/// A validated repository name: 1 to 4 `/`-separated segments, each
/// `[a-z0-9][a-z0-9._-]*`, at most 128 bytes, no reserved segment.
///
/// The grammar admits no `..`, no empty segment, no percent sign and no
/// non-ASCII byte, so a `RepoName` is always safe as a store path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, FormatError> {
        let invalid = |reason: String| FormatError::Invalid { what: "repository name", reason };
        if s.is_empty() || s.len() > REPO_NAME_MAX {
            return Err(invalid(format!("must be 1 to {REPO_NAME_MAX} bytes")));
        }
        let segments: Vec<&str> = s.split('/').collect();
        if segments.len() > REPO_SEGMENTS_MAX {
            return Err(invalid(format!("at most {REPO_SEGMENTS_MAX} segments")));
        }
        for seg in segments {
            let mut bytes = seg.bytes();
            let first_ok = matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'));
            let rest_ok = bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
            if !first_ok || !rest_ok {
                return Err(invalid("each segment must match [a-z0-9][a-z0-9._-]* (lowercase ASCII)".into()));
            }
            if RESERVED_SEGMENTS.contains(&seg) {
                return Err(invalid(format!("`{seg}` is reserved")));
            }
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

impl Serialize for RepoName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RepoName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_names() {
        for ok in ["dev/db", "a", "prod/eu-1/pg.main/x_y", "0"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "admin",
            "admin/lockdown",
            "audit/x",
            "",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "A",
            "a/B",
            "%2e%2e",
            "a/%2e",
            "a b",
            "a/b/c/d/e",
            "а", // Cyrillic a
            "-a",
            ".a",
            "a/chunks",
            "config",
            "a\0",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(129).parse::<RepoName>().is_err());
        assert!("a".repeat(128).parse::<RepoName>().is_ok());
    }

    #[test]
    fn ids_refuse_uppercase_and_wrong_length() {
        assert!("AB".repeat(16).parse::<SnapshotId>().is_err());
        assert!("ab".repeat(15).parse::<SnapshotId>().is_err());
        assert!("ab".repeat(16).parse::<SnapshotId>().is_ok());
        assert!("ab".repeat(16).parse::<ChunkId>().is_err());
    }

    proptest! {
        #[test]
        fn chunk_id_hex_round_trip(bytes in any::<[u8; 32]>()) {
            let id = ChunkId::from_bytes(bytes);
            prop_assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        }

        #[test]
        fn repo_name_parse_is_stable(s in "[a-z0-9][a-z0-9._-]{0,20}(/[a-z0-9][a-z0-9._-]{0,20}){0,3}") {
            if let Ok(name) = s.parse::<RepoName>() {
                prop_assert_eq!(name.as_str(), s.as_str());
                prop_assert_eq!(name.to_string().parse::<RepoName>().unwrap(), name);
            }
        }
    }
}
