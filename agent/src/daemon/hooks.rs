//! A job's hooks: commands run before a backup, after one that committed,
//! and after one that failed, with the job and its result in `COFFER_*`
//! environment variables, so a host can quiesce an application or send a
//! notification without a webhook server (docs/operations.md, "Hooks").
//!
//! A hook's output goes to the agent's stderr (the journal, under systemd),
//! never to its stdout, which may carry `--json`. Its stdin is empty. Each
//! hook runs in a process group of its own, and one still running at
//! `hooks.timeout_secs` is killed with everything it started.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::time::Duration;

use crate::backup::{describe_status, BackupReport};
use crate::config::JobConfig;

/// Which hook, as `COFFER_HOOK` and the config name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Before,
    After,
    OnFailure,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Before => "before",
            Hook::After => "after",
            Hook::OnFailure => "on_failure",
        }
    }

    fn argv(self, job: &JobConfig) -> &[String] {
        match self {
            Hook::Before => &job.hooks.before,
            Hook::After => &job.hooks.after,
            Hook::OnFailure => &job.hooks.on_failure,
        }
    }
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook `{hook}` ({program}) could not start: {source}")]
    Spawn { hook: &'static str, program: String, source: std::io::Error },
    #[error("hook `{hook}` ({program}) {status}")]
    Failed { hook: &'static str, program: String, status: String },
    #[error("hook `{hook}` ({program}) ran past hooks.timeout_secs ({secs} s) and was killed")]
    Timeout { hook: &'static str, program: String, secs: u64 },
}

/// What the hooks after a run are told of it.
pub enum Outcome<'a> {
    Committed(&'a BackupReport),
    /// The run failed; the error as `/health` shows it (arguments redacted).
    Failed(&'a str),
}

/// The `COFFER_*` variables of one hook run.
fn environment(job: &JobConfig, hook: Hook, outcome: Option<&Outcome>) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("COFFER_HOOK", hook.name().to_string()),
        ("COFFER_JOB", job.name.clone()),
        ("COFFER_REPO", job.repo.to_string()),
    ];
    match outcome {
        Some(Outcome::Committed(r)) => vars.extend([
            ("COFFER_RESULT", "ok".to_string()),
            ("COFFER_SNAPSHOT", r.id.to_string()),
            ("COFFER_BYTES_IN", r.bytes_in.to_string()),
            ("COFFER_BYTES_NEW", r.bytes_new.to_string()),
            ("COFFER_CHUNKS", r.chunks.to_string()),
            ("COFFER_CHUNKS_NEW", r.chunks_new.to_string()),
            ("COFFER_DURATION_SECS", format!("{:.3}", r.duration_secs)),
        ]),
        Some(Outcome::Failed(error)) => {
            vars.extend([("COFFER_RESULT", "failed".to_string()), ("COFFER_ERROR", printable(error))])
        }
        None => {}
    }
    vars
}

/// Longest `COFFER_ERROR`, in characters.
const ERROR_MAX: usize = 4096;

/// `error` as a hook may safely be given it: control characters (a NUL
/// would keep the hook from starting; a newline or an escape sequence would
/// reach whatever the hook logs to) as spaces, cut at [`ERROR_MAX`]. The
/// text may quote the proxy.
fn printable(error: &str) -> String {
    error.chars().take(ERROR_MAX).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Kills the process group `leader` started (the hook and everything it
/// started that stayed in the group).
fn kill_group(leader: Option<u32>) {
    let group = leader.and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// Runs `hook` of `job`, if it has one, and waits for it.
pub async fn run(job: &JobConfig, hook: Hook, outcome: Option<&Outcome<'_>>) -> Result<(), HookError> {
    let Some((program, args)) = hook.argv(job).split_first() else {
        return Ok(());
    };
    let (name, prog) = (hook.name(), program.clone());
    let spawn_error = |source| HookError::Spawn { hook: name, program: prog.clone(), source };
    let stdout = std::io::stderr().as_fd().try_clone_to_owned().map_err(spawn_error)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(environment(job, hook, outcome))
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let secs = job.hooks.timeout_secs;
    match tokio::time::timeout(Duration::from_secs(secs), child.wait()).await {
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            Err(HookError::Timeout { hook: name, program: prog, secs })
        }
        Ok(Err(source)) => Err(spawn_error(source)),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Failed { hook: name, program: prog, status: describe_status(status) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(hooks: &str) -> JobConfig {
        let text = format!(
            "name = \"db\"\nrepo = \"dev/db\"\nschedule = \"@daily\"\ncommand = [\"true\"]\n[hooks]\n{hooks}\ntimeout_secs = 2\n"
        );
        toml::from_str(&text).expect("a job")
    }

    #[tokio::test]
    async fn a_hook_sees_the_result_and_its_exit_status_counts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let j = job(&format!("on_failure = [\"sh\", \"-c\", \"env > {}; exit 3\"]", out.display()));
        let err = run(&j, Hook::OnFailure, Some(&Outcome::Failed("the proxy said no"))).await.unwrap_err();
        assert_eq!(err.to_string(), "hook `on_failure` (sh) exited with status 3");
        let env = std::fs::read_to_string(&out).unwrap();
        for line in ["COFFER_HOOK=on_failure", "COFFER_JOB=db", "COFFER_REPO=dev/db", "COFFER_RESULT=failed"] {
            assert!(env.lines().any(|l| l == line), "{line} in {env}");
        }
        assert!(env.contains("COFFER_ERROR=the proxy said no"), "{env}");
        assert_eq!(printable("a\nb\u{1b}[2Jc\0"), "a b [2Jc ");
        assert_eq!(printable(&"x".repeat(10_000)).len(), ERROR_MAX);
        assert!(!env.contains("COFFER_SNAPSHOT"), "{env}");
        // A job without that hook runs nothing.
        run(&j, Hook::Before, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_at_its_timeout_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        // The shell starts a sleep in the background and waits for it.
        let j = job(&format!("before = [\"sh\", \"-c\", \"sleep 30 & echo $! > {}; wait\"]", pid.display()));
        let err = run(&j, Hook::Before, None).await.unwrap_err();
        assert!(matches!(err, HookError::Timeout { secs: 2, .. }), "{err}");
        let sleeper = std::fs::read_to_string(&pid).unwrap().trim().to_string();
        // Gone, or a zombie waiting for init: not sleeping on. A signal
        // takes a moment to land on a busy machine.
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
            stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("gone").to_string()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !matches!(state().as_str(), "gone" | "Z") && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(state().as_str(), "gone" | "Z"), "the hook's child {sleeper} still runs: {}", state());
        let missing = job("after = [\"/nonexistent/notify\"]");
        let err = run(&missing, Hook::After, None).await.unwrap_err();
        assert!(err.to_string().starts_with("hook `after` (/nonexistent/notify) could not start"), "{err}");
    }
}
