//! What this host remembers of each repository: the newest snapshot it
//! committed and the newest it saw listed. A later listing that lacks one
//! of them while it is still locked has gone backwards: its root was
//! deleted (raw access to the bucket) or an older copy of the repository
//! was put back. Object Lock keeps the objects, but nothing else would
//! notice that the listing no longer shows them (SPEC §12).
//!
//! One small JSON file per proxy and repository under the agent's state
//! folder (`state_dir`), written whole and renamed into place.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use coffer_proto::api::SnapshotInfo;
use coffer_proto::{RepoName, SnapshotId};
use serde::{Deserialize, Serialize};

/// A remembered snapshot is expected in listings until this long before
/// its lock ends (clocks disagree; past its lock, expiry may delete it).
pub const MARGIN_SECS: u64 = 3600;

/// The state folder when the config names none: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/coffer`, else
/// `~/.local/state/coffer`; none when none of those is set.
pub fn default_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    // systemd may list several folders, separated by colons: the first.
    if let Some(dirs) = var("STATE_DIRECTORY") {
        let first = dirs.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return Some(PathBuf::from(first));
    }
    var("XDG_STATE_HOME").map(|d| d.join("coffer")).or_else(|| var("HOME").map(|h| h.join(".local/state/coffer")))
}

/// Checks a listing against `memory` (none: nothing is remembered) at
/// the current time: the problems found. A memory that cannot be read or
/// written is a warning, not a failed listing.
pub fn check_listing(memory: Option<&Memory>, listing: &[SnapshotInfo]) -> Vec<String> {
    let Some(memory) = memory else { return Vec::new() };
    memory.check(listing, crate::unix_now()).unwrap_or_else(|e| {
        tracing::warn!(repo = %memory.repo, "the snapshot memory is not kept: {e}");
        Vec::new()
    })
}

/// A snapshot as remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub id: SnapshotId,
    pub committed: u64,
    pub retain_until: u64,
}

impl From<&SnapshotInfo> for Seen {
    fn from(s: &SnapshotInfo) -> Self {
        Self { id: s.id, committed: s.committed, retain_until: s.retain_until }
    }
}

/// How many snapshots are remembered of each kind: the newest this host
/// committed, and the newest it saw listed (so that deleting a few of the
/// newest roots, or snapshots committed in the same second, are all seen).
pub const KEPT: usize = 8;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Remembered {
    repo: String,
    /// The newest snapshots this host committed, newest first.
    committed: Vec<Seen>,
    /// The newest snapshots this host saw listed, newest first.
    listed: Vec<Seen>,
}

/// Why the memory could not be read or written. Never fails a backup: the
/// snapshot is committed whatever the memory says.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a snapshot memory file ({message}); remove it to start again")]
    Invalid { path: PathBuf, message: String },
}

/// This host's memory of one repository behind one proxy.
#[derive(Clone, Debug)]
pub struct Memory {
    path: PathBuf,
    repo: RepoName,
}

impl Memory {
    /// The memory of `repo` behind `proxy` (its URL) under `dir`.
    pub fn at(dir: &Path, proxy: &str, repo: &RepoName) -> Self {
        // Two proxies (two buckets) may each have a repository of a name.
        let proxy = blake3::hash(proxy.as_bytes()).to_hex();
        let path = dir.join("snapshots").join(&proxy[..16]).join(format!("{repo}.json"));
        Self { path, repo: repo.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> MemoryError + '_ {
        |source| MemoryError::Io { path: self.path.clone(), source }
    }

    /// Runs `f` on the remembered state, under an exclusive lock (the
    /// daemon's jobs, a timer and a command line may share the file), and
    /// writes what it leaves whole: a fresh temporary file, never through a
    /// link, renamed into place.
    fn update<T>(&self, f: impl FnOnce(&mut Remembered) -> T) -> Result<T, MemoryError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.path.parent().expect("a file in a folder");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(self.io())?;
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(self.path.with_extension("lock"))
            .map_err(self.io())?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| self.io()(e.into()))?;
        let mut r = self.load()?;
        let out = f(&mut r);
        let tmp = self.path.with_extension(format!("tmp.{}.{}", std::process::id(), SnapshotId::random()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(&tmp)
            .map_err(self.io())?;
        let written = std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(&r).expect("serialises"))
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(self.io())?;
        Ok(out)
    }

