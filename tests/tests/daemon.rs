//! `coffer daemon`: scheduled jobs, the health endpoint, the sidecar socket
//! with `coffer send`, and graceful stop, over real processes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_tests::{bin, coffer, free_port, http_get, random_bytes, DevProxy};

/// A running `coffer daemon`, killed on drop.
struct Daemon {
    child: Child,
    health_port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the writer's config plus `toml` (which may use
    /// `{health}` for the health address).
    fn start(p: &DevProxy, name: &str, toml: &str) -> Self {
        Self::start_on(p, name, toml, None)
    }

    /// Started on the given CPUs only (`taskset -c`), so its blocking pool,
    /// one thread per CPU it may use, is that small whatever the machine.
    fn start_on(p: &DevProxy, name: &str, toml: &str, cpus: Option<&str>) -> Self {
        let health_port = free_port();
        let text = std::fs::read_to_string(p.writer()).unwrap();
        let toml = toml.replace("{health}", &format!("127.0.0.1:{health_port}"));
        let config = p.dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("{text}\n{toml}\n")).unwrap();
        let log = p.dir.join(format!("{name}.log"));
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(bin("coffer"));
                c
            }
            None => Command::new(bin("coffer")),
        };
        let child = cmd
            .args(["daemon", "--log-format", "json", "--config"])
            .arg(&config)
            .env("COFFER_RETRY_DEADLINE_SECS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child, health_port, log };
        d.wait_for("the health endpoint", |_| true);
        d
    }

    fn health(&self) -> Option<serde_json::Value> {
        std::net::TcpStream::connect(("127.0.0.1", self.health_port)).ok()?;
        let response = http_get(self.health_port, "/health");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
    }

    /// Polls the health answer until `pred` holds (30 s at most).
    fn wait_for(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(h) = self.health() {
                if pred(&h) {
                    return h;
                }
            }
            assert!(Instant::now() < deadline, "waited 30 s for {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and how long the stop took.
    fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        assert!(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success());
        let deadline = t + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, t.elapsed());
            }
            assert!(Instant::now() < deadline, "the daemon did not stop; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn snapshots(p: &DevProxy, repo: &str) -> Vec<String> {
    let list = coffer(&p.reader(), &["snapshots", "--repo", repo, "--json"], None).json();
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn scheduled_jobs_run_and_one_failing_never_stops_another() {
    let p = DevProxy::start();
    for repo in ["dev/good", "dev/bad"] {
        coffer(&p.writer(), &["init", "--repo", repo], None).ok();
    }
    let file = p.dir.join("data.bin");
    let data = random_bytes("daemon", 1 << 20);
    std::fs::write(&file, &data).unwrap();
    let mut d = Daemon::start(
        &p,
        "jobs",
        &format!(
            r#"
[daemon]
health = "{{health}}"
[[jobs]]
name = "good"
repo = "dev/good"
schedule = "* * * * * *"
jitter_secs = 1
command = ["cat", "{}"]
[[jobs]]
name = "bad"
repo = "dev/bad"
schedule = "* * * * * *"
command = ["sh", "-c", "echo partial; exit 3"]
"#,
            file.display()
        ),
    );
    let h = d.wait_for("two runs of each job", |h| {
        h["jobs"]["good"]["runs"].as_u64() >= Some(2) && h["jobs"]["bad"]["failures"].as_u64() >= Some(2)
    });
    assert_eq!(h["status"], "failing", "{h}");
    assert_eq!(h["jobs"]["good"]["last_error"], serde_json::Value::Null, "{h}");
    assert_eq!(h["jobs"]["good"]["failures"], 0, "{h}");
    assert!(h["jobs"]["bad"]["last_error"].as_str().unwrap().contains("exited with status 3"), "{h}");
    assert!(h["jobs"]["good"]["next_run"].as_u64().is_some(), "{h}");

    let (status, _) = d.stop();
    assert!(status.success(), "{status}; log:\n{}", d.log());
    let good = snapshots(&p, "dev/good");
    assert!(good.len() >= 2, "{good:?}");
    assert!(snapshots(&p, "dev/bad").is_empty(), "a failed job commits nothing");
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/good", good.last().unwrap()], None);
    assert!(restored.stdout == data, "a scheduled backup restores bit-exact");

    // Structured logs: one JSON object per line, naming the job.
    let log = d.log();
    let events: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["fields"]["message"] == "backup committed" && e["fields"]["job"] == "good"));
    assert!(events.iter().any(|e| e["fields"]["job"] == "bad" && e["level"] == "ERROR"));

    // `coffer run NAME` runs one job once, for timers.
    let once = coffer(&p.writer().with_file_name("jobs.toml"), &["run", "good"], None).last_line();
    assert!(snapshots(&p, "dev/good").contains(&once));
    let missing = coffer(&p.writer().with_file_name("jobs.toml"), &["run", "nope"], None);
    assert_eq!(missing.code(), 64, "{}", missing.stderr);
}

