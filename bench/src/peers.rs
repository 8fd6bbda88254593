//! restic and borg, run on the same data as Coffer, when installed. Each
//! uses its defaults with encryption on (restic always encrypts; borg
//! `repokey-blake2`), to a local repository in the work folder.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A peer tool found on `PATH`, with its repository.
pub struct Peer {
    pub name: &'static str,
    exe: PathBuf,
    repo: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
    /// The first backup's snapshot (restic id, borg archive name).
    first: Option<String>,
}

/// Looks `exe` up on `PATH`.
fn which(exe: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(exe)).find(|p| p.is_file())
}

impl Peer {
    /// restic and borg, each if installed; the names of the missing ones.
    pub fn find(work: &Path) -> (Vec<Peer>, Vec<&'static str>) {
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for (name, env_dir) in [("restic", "RESTIC_CACHE_DIR"), ("borg", "BORG_BASE_DIR")] {
            match which(name) {
                Some(exe) => found.push(Peer {
                    name,
                    exe,
                    repo: work.join(format!("{name}-repo")),
                    env: vec![(env_dir, work.join(format!("{name}-cache")))],
                    first: None,
                }),
                None => missing.push(name),
            }
        }
        (found, missing)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        // A benchmark's throwaway repository; the password is not a secret.
        cmd.env("RESTIC_PASSWORD", "coffer-bench").env("BORG_PASSPHRASE", "coffer-bench");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn init(&self) -> Result<(), String> {
        let mut cmd = self.command();
        match self.name {
            "restic" => cmd.arg("init").arg("--repo").arg(&self.repo).arg("--quiet"),
            _ => cmd.args(["init", "--encryption=repokey-blake2"]).arg(&self.repo),
        };
        crate::run::timed(&mut cmd, None, None).map(|_| ())
    }

    /// Backup number `n` (0 is the first) of the stream in `input`.
    pub fn backup(&mut self, input: &Path, n: usize) -> Result<crate::run::Timed, String> {
        let mut cmd = self.command();
        let archive = format!("{}::run{n}", self.repo.display());
        match self.name {
            "restic" => {
                cmd.arg("--repo").arg(&self.repo).args(["--quiet", "backup", "--stdin", "--stdin-filename", "stream"]);
                cmd.arg("--json")
            }
            _ => cmd.args(["create", &archive, "-"]),
        };
        let t = crate::run::timed(&mut cmd, Some(input), None)?;
        if n == 0 {
            self.first = Some(match self.name {
                "restic" => restic_snapshot(&t.stdout)?,
                _ => archive,
            });
        }
        Ok(t)
    }

    /// Restores the first backup to stdout, feeding `sink`.
    pub fn restore(&self, sink: &mut blake3::Hasher) -> Result<crate::run::Timed, String> {
        let first = self.first.as_deref().ok_or("no first backup to restore")?;
        let mut cmd = self.command();
        match self.name {
            "restic" => cmd.arg("--repo").arg(&self.repo).args(["--quiet", "dump", first, "stream"]),
            _ => cmd.args(["extract", "--stdout", first]),
        };
        crate::run::timed(&mut cmd, None, Some(sink))
    }
}

/// The snapshot id from `restic backup --json` (its summary line).
fn restic_snapshot(out: &[u8]) -> Result<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .and_then(|v| v["snapshot_id"].as_str().map(str::to_string))
        .ok_or_else(|| "restic printed no snapshot id".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restic_summary_names_the_snapshot() {
        let out = br#"{"message_type":"status","percent_done":1}
{"message_type":"summary","files_new":1,"snapshot_id":"e84448e5"}
"#;
        assert_eq!(restic_snapshot(out).unwrap(), "e84448e5");
        assert!(restic_snapshot(b"{\"message_type\":\"status\"}").is_err());
    }
}
