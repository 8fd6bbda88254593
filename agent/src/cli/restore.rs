//! `coffer restore`: the stream to stdout, or to a file that appears only
//! once every chunk and the whole stream checked out.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use coffer_agent::progress::Progress;
use coffer_agent::repo::OpenRepo;
use coffer_agent::restore;
use coffer_proto::SnapshotId;
use tokio::io::AsyncWriteExt as _;

use crate::Failure;

/// Where the stream goes, and how that is reported.
pub(crate) struct To {
    /// A file (else stdout).
    pub output: Option<PathBuf>,
    /// The file's mode once complete.
    pub mode: u32,
    pub json: bool,
}

/// `--mode`: an octal file mode of the permission bits only (no setuid,
/// setgid or sticky bit on a restored file).
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?}: expected an octal mode such as 0600 or 640"))?;
    if mode > 0o777 {
        return Err(format!("{s:?}: only the permission bits (at most 0777) may be set"));
    }
    Ok(mode)
}

pub(crate) async fn run(
    repo: Arc<OpenRepo>,
    snapshot: SnapshotId,
    to: To,
    in_flight: usize,
    progress: &mut Progress,
) -> Result<(), Failure> {
    progress.snapshot(&snapshot.to_string(), None);
    let Some(path) = to.output else {
        restore::restore(repo, snapshot, &mut tokio::io::stdout(), in_flight, progress).await?;
        progress.finish();
        return Ok(());
    };
    let t0 = std::time::Instant::now();
    let bytes = restore_to_file(repo, snapshot, &path, to.mode, in_flight, progress).await?;
    progress.finish();
    let seconds = t0.elapsed().as_secs_f64();
    let mode = format!("{:04o}", to.mode);
    if to.json {
        crate::print_json(&crate::cli::output::Restored { id: snapshot, file: path, bytes, mode, seconds })?;
    } else {
        eprintln!(
            "restored snapshot {snapshot} to {} ({bytes} bytes, mode {mode}, every chunk checked), {seconds:.1}s",
            path.display(),
        );
    }
    Ok(())
}

/// Writes into a temporary file beside `path` and renames it into place
/// only when the whole snapshot has been checked: no partial restores. The
/// temporary file has a random name and is created new (`O_EXCL`, so a
/// planted name or symlink is never followed) with mode 0600: a restore
/// may hold anything, so it is given `mode` (the caller's decision on who
/// else may read it) only once complete. Returns the bytes written.
async fn restore_to_file(
    repo: Arc<OpenRepo>,
    snapshot: SnapshotId,
    path: &Path,
    mode: u32,
    in_flight: usize,
    progress: &mut Progress,
) -> Result<u64, Failure> {
    let name = path.file_name().context("the output path has no file name")?.to_string_lossy().into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".coffer-partial")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut f = tokio::fs::File::from_std(file);
    let written = async {
        let verified = restore::restore(repo, snapshot, &mut f, in_flight, progress).await?;
        f.sync_all().await?;
        f.shutdown().await?;
        // Not subject to the umask, unlike the mode a file is created with.
        f.set_permissions(std::fs::Permissions::from_mode(mode)).await?;
        anyhow::Ok(verified.bytes)
    }
    .await;
    drop(f);
    // On failure the temporary path is dropped, which removes the file.
    let bytes = written?;
    tmp_path.persist(path).map_err(|e| anyhow::anyhow!("renaming into {}: {}", path.display(), e.error))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(super::parse_mode("0640"), Ok(0o640));
        assert_eq!(super::parse_mode("600"), Ok(0o600));
        assert!(super::parse_mode("4755").unwrap_err().contains("at most 0777"));
        assert!(super::parse_mode("rw-r").unwrap_err().contains("octal"));
        assert!(super::parse_mode("0689").is_err());
    }
}