fn send(socket: &Path, repo: &str, args: &[&str], stdin: Option<&[u8]>) -> coffer_tests::Run {
    // No agent config at all: the sender needs only the socket.
    let mut all = vec!["send", "--socket", socket.to_str().unwrap(), "--repo", repo];
    all.extend_from_slice(args);
    coffer(Path::new("/nonexistent/agent.toml"), &all, stdin)
}

/// A new repository `repo` and a daemon serving it on a sidecar socket.
fn socket_daemon(p: &DevProxy, name: &str, repo: &str) -> (Daemon, PathBuf) {
    socket_daemon_on(p, name, repo, None)
}

fn socket_daemon_on(p: &DevProxy, name: &str, repo: &str, cpus: Option<&str>) -> (Daemon, PathBuf) {
    coffer(&p.writer(), &["init", "--repo", repo], None).ok();
    let socket = p.dir.join(format!("{name}.sock"));
    let toml =
        format!("[daemon]\nhealth = \"{{health}}\"\nsocket = \"{}\"\nsocket_repos = [\"{repo}\"]", socket.display());
    (Daemon::start_on(p, name, &toml, cpus), socket)
}

#[test]
fn the_sidecar_socket_takes_streams_from_senders_without_certificates() {
    let p = DevProxy::start();
    let (d, socket) = socket_daemon(&p, "sidecar", "dev/side");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);

    let data = random_bytes("side", 3 << 20);
    let sent = send(&socket, "dev/side", &["--name", "pg_dump", "-"], Some(&data));
    let id = sent.last_line();
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/side", &id], None);
    assert!(restored.stdout == data, "a streamed backup restores bit-exact");
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/side", "--json"], None).json();
    assert_eq!(listed[0]["name"], "pg_dump");

    let other = send(&socket, "dev/other", &["-"], Some(b"x"));
    assert_eq!(other.code(), 1);
    assert!(other.stderr.contains("may not write repository dev/other"), "{}", other.stderr);

    let failed = send(&socket, "dev/side", &["--", "sh", "-c", "echo partial; exit 3"], None);
    assert_eq!(failed.code(), 1);
    assert!(failed.stderr.contains("exited with status 3") && failed.stderr.contains("nothing was committed"));

    // A sender killed half way: the daemon commits nothing.
    let mut child = Command::new(bin("coffer"))
        .args(["send", "--socket", socket.to_str().unwrap(), "--repo", "dev/side", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(&data[..1 << 20]).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let h = d.wait_for("the socket's counters", |h| h["socket"]["failed"] == 3 && h["socket"]["running"] == 0);
    assert_eq!(h["socket"]["committed"], 1, "{h}");
    assert_eq!(snapshots(&p, "dev/side"), [id], "only the complete stream was committed");
    assert!(d.log().contains("the sender stopped before the end of its stream"), "{}", d.log());

    // The result as one JSON object: the id, and the stream's bytes.
    let again = send(&socket, "dev/side", &["--name", "pg_dump", "--json", "-"], Some(b"tonight")).json();
    assert_eq!(again["bytes_in"], 7);
    assert_eq!(again["bytes_new"], 7);
    assert!(snapshots(&p, "dev/side").contains(&again["id"].as_str().unwrap().to_string()), "{again}");
}

/// As many `coffer send`s at once as the daemon serves (4), each longer
/// than the backup pipeline's 16 MiB byte budget, all commit. A source
/// that waits on the budget is waiting for chunks to be sealed, so sources
/// read on tokio's blocking pool, where chunks are sealed, could take every
/// thread of it and stop all four for good. The daemon runs on two CPUs,
/// so its pool has two threads, fewer than the senders, on any machine: on
/// a many-core host a larger pool would hide the bug.
#[test]
fn every_send_the_daemon_serves_at_once_commits() {
    let p = DevProxy::start();
    let (d, socket) = socket_daemon_on(&p, "many", "dev/many", Some("0,1"));
    let (done, finished) = std::sync::mpsc::channel();
    for i in 0..4 {
        let (socket, done) = (socket.clone(), done.clone());
        std::thread::spawn(move || {
            let name = format!("s{i}");
            let args = ["--name", name.as_str(), "--", "head", "-c", "40000000", "/dev/urandom"];
            done.send(send(&socket, "dev/many", &args, None)).unwrap();
        });
    }
    for _ in 0..4 {
        let sent = finished.recv_timeout(Duration::from_secs(180)).unwrap_or_else(|_| {
            panic!("the sends did not finish in 180 s; log:\n{}", d.log());
        });
        assert_eq!(sent.code(), 0, "{}", sent.stderr);
    }
    assert_eq!(snapshots(&p, "dev/many").len(), 4);
}

#[test]
fn a_stop_finishes_a_short_backup_and_abandons_a_long_one() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/stop"], None).ok();
    let job = |stop_timeout: u32, sleep: u32| {
        format!(
            r#"
[daemon]
health = "{{health}}"
stop_timeout_secs = {stop_timeout}
[[jobs]]
name = "slow"
repo = "dev/stop"
schedule = "* * * * * *"
command = ["sh", "-c", "head -c 100000 /dev/urandom; exec sleep {sleep}"]
"#
        )
    };
    // Stopped while a 2 s job runs, with 30 s to finish: it commits.
    let mut d = Daemon::start(&p, "finish", &job(30, 2));
    d.wait_for("the job to start", |h| h["jobs"]["slow"]["running"] == true);
    let (status, _) = d.stop();
    assert!(status.success(), "{}", d.log());
    assert_eq!(snapshots(&p, "dev/stop").len(), 1, "the running backup finished: {}", d.log());

    // Stopped while a 60 s job runs, with 1 s to finish: abandoned.
    let mut d = Daemon::start(&p, "abandon", &job(1, 60));
    d.wait_for("the job to start", |h| h["jobs"]["slow"]["running"] == true);
    let (status, took) = d.stop();
    assert!(status.success(), "{}", d.log());
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");
    assert!(d.log().contains("abandoning"), "{}", d.log());
    assert_eq!(snapshots(&p, "dev/stop").len(), 1, "nothing of the abandoned backup is committed");
}

