//! The local master-key file (`keys.provider = "local"`).

use std::path::{Path, PathBuf};

use coffer_proto::keys::LocalKek;

/// Why the local master key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("master key {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("master key {} must not be readable by group or others (chmod 600)", path.display())]
    Exposed { path: PathBuf },
    #[error("master key {}: {source}", path.display())]
    Invalid { path: PathBuf, source: coffer_proto::FormatError },
}

/// Reads a local master-key file, refusing one readable by group or others.
pub fn read_master_key(path: &Path) -> Result<LocalKek, MasterKeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read = |source| MasterKeyError::Read { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(MasterKeyError::Exposed { path: path.into() });
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read)?);
    LocalKek::from_file_contents(&text).map_err(|source| MasterKeyError::Invalid { path: path.into(), source })
}
