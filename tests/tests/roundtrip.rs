//! Backups restore bit-exact through real processes over real mTLS, and an
//! unchanged stream deduplicates.

use coffer_tests::{coffer, random_bytes, text_bytes, DevProxy};

const MAX_CHUNK: usize = coffer_proto::CHUNK_MAX as usize;

fn init(p: &DevProxy, repo: &str) {
    coffer(&p.writer(), &["init", "--repo", repo], None).ok();
}

/// Backs `data` up from stdin, restores it to stdout and to a file, and
/// returns the backup's JSON report.
fn round_trip(p: &DevProxy, repo: &str, data: &[u8]) -> serde_json::Value {
    let report = coffer(&p.writer(), &["backup", "--repo", repo, "--json", "-"], Some(data)).json();
    let id = report["id"].as_str().unwrap().to_string();
    assert_eq!(report["bytes_in"], data.len() as u64);

    let out = coffer(&p.reader(), &["restore", "--repo", repo, &id], None);
    out.ok();
    assert!(out.stdout == data, "restore to stdout differs ({} vs {} bytes)", out.stdout.len(), data.len());

    let file = p.dir.join("restored.bin");
    let _ = std::fs::remove_file(&file);
    let to_file = coffer(&p.reader(), &["restore", "--repo", repo, &id, "-o", file.to_str().unwrap()], None);
    to_file.ok();
    assert!(std::fs::read(&file).unwrap() == data, "restore to file differs");
    // It says what it wrote, and the file is the owner's alone.
    let said = format!("restored snapshot {id} to {} ({} bytes, mode 0600", file.display(), data.len());
    assert!(to_file.stderr.contains(&said), "{}", to_file.stderr);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    report
}