#[test]
fn check_config_reads_everything_a_backup_needs_without_connecting() {
    let p = DevProxy::start();
    let text = std::fs::read_to_string(p.writer()).unwrap();
    let config = p.dir.join("check.toml");
    let jobs = "[[jobs]]\nname = \"etc\"\nrepo = \"dev/etc\"\nschedule = \"@daily\"\npath = \"/etc\"\n";
    std::fs::write(&config, format!("{text}\n{jobs}")).unwrap();
    let ok = coffer(&config, &["--check-config"], None);
    let out = ok.ok();
    assert!(out.contains("check.toml: ok"), "{out}");
    assert!(out.contains("job etc → dev/etc: `tar --create --file=- --directory=/ -- etc`, next "), "{out}");

    // A certificate that is not there is named, with the usage exit code.
    let missing = p.dir.join("missing.toml");
    std::fs::write(&missing, text.replace("writer.pem", "gone.pem")).unwrap();
    let bad = coffer(&missing, &["--check-config"], None);
    assert_eq!(bad.code(), 64);
    assert!(bad.stderr.contains("gone.pem"), "{}", bad.stderr);
}

/// A run that hangs is stopped after the job's max_run_secs and counted as
/// a failure, so the job runs again at its next time; `/health`, open to
/// every local user, names the failed command without its arguments.
#[test]
fn a_hung_run_is_stopped_and_health_shows_no_arguments() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/hang"], None).ok();
    let d = Daemon::start(
        &p,
        "hang",
        r#"[daemon]
health = "{health}"

[[jobs]]
name = "hangs"
repo = "dev/hang"
schedule = "* * * * * *"
command = ["sleep", "600"]
max_run_secs = 1

[[jobs]]
name = "fails"
repo = "dev/hang"
schedule = "* * * * * *"
command = ["sh", "-c", "exit 3", "password=hunter2"]"#,
    );
    let h = d.wait_for("the hung run to be stopped twice", |h| h["jobs"]["hangs"]["failures"].as_u64() >= Some(2));
    let error = h["jobs"]["hangs"]["last_error"].as_str().unwrap();
    assert!(error.contains("max_run_secs (1 s)"), "{h}");
    // The stopped runs' sources were killed: at most the current run's is left.
    let out = Command::new("pgrep").args(["-c", "-f", "^sleep 600$"]).output().unwrap();
    let left: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert!(left <= 1, "{left} hung sources left running");
    let h = d.wait_for("the failing job", |h| h["jobs"]["fails"]["last_error"].is_string());
    let error = h["jobs"]["fails"]["last_error"].as_str().unwrap();
    assert!(error.contains("sh …") && error.contains("status 3"), "{error}");
    assert!(!h.to_string().contains("hunter2"), "arguments reach /health: {h}");
    assert!(p.stored("dev/hang/snapshots").is_empty(), "nothing of a failed run is committed");
}

