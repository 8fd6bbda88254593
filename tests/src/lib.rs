//! Harness for end-to-end tests: real `coffer-proxy dev` and `coffer`
//! processes talking mutual TLS on `127.0.0.1:0`.
//!
//! The binaries must be built first (`cargo build --bins`, which the
//! README's test command does); they are found beside the test executable.

mod devproxy;
mod moto;
mod relays;
mod webhook;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

pub use coffer_bench::data::{random_bytes, text_bytes};
pub use devproxy::DevProxy;
pub use moto::Moto;
pub use relays::{FaultRelay, TcpRelay};
pub use webhook::Webhook;

/// Path of a workspace binary in the target folder the tests were built in.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` before the tests", path.display());
    path
}

/// What a `coffer` run did.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Asserts success and returns stdout as text.
    pub fn ok(&self) -> String {
        assert!(self.status.success(), "coffer failed ({}): {}", self.status, self.stderr);
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last stdout line (where `backup` prints the snapshot id).
    pub fn last_line(&self) -> String {
        self.ok().lines().last().unwrap_or_default().to_string()
    }

    /// How many times the agent retried a request (its `retrying in` lines).
    pub fn retries(&self) -> usize {
        self.stderr.matches("retrying in").count()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.ok()))
    }
}

/// Runs `coffer` with `config` and `args`, feeding `stdin` (or nothing).
pub fn coffer(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    coffer_with_env(config, args, stdin, &[])
}

/// Passed in a run's environment by a test that expects the agent to retry
/// (a proxy down, a fault injected). Without it, a run whose agent retried
/// fails the test: a stray 5xx, 429 or dropped connection must not be
/// retried away unseen.
pub const EXPECT_RETRIES: (&str, &str) = ("COFFER_TEST_EXPECT_RETRIES", "1");

/// Like [`coffer`], for a test that expects retries (see [`EXPECT_RETRIES`]).
pub fn coffer_retrying(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    // Retries are expected to end in success: give them time to, on a
    // loaded machine.
    coffer_with_env(config, args, stdin, &[EXPECT_RETRIES, ("COFFER_RETRY_DEADLINE_SECS", "60")])
}

/// Like [`coffer`], with extra environment variables.
pub fn coffer_with_env(config: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(bin("coffer"))
        .args(args)
        // Tests that expect a failure should not wait out the default
        // five-minute retry deadline; tests of retries set their own.
        .env("COFFER_RETRY_DEADLINE_SECS", "2")
        // Retries are logged at warn: the check below depends on seeing them.
        .env("COFFER_LOG", "warn")
        // What the agent remembers of snapshots stays with the test's
        // configs, never in the home folder shared by every test and run.
        .env_remove("STATE_DIRECTORY")
        .env("XDG_STATE_HOME", config.parent().unwrap_or(Path::new(".")).join("xdg-state"))
        .envs(env.iter().copied())
        .env("COFFER_CONFIG", config)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coffer");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait for coffer");
    if let Some(w) = writer {
        w.join().expect("stdin writer");
    }
    let run = Run { status: out.status, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() };
    if run.retries() > 0 && !env.iter().any(|(k, _)| *k == EXPECT_RETRIES.0) {
        panic!(
            "coffer {args:?} retried {} times, and this test expects no retry (a stray 5xx, 429 or dropped \
             connection):\n{}",
            run.retries(),
            run.stderr
        );
    }
    run
}

/// An in-process client that does not retry: it reports exactly what the
/// proxy answered.
pub async fn raw_client(config: &Path) -> coffer_client::ProxyClient {
    let mut cfg = coffer_client::ClientConfig::load(config).expect("agent config");
    cfg.retry_deadline_secs = 0;
    coffer_client::ProxyClient::connect(&cfg).await.expect("connect")
}

/// A free loopback port (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on a loopback port over HTTP/1.1: the whole response, head
/// and body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