#[test]
fn empty_and_tiny_streams() {
    let p = DevProxy::start();
    init(&p, "dev/small");
    let empty = round_trip(&p, "dev/small", b"");
    assert_eq!(empty["chunks"], 0);
    let one = round_trip(&p, "dev/small", b"x");
    assert_eq!(one["chunks"], 1);
    let list = coffer(&p.reader(), &["snapshots", "--repo", "dev/small", "--json"], None).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn exactly_one_max_size_chunk() {
    let p = DevProxy::start();
    init(&p, "dev/max");
    // Zeros never hit a cut point, so the chunker cuts only at the maximum.
    let data = vec![0u8; MAX_CHUNK];
    let report = round_trip(&p, "dev/max", &data);
    assert_eq!(report["chunks"], 1, "{report}");
    let over = round_trip(&p, "dev/max", &vec![0u8; MAX_CHUNK + 1]);
    assert_eq!(over["chunks"], 2, "{over}");
}

#[test]
fn large_mixed_stream_and_unchanged_rebackup() {
    let p = DevProxy::start();
    init(&p, "dev/big");
    let mut data = Vec::with_capacity(104 << 20);
    for i in 0..52u64 {
        data.extend_from_slice(&random_bytes(&format!("block {i}"), 1 << 20));
        data.extend_from_slice(&text_bytes(i * 100_000, 1 << 20));
    }
    assert!(data.len() >= 100 << 20);
    let path = p.dir.join("input.bin");
    std::fs::write(&path, &data).unwrap();

    let first = coffer(&p.writer(), &["backup", "--repo", "dev/big", "--json", path.to_str().unwrap()], None).json();
    assert_eq!(first["bytes_in"], data.len() as u64);
    assert!(first["stored_new"].as_u64().unwrap() < data.len() as u64, "text should compress: {first}");
    let id = first["id"].as_str().unwrap();
    let out = p.dir.join("out.bin");
    coffer(&p.reader(), &["restore", "--repo", "dev/big", id, "-o", out.to_str().unwrap()], None).ok();
    assert_eq!(blake3::hash(&std::fs::read(&out).unwrap()), blake3::hash(&data));

    let second = coffer(&p.writer(), &["backup", "--repo", "dev/big", "--json", path.to_str().unwrap()], None).json();
    let new = second["bytes_new"].as_u64().unwrap() as f64;
    assert!(new < 0.01 * data.len() as f64, "unchanged re-backup uploaded {new} bytes: {second}");
    assert_ne!(second["id"], first["id"]);

    let verified = coffer(&p.reader(), &["verify", "--repo", "dev/big"], None).ok();
    assert_eq!(verified.matches(": ok").count(), 2, "{verified}");
}

/// `init --zstd-level` fixes the repository's level: the same text stored
/// at 19 takes less room than at 1, and both restore. Levels outside 1 to
/// 19 are refused before anything is created.
#[test]
fn the_zstd_level_is_chosen_at_init() {
    let p = DevProxy::start();
    let data = text_bytes(7, 8 << 20);
    let mut stored = Vec::new();
    for level in ["1", "19"] {
        let repo = format!("dev/level-{level}");
        let out = coffer(&p.writer(), &["init", "--repo", &repo, "--zstd-level", level], None).ok();
        assert!(out.contains(&format!("zstd level {level}")), "{out}");
        stored.push(round_trip(&p, &repo, &data)["stored_new"].as_u64().unwrap());
    }
    assert!(stored[1] < stored[0], "level 19 must store less than level 1: {stored:?}");
    for bad in ["0", "20"] {
        let run = coffer(&p.writer(), &["init", "--repo", "dev/level-bad", "--zstd-level", bad], None);
        assert_eq!(run.code(), 64, "--zstd-level {bad} must be a usage error");
        assert!(run.stderr.contains("1..=19"), "{}", run.stderr);
    }
    // Nothing was created: the name is still free.
    coffer(&p.writer(), &["init", "--repo", "dev/level-bad"], None).ok();
}

#[test]
fn command_source_and_restart_reuses_everything() {
    let mut p = DevProxy::start();
    init(&p, "dev/cmd");
    let run = coffer(&p.writer(), &["backup", "--repo", "dev/cmd", "--", "sh", "-c", "seq 1 100000"], None);
    let id = run.last_line();
    let ca = std::fs::read(p.dir.join("ca.pem")).unwrap();

    p.kill();
    let q = DevProxy::start_in(&p.dir);
    assert_eq!(std::fs::read(q.dir.join("ca.pem")).unwrap(), ca, "the CA must survive a restart");
    let out = coffer(&q.reader(), &["restore", "--repo", "dev/cmd", &id], None).ok();
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(out == expected, "restored command output differs");
}

#[test]
fn progress_line_on_a_terminal_only() {
    let p = DevProxy::start();
    init(&p, "dev/tty");
    let data = p.dir.join("data.bin");
    std::fs::write(&data, coffer_tests::random_bytes("tty", 2 << 20)).unwrap();
    let piped = coffer(&p.writer(), &["backup", "--repo", "dev/tty", data.to_str().unwrap()], None);
    piped.ok();
    assert!(!piped.stderr.contains("MiB read"), "no progress line into a pipe: {}", piped.stderr);

    // `script` gives the agent a real terminal.
    let cmd = format!("{} backup --repo dev/tty {}", coffer_tests::bin("coffer").display(), data.display());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("COFFER_CONFIG", p.writer())
        .output()
        .expect("script (util-linux) is part of the base system");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("MiB read") && screen.contains("MiB deduplicated"), "{screen}");

    // Restore and verify draw theirs too, to the whole snapshot's size.
    let id = piped.last_line();
    let restored = p.dir.join("restored.bin");
    let reader = p.reader();
    let bin = coffer_tests::bin("coffer");
    for (args, expected) in [
        (format!("restore --repo dev/tty {id} -o {}", restored.display()), "2.0 of 2.0 MiB restored (100%)"),
        (format!("verify --repo dev/tty {id}"), "snapshot 1 of 1: 2.0 of 2.0 MiB checked (100%)"),
    ] {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{} {args}", bin.display()), "/dev/null"])
            .env("COFFER_CONFIG", &reader)
            .output()
            .unwrap();
        let screen = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && screen.contains(expected), "{args}: {screen}");
    }
    let piped = coffer(&reader, &["verify", "--repo", "dev/tty", &id], None);
    assert!(!piped.ok().is_empty() && !piped.stderr.contains("MiB checked"), "{}", piped.stderr);
}

/// The `--progress json` lines of a run's stderr.
fn status_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message_type"] == "status")
        .collect()
}