/// A member of the socket's group opening connection after connection and
/// never sending: once the served and waiting places are taken, the next is
/// refused at once instead of piling up; and with `socket_uids`, a sender
/// running as another user is refused.
#[test]
fn the_sidecar_socket_bounds_waiting_senders_and_can_check_the_peer() {
    use std::io::BufRead as _;
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/sock"], None).ok();
    let socket = p.dir.join("bounded.sock");
    let toml =
        format!("[daemon]\nhealth = \"{{health}}\"\nsocket = \"{}\"\nsocket_repos = [\"dev/sock\"]", socket.display());
    let d = Daemon::start(&p, "bounded", &toml);
    let places = 4 + coffer_agent::daemon::SENDERS_WAITING_MAX;
    let held: Vec<_> = (0..places).map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let extra = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&extra).read_line(&mut line).unwrap();
    assert!(line.contains("are waiting; try again later"), "{line:?}");
    drop(held);
    drop(d);

    let uid = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    let other: u32 = uid.trim().parse::<u32>().unwrap() + 1;
    let toml = format!("{toml}\nsocket_uids = [{other}]");
    let socket2 = p.dir.join("bounded2.sock");
    let _d = Daemon::start(&p, "uids", &toml.replace("bounded.sock", "bounded2.sock"));
    let refused = send(&socket2, "dev/sock", &["-"], Some(b"x"));
    assert_eq!(refused.code(), 1);
    assert!(refused.stderr.contains("socket_uids does not list"), "{}", refused.stderr);
}

