//! Running a source command: its stdout is the stream, and it must exit 0.
//! Used by backups (`backup -- CMD`, daemon jobs) and by `coffer send`.
//! Running commands are registered, so an interrupted agent or a stopping
//! daemon can kill them rather than leave them without a reader.

use std::io;
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;

/// Why a source command did not deliver its whole stream.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("waiting for `{command}`: {source}")]
    Wait { command: String, source: io::Error },
    /// Reading its output failed (the command is killed).
    #[error("{0}")]
    Read(io::Error),
    #[error("`{command}` {status}")]
    Failed { command: String, status: String },
}

/// Runs `argv` with its stdout handed to `read`, then waits for it. If
/// `read` fails, the command is killed; a command that does not exit 0 is
/// an error even if its output was read whole.
pub fn run_command<T>(argv: &[String], read: impl FnOnce(ChildStdout) -> io::Result<T>) -> Result<T, CommandError> {
    let command = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn { command: command.clone(), source })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let pid = child.id();
    let child = Arc::new(std::sync::Mutex::new(child));
    RUNNING.lock().expect("not poisoned").push((pid, command.clone(), child.clone()));
    let output = read(stdout);
    let mut child = child.lock().expect("not poisoned");
    if output.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    RUNNING.lock().expect("not poisoned").retain(|(p, _, _)| *p != pid);
    let status = status.map_err(|source| CommandError::Wait { command: command.clone(), source })?;
    let output = output.map_err(CommandError::Read)?;
    if !status.success() {
        return Err(CommandError::Failed { command, status: describe_status(status) });
    }
    Ok(output)
}

type SharedChild = Arc<std::sync::Mutex<std::process::Child>>;

/// The running source commands (by pid, with their command line), so an
/// interrupted agent or a stopping daemon can stop them rather than leave
/// them without a reader.
static RUNNING: std::sync::Mutex<Vec<(u32, String, SharedChild)>> = std::sync::Mutex::new(Vec::new());

/// Kills every running source command (on SIGINT, or when a stopping
/// daemon abandons its backups).
pub fn kill_sources() {
    for (_, _, child) in RUNNING.lock().expect("not poisoned").drain(..) {
        if let Ok(mut c) = child.try_lock() {
            let _ = c.kill();
        }
    }
}

/// Kills the running source commands whose command line is `argv` (a
/// daemon job stopped after its max_run_secs); the thread reading one then
/// sees its end and finishes.
pub fn kill_source_command(argv: &[String]) {
    let command = argv.join(" ");
    for (_, c, child) in RUNNING.lock().expect("not poisoned").iter() {
        if *c == command {
            if let Ok(mut c) = child.try_lock() {
                let _ = c.kill();
            }
        }
    }
}

/// "exited with status N" or "was killed by signal N".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(sig) = status.signal() {
        return format!("was killed by signal {sig}");
    }
    format!("exited with status {}", status.code().map_or("unknown".into(), |c| c.to_string()))
}
