//! Harness for end-to-end tests: real `coffer-proxy dev` and `coffer`
//! processes talking mutual TLS on `127.0.0.1:0`.
//!
//! The binaries must be built first (`cargo build --bins`, which the
//! README's test command does); they are found beside the test executable.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

/// Path of a workspace binary in the target folder the tests were built in.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` before the tests", path.display());
    path
}

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
        self.dir.join("agent.toml")
    }

    /// The reader identity's config.
    pub fn reader(&self) -> PathBuf {
        self.dir.join("restore.toml")
    }

    /// Where the filesystem store keeps objects.
    pub fn objects(&self) -> PathBuf {
        self.dir.join("store/objects")
    }

    /// Every stored object's path under `objects()/<prefix>`.
    pub fn stored(&self, prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.objects().join(prefix)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
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

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit/audit.jsonl")).unwrap_or_default()
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
        self.audit_log().lines().map(|l| serde_json::from_str(l).expect("audit lines are JSON")).collect()
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

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.ok()))
    }
}

/// Runs `coffer` with `config` and `args`, feeding `stdin` (or nothing).
pub fn coffer(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    coffer_with_env(config, args, stdin, &[])
}

/// Like [`coffer`], with extra environment variables.
pub fn coffer_with_env(config: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(bin("coffer"))
        .args(args)
        // Tests that expect a failure should not wait out the default
        // five-minute retry deadline; tests of retries set their own.
        .env("COFFER_RETRY_DEADLINE_SECS", "2")
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
    Run { status: out.status, stdout: out.stdout, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

pub use coffer_bench::data::{random_bytes, text_bytes};

/// A moto server (the S3 and KMS emulator) on a free loopback port, killed
/// on drop. Found through `COFFER_MOTO`, which the README's test command
/// sets after installing moto into a virtual environment.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Self {
        let exe = std::env::var("COFFER_MOTO")
            .ok()
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server"));
        assert!(
            exe.exists(),
            "moto_server not found at {}: run the tests with tests/run.sh, which installs it",
            exe.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { endpoint: format!("http://127.0.0.1:{port}"), child }
    }

    /// Environment for processes that talk to it (static test credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// SDK configuration for the test's own calls to the emulator.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "coffer-tests");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .credentials_provider(creds)
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver on loopback: answers 200 to every POST and keeps the
/// JSON bodies. Stops accepting when dropped.
pub struct Webhook {
    pub port: u16,
    pub received: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Webhook {
    /// Listens on `port` (0: any free port).
    pub fn start(port: u16) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind webhook port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, halt) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break Some(buf[end + 4..end + 4 + len].to_vec());
                        }
                    }
                };
                if let Some(body) = body {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                }
            }
        });
        Self { port, received, stop }
    }

    /// Waits until an alert of `kind` has arrived, and returns it.
    pub fn wait_for(&self, kind: &str, secs: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(a) = self.received.lock().unwrap().iter().find(|a| a["kind"] == kind) {
                return a.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no {kind} alert; got {:?}", self.received.lock().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn kinds(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|a| a["kind"].as_str().unwrap_or("").to_string()).collect()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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

/// An HTTP/1 relay in front of the S3 emulator that answers some requests
/// itself with `503 SlowDown`, as S3 does under load, and forwards the rest.
pub struct FaultRelay {
    pub endpoint: String,
    /// Requests answered with a fault so far.
    pub faults: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    /// Relays to `upstream` (`http://host:port`); `fault(method, path, n)`
    /// decides, for the n-th request (from 0), whether to answer 503.
    pub async fn start(
        upstream: &str,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(upstream, false, fault).await
    }

    /// Like [`FaultRelay::start`], but a faulted request is never answered:
    /// a store that accepts a call and then hangs.
    pub async fn stalling(
        upstream: &str,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(upstream, true, fault).await
    }

    async fn start_with(
        upstream: &str,
        stall: bool,
        fault: impl Fn(&http::Method, &str, usize) -> bool + Send + Sync + 'static,
    ) -> Self {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream: std::net::SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let faults = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fault = Arc::new(fault);
        let counter = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (fault, counter, seen) = (fault.clone(), counter.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (fault, counter, seen) = (fault.clone(), counter.clone(), seen.clone());
                        async move {
                            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if fault(req.method(), req.uri().path(), n) {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if stall {
                                    std::future::pending::<()>().await;
                                }
                                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                                return Ok::<_, hyper::Error>(
                                    http::Response::builder()
                                        .status(503)
                                        .header("content-type", "application/xml")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                        .unwrap(),
                                );
                            }
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let tcp = tokio::net::TcpStream::connect(upstream).await.expect("upstream");
                            let (mut send, conn) =
                                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
                            tokio::spawn(conn);
                            let resp = send
                                .send_request(http::Request::from_parts(parts, http_body_util::Full::new(body)))
                                .await?;
                            let (parts, body) = resp.into_parts();
                            let body = body.collect().await?.to_bytes();
                            Ok(http::Response::from_parts(parts, http_body_util::Full::new(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { endpoint, faults, task }
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay between agents and a proxy that can cut or freeze the
/// connections open at a given moment (later ones pass normally).
pub struct TcpRelay {
    pub addr: String,
    /// Connections opened before this generation are cut...
    cut_before: Arc<std::sync::atomic::AtomicU64>,
    /// ...or frozen: held open, nothing forwarded.
    freeze_before: Arc<std::sync::atomic::AtomicU64>,
    next: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl TcpRelay {
    pub fn start(upstream: &str) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut_before, freeze_before) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (next, stop) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicBool::new(false)));
        let (c, f, n, s, up) =
            (cut_before.clone(), freeze_before.clone(), next.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !s.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let gen = n.fetch_add(1, SeqCst);
                let Ok(server) = std::net::TcpStream::connect(&up) else { continue };
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let (c, f, s) = (c.clone(), f.clone(), s.clone());
                    std::thread::spawn(move || {
                        let (mut from, mut to) = (from, to);
                        from.set_nonblocking(false).unwrap();
                        from.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            if s.load(SeqCst) || gen < c.load(SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            if gen < f.load(SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Self { addr, cut_before, freeze_before, next, stop }
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        let now = self.next.load(std::sync::atomic::Ordering::SeqCst);
        self.cut_before.store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection, open now or made later: a proxy that
    /// accepts and never answers.
    pub fn freeze_all(&self) {
        self.freeze_before.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection open now: held open, nothing forwarded.
    pub fn freeze(&self) {
        let now = self.next.load(std::sync::atomic::Ordering::SeqCst);
        self.freeze_before.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