    fn load(&self) -> Result<Remembered, MemoryError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let r: Remembered = serde_json::from_slice(&bytes)
                    .map_err(|e| MemoryError::Invalid { path: self.path.clone(), message: e.to_string() })?;
                if r.repo != self.repo.as_str() {
                    let message = format!("it is {}'s", r.repo);
                    return Err(MemoryError::Invalid { path: self.path.clone(), message });
                }
                Ok(r)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Remembered { repo: self.repo.to_string(), ..Remembered::default() })
            }
            Err(source) => Err(MemoryError::Io { path: self.path.clone(), source }),
        }
    }

    /// Remembers a snapshot this host committed.
    pub fn committed(&self, info: &SnapshotInfo) -> Result<(), MemoryError> {
        let seen = Seen::from(info);
        self.update(|r| {
            // This host's own commits, in the order it made them.
            r.committed.retain(|s| s.id != seen.id);
            r.committed.insert(0, seen);
            r.committed.truncate(KEPT);
            keep_newest(&mut r.listed, [seen], u64::MAX);
        })
    }

    /// Checks a listing of the repository against what this host
    /// remembers, then remembers its newest snapshots. Each problem names a
    /// remembered snapshot, still locked at `now`, that the listing lacks.
    pub fn check(&self, listing: &[SnapshotInfo], now: u64) -> Result<Vec<String>, MemoryError> {
        self.update(|r| {
            let mut problems = Vec::new();
            let mut named = Vec::new();
            let remembered =
                r.committed.iter().map(|s| ("committed", s)).chain(r.listed.iter().map(|s| ("saw listed", s)));
            for (what, seen) in remembered {
                let expected = seen.retain_until > now.saturating_add(MARGIN_SECS);
                if expected && !named.contains(&seen.id) && !listing.iter().any(|s| s.id == seen.id) {
                    named.push(seen.id);
                    problems.push(format!(
                        "integrity error: snapshot {} of {}, which this host {what} (committed at {}, locked until \
                         {}), is missing from the listing: its root was deleted or an older copy of the repository \
                         was put back (docs/incident-runbook.md); if the repository was deliberately made anew, \
                         remove {}",
                        seen.id,
                        self.repo,
                        rfc3339(seen.committed),
                        rfc3339(seen.retain_until),
                        self.path.display()
                    ));
                }
            }
            // What went missing stays remembered (a listing that went
            // backwards never lowers the mark); a snapshot dated ahead of
            // this host's clock is no mark at all.
            keep_newest(&mut r.listed, listing.iter().map(Seen::from), now.saturating_add(MARGIN_SECS));
            problems
        })
    }
}

/// Merges `new` into `kept`, keeping the [`KEPT`] newest by commit time
/// (none dated after `latest`), newest first.
fn keep_newest(kept: &mut Vec<Seen>, new: impl IntoIterator<Item = Seen>, latest: u64) {
    for seen in new {
        if seen.committed <= latest && !kept.iter().any(|k| k.id == seen.id) {
            kept.push(seen);
        }
    }
    kept.sort_by(|a, b| b.committed.cmp(&a.committed).then(b.id.cmp(&a.id)));
    kept.truncate(KEPT);
}

