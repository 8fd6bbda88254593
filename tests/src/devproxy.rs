//! A real `coffer-proxy dev` in a temporary folder.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::*;

/// A running `coffer-proxy dev`, killed on drop.
pub struct DevProxy {
    pub dir: PathBuf,
    pub addr: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl DevProxy {
    /// Starts a dev proxy in a fresh temporary folder.
    pub fn start() -> Self {
        Self::start_logging("warn")
    }

    /// Starts a dev proxy in a fresh temporary folder, logging at `log`.
    pub fn start_logging(log: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut p = Self::start_with_log(tmp.path(), log);
        p._tmp = Some(tmp);
        p
    }

    /// Starts (or restarts) a dev proxy on `dir`, on a free port.
    pub fn start_in(dir: &Path) -> Self {
        Self::start_with_log(dir, "warn")
    }

    /// Starts a dev proxy with `COFFER_LOG` set to `log`.
    pub fn start_with_log(dir: &Path, log: &str) -> Self {
        Self::start_at(dir, "127.0.0.1:0", log)
    }

    /// Starts a dev proxy on `dir` listening on `addr` (a fixed port lets a
    /// restarted proxy be found again by running agents).
    pub fn start_at(dir: &Path, addr: &str, log: &str) -> Self {
        let mut cmd = Command::new(bin("coffer-proxy"));
        cmd.args(["dev", "--dir"]).arg(dir).args(["--listen", addr]).env("COFFER_LOG", log);
        Self::spawn(dir, cmd)
    }

    /// Starts `coffer-proxy --config CONFIG` (which must listen on port 0)
    /// with extra environment; `dir` is where its certificates are.
    pub fn start_config(dir: &Path, config: &Path, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(bin("coffer-proxy"));
        cmd.arg("--config").arg(config).env("COFFER_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(dir, cmd)
    }

    fn spawn(dir: &Path, mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn coffer-proxy");
        // Collect stderr as it comes, so the proxy never blocks on a full pipe.
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        let drain = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if lines.read_line(&mut line).expect("read proxy stdout") == 0 {
                let _ = child.wait();
                let _ = drain.join();
                panic!("coffer-proxy exited before listening: {}", stderr.lock().unwrap());
            }
            if let Some((_, addr)) = line.trim().split_once("listening on ") {
                break addr.to_string();
            }
        };
        // Keep draining stdout so the proxy never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
        Self { dir: dir.to_path_buf(), addr, child, stderr, _tmp: None }
    }

    /// Enrolls `identity` (trust domain `dev`) for admin TOTP and returns
    /// its base32 secret.
    pub fn enroll(&self, identity: &str) -> String {
        let out = Command::new(bin("coffer-proxy"))
            .arg("--config")
            .arg(self.dir.join("proxy.toml"))
            .args(["admin", "enroll", "--trust-domain", "dev", "--identity", identity])
            .output()
            .expect("run coffer-proxy admin enroll");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let uri = String::from_utf8(out.stdout).expect("utf-8");
        assert!(uri.starts_with("otpauth://totp/Coffer:"), "{uri}");
        let start = uri.find("secret=").expect("a secret") + "secret=".len();
        uri[start..].split(['&', '\n']).next().unwrap_or_default().to_string()
    }

    /// What the proxy has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The writer identity's config.
    pub fn writer(&self) -> PathBuf {
        self.dir.join("writer.toml")
    }

    /// The reader identity's config.
    pub fn reader(&self) -> PathBuf {
        self.dir.join("reader.toml")
    }

    /// Where the filesystem store keeps objects.
    pub fn objects(&self) -> PathBuf {
        self.dir.join("store/objects")
    }

    /// Every stored object's path under `objects()/<prefix>`.
    /// Every stored object under `prefix` (none if nothing was ever stored
    /// there). A store folder that is missing, or one that cannot be read,
    /// fails the test: an "is empty" check must not pass because the
    /// layout moved.
    pub fn stored(&self, prefix: &str) -> Vec<PathBuf> {
        assert!(self.objects().is_dir(), "no store folder at {}", self.objects().display());
        let mut out = Vec::new();
        let mut stack = vec![self.objects().join(prefix)];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && out.is_empty() && stack.is_empty() => break,
                Err(e) => panic!("reading {}: {e}", d.display()),
            };
            for e in entries.flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// Every stored object that is not the proxy's own (its `admin/` tree:
    /// switches, leases, when scopes began): what clients made it store.
    pub fn stored_for_clients(&self) -> Vec<PathBuf> {
        let admin = self.objects().join("admin");
        self.stored("").into_iter().filter(|p| !p.starts_with(&admin)).collect()
    }

    /// The live audit log; a missing or unreadable one fails the test.
    pub fn audit_log(&self) -> String {
        let path = self.dir.join("audit/audit.jsonl");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Stops the proxy and hands over its temporary folder (if it owns one),
    /// to restart on the same folder.
    pub fn into_tempdir(mut self) -> Option<tempfile::TempDir> {
        self.kill();
        self._tmp.take()
    }

    /// Keeps `tmp` alive as long as this proxy.
    pub fn holding(mut self, tmp: Option<tempfile::TempDir>) -> Self {
        self._tmp = tmp;
        self
    }

    /// Stops the proxy, rewrites its `proxy.toml` with `edit`, and starts
    /// it again on the same folder.
    pub fn restarted(self, edit: impl FnOnce(String) -> String) -> Self {
        let dir = self.dir.clone();
        let tmp = self.into_tempdir();
        let path = dir.join("proxy.toml");
        let text = std::fs::read_to_string(&path).expect("proxy.toml");
        std::fs::write(&path, edit(text)).expect("write proxy.toml");
        DevProxy::start_in(&dir).holding(tmp)
    }

    /// The agent config of an identity issued in this dev folder.
    pub fn config(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// Runs `coffer-proxy dev --dir <dir> ARGS...` (issue, revoke) and
    /// asserts it succeeded.
    pub fn dev(&self, args: &[&str]) {
        let out = Command::new(bin("coffer-proxy")).arg("dev").arg("--dir").arg(&self.dir).args(args).output().unwrap();
        assert!(out.status.success(), "dev {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Appends TOML to the proxy's config file.
    pub fn append_config(&self, toml: &str) {
        let path = self.dir.join("proxy.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n{toml}\n")).unwrap();
    }

    /// Sends SIGHUP and waits for the reload's audit event; returns whether
    /// the reload was accepted.
    pub fn reload(&self) -> bool {
        let before = self.audit_log().matches(r#""action":"reload""#).count();
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let log = self.audit_log();
            let reloads: Vec<&str> = log.lines().filter(|l| l.contains(r#""action":"reload""#)).collect();
            if reloads.len() > before {
                return reloads[reloads.len() - 1].contains(r#""outcome":"ok""#);
            }
            assert!(std::time::Instant::now() < deadline, "no reload event");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Audit events, parsed.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        // Only whole lines: the proxy may be appending one as this reads.
        let log = self.audit_log();
        let whole = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        whole.lines().map(|l| serde_json::from_str(l).expect("audit lines are JSON")).collect()
    }

    /// Waits until an audit event satisfies `pred` (events of refused
    /// handshakes are not waited for by the client).
    pub fn wait_for_event(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(e) = self.audit_events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(std::time::Instant::now() < deadline, "no audit event for {what} in:\n{}", self.audit_log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Stops the proxy as an operator does (SIGTERM: it finishes requests,
    /// seals and ships its audit log), and asserts it exited cleanly.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "coffer-proxy stopped with {status}: {}", self.stderr());
                return;
            }
            assert!(std::time::Instant::now() < deadline, "coffer-proxy did not stop: {}", self.stderr());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the proxy (SIGKILL: nothing gets to clean up).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