/// `KEY=VALUE` lines a hook wrote with `env`, as a map.
fn hook_env(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn hooks_run_around_a_job_with_its_result_and_a_failing_before_hook_stops_it() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/hooked"], None).ok();
    let dir = &p.dir;
    let (marker, after, failed) = (dir.join("quiesced"), dir.join("after.env"), dir.join("failed.env"));
    let config = p.writer().with_file_name("hooked.toml");
    let write = |before: &str| {
        let text = std::fs::read_to_string(p.writer()).unwrap();
        let job = format!(
            r#"
[[jobs]]
name = "db"
repo = "dev/hooked"
schedule = "@daily"
# The stream is what the before hook wrote: it ran first.
command = ["cat", "{marker}"]
[jobs.hooks]
before = ["sh", "-c", "{before}"]
# Its stdout goes to stderr, never into `coffer run`'s stdout.
after = ["sh", "-c", "env > {after}; echo hook-output"]
on_failure = ["sh", "-c", "env > {failed}"]
"#,
            marker = marker.display(),
            after = after.display(),
            failed = failed.display(),
        );
        std::fs::write(&config, format!("{text}\n{job}")).unwrap();
    };
    write(&format!("echo quiesced at $COFFER_HOOK > {}", marker.display()));
    let run = coffer(&config, &["run", "db"], None);
    let id = run.last_line();
    assert_eq!(run.ok().trim(), id, "stdout is the id alone");
    assert!(run.stderr.contains("hook-output"), "{}", run.stderr);
    let env = hook_env(&after);
    assert_eq!(env["COFFER_HOOK"], "after");
    assert_eq!(env["COFFER_RESULT"], "ok");
    assert_eq!(env["COFFER_JOB"], "db");
    assert_eq!(env["COFFER_REPO"], "dev/hooked");
    assert_eq!(env["COFFER_SNAPSHOT"], id, "the after hook names the snapshot committed");
    assert_eq!(env["COFFER_BYTES_IN"], "19", "{env:?}");
    assert!(!failed.exists(), "on_failure ran after a success");
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/hooked", &id], None);
    assert_eq!(restored.stdout, b"quiesced at before\n", "the before hook ran before the backup");

    // A before hook that fails: no backup, and on_failure hears why.
    std::fs::remove_file(&after).unwrap();
    write("exit 7");
    let run = coffer(&config, &["run", "db"], None);
    assert_eq!(run.code(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("hook `before` (sh) exited with status 7"), "{}", run.stderr);
    let env = hook_env(&failed);
    assert_eq!(env["COFFER_HOOK"], "on_failure");
    assert_eq!(env["COFFER_RESULT"], "failed");
    assert!(env["COFFER_ERROR"].contains("hook `before` (sh) exited with status 7"), "{env:?}");
    assert!(!after.exists(), "the after hook ran after a failure");
    assert_eq!(snapshots(&p, "dev/hooked"), vec![id], "a failed before hook commits nothing");

    // A failing job: on_failure hears why, with the command's arguments
    // (which may hold a password) cut off, as in the log.
    std::fs::remove_file(&failed).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let secret = text
        .replace(
            &format!("command = [\"cat\", \"{}\"]", marker.display()),
            "command = [\"sh\", \"-c\", \"exit 4\", \"hunter2\"]",
        )
        .replace("before = [\"sh\", \"-c\", \"exit 7\"]", "before = []");
    assert_ne!(secret, text);
    std::fs::write(&config, secret).unwrap();
    let run = coffer(&config, &["run", "db"], None);
    assert_eq!(run.code(), 1, "{}", run.stderr);
    let env = std::fs::read_to_string(&failed).unwrap();
    assert!(env.contains("COFFER_ERROR=") && env.contains("exited with status 4"), "{env}");
    assert!(!env.contains("hunter2") && !run.stderr.contains("hunter2"), "{env}\n{}", run.stderr);
}

#[test]
fn the_health_listener_serves_each_jobs_state_to_prometheus() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/metered"], None).ok();
    let d = Daemon::start(
        &p,
        "metered",
        r#"
[daemon]
health = "{health}"
[[jobs]]
name = "ok"
repo = "dev/metered"
schedule = "* * * * * *"
command = ["echo", "a small stream"]
[[jobs]]
name = "broken"
repo = "dev/metered"
schedule = "* * * * * *"
command = ["false"]
[jobs.hooks]
on_failure = ["false"]
"#,
    );
    d.wait_for("a run of each job", |h| {
        h["jobs"]["ok"]["last_success"].as_u64().is_some() && h["jobs"]["broken"]["hook_failures"].as_u64() >= Some(1)
    });
    let response = http_get(d.health_port, "/metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    let value = |series: &str| -> f64 {
        let line =
            response.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{response}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let ok = r#"{job_name="ok",repo="dev/metered"}"#;
    let broken = r#"{job_name="broken",repo="dev/metered"}"#;
    assert!(value(&format!("coffer_agent_job_runs_total{ok}")) >= 1.0);
    assert_eq!(value(&format!("coffer_agent_job_failing{ok}")), 0.0);
    assert_eq!(value(&format!("coffer_agent_job_failing{broken}")), 1.0);
    assert!(value(&format!("coffer_agent_job_failures_total{broken}")) >= 1.0);
    assert!(value(&format!("coffer_agent_job_hook_failures_total{broken}")) >= 1.0);
    assert_eq!(value(&format!("coffer_agent_job_last_bytes_in{ok}")), 15.0);
    assert!(value(&format!("coffer_agent_job_last_success_timestamp_seconds{ok}")) > 1.7e9);
    let never = format!("coffer_agent_job_last_success_timestamp_seconds{broken}");
    assert!(!response.contains(&never), "a job that never succeeded has no success time:\n{response}");
}