/// Unix seconds as RFC 3339, for people. A time from the proxy (a listing)
/// past year 9999 shows as its last second: humantime refuses to format
/// it, and `format!` would panic.
pub fn rfc3339(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use coffer_proto::snapshot::SnapshotStats;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn info(n: u8, committed: u64, retain_until: u64) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId::from_bytes([n; 16]),
            committed,
            retain_until,
            stats: SnapshotStats::default(),
            root: None,
        }
    }

    #[test]
    fn a_listing_that_lost_a_locked_snapshot_is_named_and_one_past_its_lock_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let repo: RepoName = "dev/db".parse().unwrap();
        let m = Memory::at(dir.path(), "https://proxy:8443", &repo);
        let (old, mine, others) =
            (info(1, NOW - 100, NOW + 86_400), info(2, NOW - 50, NOW + 86_400), info(3, NOW - 10, NOW + 86_400));
        m.committed(&mine).unwrap();
        assert!(m.check(&[old.clone(), mine.clone(), others.clone()], NOW).unwrap().is_empty());
        // Rolled back to before this host's newest: both are named once each.
        let problems = m.check(std::slice::from_ref(&old), NOW).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains(&mine.id.to_string()) && problems[0].contains("this host committed"));
        assert!(problems[1].contains(&others.id.to_string()) && problems[1].contains("saw listed"));
        assert!(problems[0].contains(&m.path().display().to_string()), "says how to start again");
        // ... and the rolled-back listing did not lower the mark.
        assert_eq!(m.check(std::slice::from_ref(&old), NOW).unwrap().len(), 2);
        // Past their locks (less the margin), they may have been expired.
        assert!(m.check(&[], NOW + 86_400 - MARGIN_SECS).unwrap().is_empty());
        // Another repository's memory is another file.
        let other = Memory::at(dir.path(), "https://proxy:8443", &"dev/other".parse().unwrap());
        assert!(other.check(&[], NOW).unwrap().is_empty());
        let elsewhere = Memory::at(dir.path(), "https://other-proxy:8443", &repo);
        assert!(elsewhere.check(&[], NOW).unwrap().is_empty(), "another proxy's repository of that name");
    }

    #[test]
    fn several_newest_are_kept_those_of_one_second_alike_and_none_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::at(dir.path(), "p", &"dev/db".parse().unwrap());
        // Two commits in the same second, and one dated a day ahead (a
        // forged index header): both real ones are expected.
        let (a, b) = (info(1, NOW, NOW + 86_400), info(2, NOW, NOW + 86_400));
        let forged = info(9, NOW + 86_400, 0);
        assert!(m.check(&[a.clone(), b.clone(), forged], NOW).unwrap().is_empty());
        assert_eq!(m.check(std::slice::from_ref(&b), NOW).unwrap().len(), 1, "a is missed");
        assert_eq!(m.check(std::slice::from_ref(&a), NOW).unwrap().len(), 1, "b is missed");
        // Deleting a few of the newest is seen, up to KEPT of them.
        let many: Vec<SnapshotInfo> =
            (10..10 + KEPT as u8).map(|n| info(n, NOW + u64::from(n), NOW + 86_400)).collect();
        let all: Vec<SnapshotInfo> = many.iter().cloned().chain([a, b]).collect();
        assert!(m.check(&all, NOW + 100).unwrap().is_empty());
        assert_eq!(m.check(&many[..2], NOW + 100).unwrap().len(), KEPT - 2);
    }

    #[test]
    fn a_date_no_calendar_holds_is_shown_not_a_panic() {
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_link_planted_in_the_state_folder_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memory::at(dir.path(), "p", &"dev/db".parse().unwrap());
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::create_dir_all(m.path().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, m.path().with_extension("lock")).unwrap();
        assert!(matches!(m.committed(&info(1, NOW, NOW + 86_400)), Err(MemoryError::Io { .. })));
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_damaged_or_misplaced_memory_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        let repo: RepoName = "dev/db".parse().unwrap();
        let m = Memory::at(dir.path(), "p", &repo);
        m.committed(&info(1, NOW, NOW + 86_400)).unwrap();
        // Another repository's file put in this one's place.
        let other = Memory::at(dir.path(), "p", &"dev/other".parse().unwrap());
        std::fs::copy(m.path(), other.path()).unwrap();
        let e = other.check(&[], NOW).unwrap_err().to_string();
        assert!(e.contains("dev/db's") && e.contains("remove it"), "{e}");
        // A damaged file is neither read as empty nor overwritten.
        std::fs::write(m.path(), b"{").unwrap();
        assert!(matches!(m.check(&[], NOW), Err(MemoryError::Invalid { .. })));
        assert!(matches!(m.committed(&info(2, NOW, NOW + 86_400)), Err(MemoryError::Invalid { .. })));
        assert_eq!(std::fs::read(m.path()).unwrap(), b"{");
    }
}
