//! Failed sources and bad usage: no snapshot, a non-zero exit, a clear message.

use coffer_tests::{coffer, DevProxy};

fn snapshot_count(p: &DevProxy, repo: &str) -> usize {
    coffer(&p.reader(), &["snapshots", "--repo", repo, "--json"], None).json().as_array().unwrap().len()
}

#[test]
fn failing_command_commits_nothing() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/f"], None).ok();
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/f", "--", "sh", "-c", "echo partial; exit 3"], None);
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("exited with status 3") && run.stderr.contains("no snapshot"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "no snapshot id may be printed");
    let killed =
        coffer(&p.writer(), &["backup", "--repo", "dev/f", "--", "sh", "-c", "echo partial; kill -9 $$"], None);
    assert_eq!(killed.code(), 1);
    assert!(killed.stderr.contains("killed by signal 9"), "{}", killed.stderr);
    assert_eq!(snapshot_count(&p, "dev/f"), 0);
    assert!(p.stored("dev/f/snapshots").is_empty() && p.stored("dev/f/index").is_empty());
}

#[test]
fn read_error_commits_nothing() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/r"], None).ok();
    // A directory as stdin: read() fails with EISDIR.
    let mut child = std::process::Command::new(coffer_tests::bin("coffer"))
        .args(["backup", "--repo", "dev/r", "-"])
        .env("COFFER_CONFIG", p.writer())
        .stdin(std::fs::File::open(&p.dir).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let missing = coffer(&p.writer(), &["backup", "--repo", "dev/r", "/nonexistent/dump.sql"], None);
    assert_eq!(missing.code(), 1);
    assert!(missing.stderr.contains("/nonexistent/dump.sql"), "{}", missing.stderr);
    assert_eq!(snapshot_count(&p, "dev/r"), 0);
}

#[test]
fn uninitialised_repo_hints_at_init() {
    let p = DevProxy::start();
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/never", "-"], Some(b"data"));
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("coffer init --repo dev/never"), "{}", run.stderr);
    let again = coffer(&p.writer(), &["init", "--repo", "dev/once"], None);
    again.ok();
    let twice = coffer(&p.writer(), &["init", "--repo", "dev/once"], None);
    assert_eq!(twice.code(), 1);
    assert!(twice.stderr.contains("already initialised"), "{}", twice.stderr);
}

#[test]
fn usage_and_config_errors_exit_64() {
    let p = DevProxy::start();
    assert_eq!(coffer(&p.writer(), &["backup"], None).code(), 64);
    assert_eq!(coffer(&p.writer(), &["restore", "--repo", "dev/x", "not-an-id"], None).code(), 64);
    // An id of the wrong length says how long an id is, in digits.
    let short = coffer(&p.writer(), &["restore", "--repo", "dev/x", "0123abcd"], None);
    assert_eq!(short.code(), 64);
    assert!(short.stderr.contains("expected 32 hex digits, got 8"), "{}", short.stderr);
    assert_eq!(coffer(&p.writer(), &["init", "--repo", "../etc"], None).code(), 64);
    assert_eq!(coffer(&p.writer(), &["backup", "--repo", "dev/x", "a", "--", "b"], None).code(), 64);
    let bad = p.dir.join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(p.writer()).unwrap() + "\nsurprise = true\n").unwrap();
    let run = coffer(&bad, &["whoami"], None);
    assert_eq!(run.code(), 64);
    assert!(run.stderr.contains("surprise"), "{}", run.stderr);
    assert_eq!(coffer(&p.writer(), &["--help"], None).code(), 0);
}

#[test]
fn proxy_check_config_and_config_errors() {
    let p = DevProxy::start();
    let proxy = coffer_tests::bin("coffer-proxy");
    let toml = p.dir.join("proxy.toml");
    let ok = std::process::Command::new(&proxy).arg("--config").arg(&toml).arg("--check-config").output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains("dev writer: spiffe://coffer.dev/writer in trust domain dev: roles [writer]"), "{out}");
    assert!(
        out.contains("-> [whoami, put-config, get-config, put-key, missing, put-chunk, commit, put-epoch, list-epochs] on repos [dev/**]"),
        "{out}"
    );

    // --config is global: it works after the subcommand too.
    let after = std::process::Command::new(&proxy).args(["audit", "verify", "--config"]).arg(&toml).output().unwrap();
    assert_eq!(after.status.code(), Some(0), "{}", String::from_utf8_lossy(&after.stderr));
    // Without a config, the proxy says how to get one running.
    let bare = std::process::Command::new(&proxy).env_remove("COFFER_PROXY_CONFIG").output().unwrap();
    assert_eq!(bare.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("coffer-proxy dev --dir"));

    let text = std::fs::read_to_string(&toml).unwrap();
    for (bad, needle) in [
        (format!("{text}\nsurprise = 1\n"), "surprise"),
        (text.replace("repos = [\"dev/**\"]", "repos = [\"**/dev\"]"), "`**` may only be the last segment"),
        (text.replace("\"writer\"]", "\"superuser\"]"), "superuser"),
        (text.replace("master_key = \"master.key\"", "master_key = \"nope.key\""), "nope.key"),
    ] {
        let path = p.dir.join("bad-proxy.toml");
        std::fs::write(&path, bad).unwrap();
        let run = std::process::Command::new(&proxy).arg("--config").arg(&path).arg("--check-config").output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(64), "{needle}: {err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    let run = std::process::Command::new(&proxy).output().unwrap();
    assert_eq!(run.status.code(), Some(64), "no config is a usage error");
}

