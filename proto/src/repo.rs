//! The repository `config` object: written once by `coffer init`, read by
//! every backup and restore. Plaintext JSON; the only secret in it, the
//! chunk-id key, is wrapped.

use serde::{Deserialize, Serialize};

use crate::keys::{KeyRecord, Purpose};
use crate::wire::json_decode;
use crate::{FormatError, RepoName, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};

/// Current repository format version.
pub const CONFIG_VERSION: u32 = 1;
/// zstd level used unless the config says otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// A chunk-id key epoch after the first (which lives in the config), made by
/// `coffer key rotate`: stored at `<repo>/epochs/<key-id>`. New backups use
/// the newest epoch; dedup starts over in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Epoch {
    pub version: u32,
    /// Unix milliseconds; epochs are ordered by it.
    pub created: u64,
    /// The wrapped chunk-id key (purpose `chunk-id`).
    pub key: KeyRecord,
}

impl Epoch {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("epochs always serialise")
    }

    /// Decodes and checks the key is a chunk-id key bound to `repo`.
    pub fn decode(bytes: &[u8], repo: &RepoName) -> Result<Self, FormatError> {
        let e: Epoch = json_decode(bytes, "key epoch")?;
        if e.version != CONFIG_VERSION {
            return Err(FormatError::Unsupported { what: "key epoch version", value: e.version.into() });
        }
        let k = &e.key;
        if k.purpose != Purpose::ChunkId || !k.context.matches(repo, Purpose::ChunkId, k.key_id) {
            return Err(FormatError::Invalid {
                what: "key epoch",
                reason: "not a chunk-id key bound to this repository".into(),
            });
        }
        Ok(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self { min_size: CHUNK_MIN, avg_size: CHUNK_AVG, max_size: CHUNK_MAX }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub version: u32,
    pub repo: RepoName,
    pub chunker: ChunkerParams,
    /// zstd compression level for chunks (1 to 19).
    pub zstd_level: i32,
    /// The wrapped chunk-id key.
    pub id_key: KeyRecord,
    /// Unix seconds.
    pub created: u64,
    /// Hex MAC of the parameters above under the chunk-id key
    /// ([`RepoConfig::canonical`]); present in every config made since
    /// configs were authenticated, and marks the repository's chunker as
    /// keyed. A config without it is a legacy one (public cut points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Below these, a legacy (unauthenticated) config's chunker sizes are
/// refused: tiny chunks would let anyone who can guess the plaintext
/// confirm it from envelope sizes.
pub const LEGACY_CHUNK_MIN_FLOOR: u32 = 64 * 1024;
pub const LEGACY_CHUNK_AVG_FLOOR: u32 = 256 * 1024;

impl RepoConfig {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("configs always serialise")
    }

    /// Decodes and validates: version, chunker bounds (no chunk may exceed
    /// [`CHUNK_MAX`], the largest envelope the proxy accepts), and that the
    /// wrapped id key is bound to this repository.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let cfg: RepoConfig = json_decode(bytes, "repository config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The bytes the MAC covers: every parameter that changes what the
    /// agent does with the data.
    pub fn canonical(&self) -> Vec<u8> {
        let c = self.chunker;
        format!(
            "coffer repository config v{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.version, self.repo, c.min_size, c.avg_size, c.max_size, self.zstd_level, self.id_key.key_id
        )
        .into_bytes()
    }

    /// Sets the MAC under `idk`, the config's own chunk-id key.
    pub fn authenticate(&mut self, idk: &crate::keys::IdKey) {
        self.mac = Some(hex::encode(idk.config_mac(&self.canonical())));
    }

    /// Checks the MAC under `idk`: `Ok(true)` for an authenticated config,
    /// `Ok(false)` for a legacy one without a MAC, an error when the MAC is
    /// there and wrong (the parameters were changed).
    pub fn check_mac(&self, idk: &crate::keys::IdKey) -> Result<bool, FormatError> {
        let Some(mac) = &self.mac else { return Ok(false) };
        let expected = idk.config_mac(&self.canonical());
        let given = hex::decode(mac).ok().filter(|m| m.len() == 32);
        // Constant time: the comparison is of a secret-keyed value.
        match given {
            Some(m) if aws_lc_rs::constant_time::verify_slices_are_equal(&m, &expected).is_ok() => Ok(true),
            _ => Err(FormatError::Invalid {
                what: "repository config",
                reason: "its parameters do not match their MAC: they were changed after the repository was \
                         created (by the proxy, or in the bucket)"
                    .into(),
            }),
        }
    }

    /// A legacy config's chunker sizes must be at least the floors.
    pub fn check_legacy_floors(&self) -> Result<(), FormatError> {
        let c = self.chunker;
        if c.min_size < LEGACY_CHUNK_MIN_FLOOR || c.avg_size < LEGACY_CHUNK_AVG_FLOOR {
            return Err(FormatError::Invalid {
                what: "repository config",
                reason: format!(
                    "an unauthenticated config with chunks this small ({}/{} bytes min/avg, floors {}/{}) is refused",
                    c.min_size, c.avg_size, LEGACY_CHUNK_MIN_FLOOR, LEGACY_CHUNK_AVG_FLOOR
                ),
            });
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), FormatError> {
        let invalid = |reason: &str| FormatError::Invalid { what: "repository config", reason: reason.into() };
        if self.version != CONFIG_VERSION {
            return Err(FormatError::Unsupported { what: "repository config version", value: self.version.into() });
        }
        let c = self.chunker;
        // The bounds FastCDC accepts (it asserts them), capped by CHUNK_MAX.
        let ok = (64..=1 << 20).contains(&c.min_size)
            && (256..=4 << 20).contains(&c.avg_size)
            && (1024..=CHUNK_MAX).contains(&c.max_size)
            && c.min_size <= c.avg_size
            && c.avg_size <= c.max_size;
        if !ok {
            return Err(invalid(
                "chunker sizes must satisfy min <= avg <= max, 64 <= min <= 1 MiB, 256 <= avg <= 4 MiB, 1 KiB <= max <= 8 MiB",
            ));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(invalid("zstd_level must be 1 to 19"));
        }
        if self.id_key.purpose != Purpose::ChunkId
            || !self.id_key.context.matches(&self.repo, Purpose::ChunkId, self.id_key.key_id)
        {
            return Err(invalid("id_key is not a chunk-id key bound to this repository"));
        }
        Ok(())
    }
}