#[test]
fn progress_json_lines_for_scripts_count_to_the_end() {
    let p = DevProxy::start();
    init(&p, "dev/prog");
    let data = coffer_tests::random_bytes("progress", 3 << 20);
    let backup =
        coffer(&p.writer(), &["--progress", "json", "backup", "--repo", "dev/prog", "--json", "-"], Some(&data));
    let report = backup.json();
    let last = status_lines(&backup.stderr).pop().unwrap_or_else(|| panic!("no status line: {}", backup.stderr));
    assert_eq!(last["action"], "backup");
    assert_eq!(last["bytes_done"], report["bytes_in"], "{last}");
    assert_eq!(last["bytes_new"], report["bytes_new"], "{last}");
    let first = report["id"].as_str().unwrap().to_string();
    let second = coffer(&p.writer(), &["backup", "--repo", "dev/prog", "-"], Some(&data[..1 << 20])).last_line();

    let file = p.dir.join("out.bin");
    let restore = coffer(
        &p.reader(),
        &["restore", "--repo", "dev/prog", &first, "-o", file.to_str().unwrap(), "--progress", "json"],
        None,
    );
    restore.ok();
    let lines = status_lines(&restore.stderr);
    let last = lines.last().unwrap_or_else(|| panic!("no status line: {}", restore.stderr));
    assert_eq!(last["action"], "restore");
    assert_eq!(last["snapshot"], first.as_str());
    assert_eq!(last["total_bytes"], data.len());
    assert_eq!(last["bytes_done"], data.len());
    assert_eq!(last["percent_done"], 1.0);
    assert!(lines.iter().all(|l| l["bytes_done"].as_u64() <= l["total_bytes"].as_u64()), "{lines:?}");

    // Verify counts each snapshot and says which of how many it is on.
    let verify = coffer(&p.reader(), &["--progress", "json", "verify", "--repo", "dev/prog", "--json"], None);
    let result = verify.json();
    assert_eq!(result["snapshots"].as_array().unwrap().len(), 2, "stdout stays one object: {result}");
    let lines = status_lines(&verify.stderr);
    let ends: Vec<(String, u64, u64)> = lines
        .iter()
        .filter(|l| l["percent_done"] == 1.0)
        .map(|l| {
            (
                l["snapshot"].as_str().unwrap().to_string(),
                l["snapshots_done"].as_u64().unwrap(),
                l["bytes_done"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        ends.contains(&(first.clone(), 0, data.len() as u64)) || ends.contains(&(first.clone(), 1, data.len() as u64)),
        "{ends:?}"
    );
    assert!(ends.iter().any(|(id, _, bytes)| *id == second && *bytes == 1 << 20), "{ends:?}");
    assert!(lines.iter().all(|l| l["action"] == "verify" && l["snapshots_total"] == 2), "{lines:?}");

    // Without the flag, nothing of it where no terminal is.
    let quiet = coffer(&p.reader(), &["verify", "--repo", "dev/prog", &second], None);
    assert!(status_lines(&quiet.stderr).is_empty() && !quiet.ok().is_empty(), "{}", quiet.stderr);
}

/// The benchmark harness drives the real binaries through every phase and
/// refuses a restore that differs; here it only has to work, not be fast.
#[test]
fn the_benchmark_harness_runs_every_phase() {
    let out = std::process::Command::new(coffer_tests::bin("coffer-bench"))
        .args(["e2e", "--generate", "9MiB,mixed", "--peers", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bytes"], 9 << 20);
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(names, ["first backup", "unchanged re-backup", "backup after 1% edit", "restore"]);
    for p in phases {
        assert!(p["mb_per_sec"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["agent_peak_rss_mib"].as_f64().unwrap() > 1.0, "the agent's memory was read: {p}");
        assert!(p["proxy_peak_rss_mib"].as_f64().unwrap() > 1.0, "the proxy's memory was read: {p}");
    }
    // restic and borg each ran the same phases (their restores checked too), or are named as missing.
    let ran: Vec<&str> = report["peers"].as_array().unwrap().iter().map(|p| p["tool"].as_str().unwrap()).collect();
    let missing: Vec<&str> = report["peers_missing"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for tool in ["restic", "borg"] {
        assert!(ran.contains(&tool) != missing.contains(&tool), "{tool}: ran {ran:?}, missing {missing:?}");
    }
    for peer in report["peers"].as_array().unwrap() {
        let phases = peer["phases"].as_array().unwrap();
        assert_eq!(phases.len(), 4, "{peer}");
        assert!(phases.iter().all(|p| p["coffer_ratio"].as_f64().unwrap() > 0.0), "{peer}");
    }

    let missing = std::process::Command::new(coffer_tests::bin("coffer-bench"))
        .args(["e2e", "--data", "/nonexistent/dump.sql"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/dump.sql"));
}

/// `coffer-bench stream` pipes paced, generated streams into agents running
/// at once and samples their memory; here it only has to work and pace.
#[test]
fn the_stream_benchmark_paces_the_producer_and_samples_the_agent() {
    let out = std::process::Command::new(coffer_tests::bin("coffer-bench"))
        .args(["stream", "--generate", "3MB,text", "--rate", "1MB", "--agents", "2", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["agents"].as_u64(), report["bytes"].as_u64()), (Some(2), Some(6_000_000)));
    assert!(report["secs"].as_f64().unwrap() >= 2.5, "3 MB at 1 MB/s took under 3 s: {report}");
    let samples = report["agent_rss_mib"].as_array().unwrap();
    assert!(samples.len() >= 2 && samples.iter().all(|s| s.as_f64().unwrap() > 1.0), "{report}");
}

/// `coffer-bench limit` measures each stage alone and relates a real first
/// backup to the ceiling they set; here it only has to measure all of them.
#[test]
fn the_limit_benchmark_measures_every_stage() {
    let out = std::process::Command::new(coffer_tests::bin("coffer-bench"))
        .args(["limit", "--generate", "8MiB,mixed", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["read", "chunk", "hash", "compress + encrypt", "TLS both ways", "store write (fsync)"]);
    for s in r["stages"].as_array().unwrap() {
        assert!(s["mb_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    }
    let ceiling = r["ceiling"].as_f64().unwrap();
    for part in ["reader_ceiling", "cpu_ceiling", "store_ceiling"] {
        assert!(r[part].as_f64().unwrap() >= ceiling, "the ceiling is the lowest bound: {r}");
    }
    assert!(r["first_backup_mb_per_sec"].as_f64().unwrap() > 0.0 && r["fraction_of_ceiling"].as_f64().unwrap() > 0.0);
}

/// Every command that prints a result has `--json`, one object with the
/// fields docs/operations.md ("JSON output") documents; verify's lists
/// every snapshot, damaged ones included, before it exits 1.
#[test]
fn every_result_has_a_json_form() {
    let p = DevProxy::start();
    let init = coffer(&p.writer(), &["init", "--repo", "dev/js", "--json"], None).json();
    assert_eq!(init["repo"], "dev/js");
    assert_eq!(init["zstd_level"], coffer_proto::repo::DEFAULT_ZSTD_LEVEL);
    assert!(init["chunk_id_kek"].as_str().is_some_and(|k| !k.is_empty()), "{init}");

    let (a, b) = (random_bytes("json a", 3 << 20), random_bytes("json b", 3 << 20));
    let first = coffer(&p.writer(), &["backup", "--repo", "dev/js", "--json", "-"], Some(&a)).json();
    let second = coffer(&p.writer(), &["backup", "--repo", "dev/js", "--json", "-"], Some(&b)).json();
    let (first, second) = (first["id"].as_str().unwrap().to_string(), second["id"].as_str().unwrap().to_string());

    let file = p.dir.join("js.bin");
    let restored =
        coffer(&p.reader(), &["restore", "--repo", "dev/js", &first, "-o", file.to_str().unwrap(), "--json"], None)
            .json();
    assert_eq!(restored["id"], first.as_str());
    assert_eq!(restored["file"], file.to_str().unwrap());
    assert_eq!(restored["bytes"], a.len() as u64);
    assert_eq!(restored["mode"], "0600");
    // Without -o, stdout is the stream: --json is refused as a usage error.
    let refused = coffer(&p.reader(), &["restore", "--repo", "dev/js", &first, "--json"], None);
    assert_eq!(refused.code(), 64, "{}", refused.stderr);

    let verified = coffer(&p.reader(), &["verify", "--repo", "dev/js", "--json"], None).json();
    assert_eq!(verified["repo"], "dev/js");
    let all = verified["snapshots"].as_array().unwrap();
    assert_eq!(all.len(), 2, "{verified}");
    assert!(all.iter().all(|s| s["ok"] == true && s["bytes"].as_u64().unwrap() == (3 << 20)), "{verified}");

    // Damage one chunk only the second snapshot has: both are listed, the
    // second with its problem, and the exit status says so.
    let shared: Vec<std::path::PathBuf> = p.stored("dev/js/chunks");
    let victim = shared.iter().max_by_key(|c| std::fs::metadata(c).unwrap().modified().unwrap()).unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(victim, bytes).unwrap();
    let run = coffer(&p.reader(), &["verify", "--repo", "dev/js", "--json"], None);
    assert_eq!(run.code(), 1, "{}", run.stderr);
    let verified: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let by_id = |id: &str| verified["snapshots"].as_array().unwrap().iter().find(|s| s["id"] == id).cloned().unwrap();
    assert_eq!(by_id(&first)["ok"], true, "{verified}");
    assert_eq!(by_id(&second)["ok"], false, "{verified}");
    assert!(by_id(&second)["problem"].as_str().is_some_and(|p| !p.is_empty()), "{verified}");

    let rotated = coffer(&p.writer(), &["key", "rotate", "--repo", "dev/js", "--json"], None).json();
    assert_eq!(rotated["repo"], "dev/js");
    assert_eq!(rotated["epoch"].as_str().map(str::len), Some(32), "{rotated}");
}

/// `verify --read-data-subset N/M` reads one group of chunk ids: the M
/// groups together read every data chunk once, and exactly the group that
/// holds a damaged chunk fails. `100%` reads everything; nonsense is a
/// usage error.
#[test]
fn verify_reads_a_subset_and_the_groups_together_read_everything() {
    let p = DevProxy::start();
    init(&p, "dev/sub");
    let data = random_bytes("subset", 8 << 20);
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/sub", "-"], Some(&data)).last_line();
    let full = coffer(&p.reader(), &["verify", "--repo", "dev/sub", "--json"], None).json();
    let data_chunks = full["snapshots"][0]["chunks"].as_u64().unwrap();
    assert!(data_chunks >= 3, "{full}");

    let group = |n: u64, expect_ok: bool| {
        let subset = format!("{n}/3");
        let run = coffer(&p.reader(), &["verify", "--repo", "dev/sub", "--read-data-subset", &subset, "--json"], None);
        assert_eq!(run.code(), if expect_ok { 0 } else { 1 }, "{subset}: {}", run.stderr);
        let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        v["snapshots"][0].clone()
    };
    let read: u64 = (1..=3).map(|n| group(n, true)["chunks"].as_u64().unwrap()).sum();
    assert_eq!(read, data_chunks, "the three groups read each data chunk once");

    // Damage the largest chunk (a data chunk; the manifest is small).
    let victim = p.stored("dev/sub/chunks").into_iter().max_by_key(|c| std::fs::metadata(c).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let results: Vec<serde_json::Value> = (1..=3)
        .map(|n| {
            let subset = format!("{n}/3");
            let run =
                coffer(&p.reader(), &["verify", "--repo", "dev/sub", "--read-data-subset", &subset, "--json"], None);
            serde_json::from_slice::<serde_json::Value>(&run.stdout).unwrap()["snapshots"][0].clone()
        })
        .collect();
    let failed: Vec<&serde_json::Value> = results.iter().filter(|r| r["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "exactly one group holds the damaged chunk: {results:?}");
    assert!(failed[0]["problem"].as_str().unwrap().contains(&name), "{failed:?}");
    let all = coffer(&p.reader(), &["verify", "--repo", "dev/sub", &id, "--read-data-subset", "100%"], None);
    assert_eq!(all.code(), 1, "{}", all.stderr);

    for nonsense in ["0/3", "4/3", "1/0", "0%", "101%", "half"] {
        let run = coffer(&p.reader(), &["verify", "--repo", "dev/sub", "--read-data-subset", nonsense], None);
        assert_eq!(run.code(), 64, "{nonsense}: {}", run.stderr);
    }
}

/// `--limit-upload` and `--limit-download` hold a backup and a restore to
/// the set rate: each chunk waits its turn on a timeline at that rate, so
/// the run takes at least the time of all but its last chunk at the limit
/// (within 20%), and not much more than all of it.
#[test]
fn bandwidth_limits_hold_backup_and_restore_to_their_rate() {
    let p = DevProxy::start();
    init(&p, "dev/slow");
    let data = random_bytes("limited", 12 << 20);
    let rate = 2048.0 * 1024.0; // --limit-* 2048 KiB/s
    let t0 = std::time::Instant::now();
    let report =
        coffer(&p.writer(), &["--limit-upload", "2048", "backup", "--repo", "dev/slow", "--json", "-"], Some(&data))
            .json();
    let up = t0.elapsed().as_secs_f64();
    let stored = report["stored_new"].as_u64().unwrap() as f64;
    let largest = p.stored("dev/slow/chunks").iter().map(|c| std::fs::metadata(c).unwrap().len()).max().unwrap() as f64;
    let (least, most) = ((stored - largest) / rate, stored / rate);
    assert!(up >= 0.8 * least, "uploaded {stored} bytes in {up:.2} s, faster than 2048 KiB/s allows ({least:.2} s)");
    // Loose: a loaded machine adds its own time to the limit's.
    assert!(up <= 2.0 * most + 10.0, "uploaded {stored} bytes in {up:.2} s at a 2048 KiB/s limit (~{most:.2} s)");

    let id = report["id"].as_str().unwrap();
    let t0 = std::time::Instant::now();
    let restored = coffer(&p.reader(), &["--limit-download", "2048", "restore", "--repo", "dev/slow", id], None);
    let down = t0.elapsed().as_secs_f64();
    assert!(restored.stdout == data);
    let (least, most) = ((data.len() as f64 - largest) / rate, data.len() as f64 / rate);
    assert!(down >= 0.8 * least, "restored in {down:.2} s, faster than 2048 KiB/s allows ({least:.2} s)");
    assert!(down <= 2.0 * most + 10.0, "restored in {down:.2} s at a 2048 KiB/s limit (~{most:.2} s)");

    // Without a limit the same backup is faster (so the limit, not the
    // machine, set the pace above).
    let t0 = std::time::Instant::now();
    coffer(&p.writer(), &["backup", "--repo", "dev/slow", "-"], Some(&random_bytes("unlimited", 12 << 20))).ok();
    let free = t0.elapsed().as_secs_f64();
    assert!(free < up, "an unlimited backup took {free:.2} s, the limited one {up:.2} s");
}

/// Past `PACK_MIN` snapshots, the first listing leaves a listing pack
/// behind, and the next lists the very same from it without fetching any
/// root or key record one by one.
#[test]
fn a_listing_of_many_snapshots_reads_their_roots_from_a_pack() {
    let p = DevProxy::start();
    init(&p, "dev/many");
    let n = coffer_proxy::api::packs::PACK_MIN + 1;
    for i in 0..n {
        coffer(&p.writer(), &["backup", "--repo", "dev/many", "--json", "-"], Some(format!("stream {i}").as_bytes()))
            .ok();
    }
    let list = || coffer(&p.reader(), &["snapshots", "--repo", "dev/many", "--json"], None).json();
    let first = list();
    assert_eq!(first.as_array().unwrap().len(), n, "{first}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while p.stored("dev/many/index/packs").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no listing pack was written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let fetched =
        || p.audit_events().iter().filter(|e| e["action"] == "get-snapshot" || e["action"] == "get-key").count();
    let before = fetched();
    assert!(before >= 2 * n, "the first listing fetched each root and key: {before}");
    let second = list();
    assert_eq!(second, first, "the pack lists the same snapshots, names and sizes");
    assert_eq!(fetched(), before, "no root or key was fetched one by one");
    // The listing's audit event says what left with it.
    let said = format!("{n} roots and their key records copied from listing packs");
    p.wait_for_event("the listing's copies", |e| e["action"] == "list-snapshots" && e["reason"] == said.as_str());

    // Copies go only to who asks and may read roots and keys: never to an
    // auditor, who sees the same listing without them.
    let repo: coffer_proto::RepoName = "dev/many".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed = |who: &str, ask: bool| {
        rt.block_on(async {
            let client = coffer_tests::raw_client(&p.config(who)).await;
            match ask {
                true => client.list_snapshots_with_roots(&repo).await.unwrap(),
                false => client.list_snapshots(&repo).await.unwrap(),
            }
        })
    };
    let copies = |v: &[coffer_proto::api::SnapshotInfo]| v.iter().filter(|i| i.root.is_some()).count();
    assert_eq!(copies(&listed("reader", true)), n);
    assert_eq!(copies(&listed("reader", false)), 0, "not asked for");
    let audited = listed("auditor", true);
    assert_eq!((audited.len(), copies(&audited)), (n, 0), "an auditor gets metadata only");
}