#[test]
fn sigint_and_sigpipe_stop_cleanly() {
    use std::io::Read as _;
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/sig"], None).ok();

    // SIGINT while the source is still producing: exit 130, no snapshot,
    // and the source command is gone (not left running without a reader).
    let pid_file = p.dir.join("source.pid");
    let script = format!("echo $$ > {}; head -c 3000000 /dev/urandom; exec sleep 30", pid_file.display());
    let child = std::process::Command::new(coffer_tests::bin("coffer"))
        .args(["backup", "--repo", "dev/sig", "--", "sh", "-c", &script])
        .env("COFFER_CONFIG", p.writer())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let source_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the source never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(p.stored("dev/sig/snapshots").is_empty());
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(' ').nth(2).is_none_or(|st| st != "Z"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(source_pid) {
        assert!(std::time::Instant::now() < deadline, "the source command {source_pid} outlived the agent");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // A restore into a pipe closed early (`| head -c 100`): a clear error, exit 1.
    let data = coffer_tests::random_bytes("sigpipe", 4 << 20);
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/sig", "-"], Some(&data)).last_line();
    let mut restore = std::process::Command::new(coffer_tests::bin("coffer"))
        .args(["restore", "--repo", "dev/sig", &id])
        .env("COFFER_CONFIG", p.reader())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    restore.stdout.take().unwrap().read_exact(&mut first).unwrap(); // then the pipe closes
    let out = restore.wait_with_output().unwrap();
    assert_eq!(&first[..], &data[..100]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).to_lowercase().contains("broken pipe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The writer may not list; the refusal says whose config can.
#[test]
fn a_writer_asking_for_the_listing_is_pointed_at_the_readers_config() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/l"], None).ok();
    let run = coffer(&p.writer(), &["snapshots", "--repo", "dev/l"], None);
    assert_eq!(run.code(), 1);
    assert!(run.stderr.contains("403") && run.stderr.contains("use the reader's config"), "{}", run.stderr);
}

/// `coffer-proxy keygen`: a master key the proxy and agents can use, the
/// owner's alone, and never written over an existing one.
#[test]
fn keygen_makes_a_private_master_key_and_never_overwrites_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let proxy = coffer_tests::bin("coffer-proxy");
    let made = std::process::Command::new(&proxy).arg("keygen").arg("--out").arg(&path).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = std::fs::read_to_string(&path).unwrap();
    let kek = coffer_proto::keys::LocalKek::from_file_contents(&text).unwrap();
    assert!(String::from_utf8_lossy(&made.stdout).contains(kek.id()), "it names the key by its id");
    assert!(!String::from_utf8_lossy(&made.stdout).contains(text.lines().nth(1).unwrap()), "never the key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = std::process::Command::new(&proxy).arg("keygen").arg("--out").arg(&path).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the first key is untouched");
}

/// The subcommands a `-h` page lists, and its options without a description.
fn help_page(program: &str, words: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = std::process::Command::new(coffer_tests::bin(program)).args(words).arg("-h").output().unwrap();
    assert!(out.status.success(), "{program} {words:?} -h");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut section = "";
    let (mut commands, mut bare) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line;
            continue;
        }
        let line = line.trim();
        let (name, description) = line.split_once("  ").map_or((line, ""), |(n, d)| (n, d.trim()));
        match section {
            "Commands:" if name != "help" => commands.push(name.to_string()),
            "Options:" | "Arguments:" if description.is_empty() && !line.is_empty() => bare.push(line.to_string()),
            _ => {}
        }
    }
    (commands, bare)
}

#[test]
fn every_command_and_option_says_what_it_is_for() {
    let mut undescribed = Vec::new();
    for program in ["coffer", "coffer-proxy"] {
        let mut pages = vec![vec![]];
        let mut checked = 0;
        while let Some(words) = pages.pop() {
            let words: Vec<String> = words;
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            let (commands, bare) = help_page(program, &args);
            undescribed.extend(bare.into_iter().map(|o| format!("{program} {}: {o}", args.join(" "))));
            pages.extend(commands.into_iter().map(|c| [words.clone(), vec![c]].concat()));
            checked += 1;
        }
        assert!(checked > 10, "{program}: only {checked} help pages");
    }
    assert!(undescribed.is_empty(), "listed without a description:\n{}", undescribed.join("\n"));
    // `send` talks to the daemon's socket: it offers none of the flags that
    // reach the proxy, though it still accepts them.
    let send = std::process::Command::new(coffer_tests::bin("coffer")).args(["send", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&send.stdout);
    for flag in ["--config", "--mfa-code", "--limit-upload", "--progress"] {
        assert!(!text.contains(flag), "send --help offers {flag}:\n{text}");
    }
}
