//! Faults: a proxy killed mid-backup, a proxy that stays down, an agent
//! killed mid-run, replays, hostile input, and many agents at once.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer_tests::{bin, coffer, coffer_with_env, free_port, random_bytes, raw_client, DevProxy};

/// A running `coffer backup -- sh -c SCRIPT`, to be waited on or killed.
fn spawn_backup(p: &DevProxy, repo: &str, script: &str, deadline_secs: u64) -> std::process::Child {
    Command::new(bin("coffer"))
        .args(["backup", "--repo", repo, "--json", "--", "sh", "-c", script])
        .env("COFFER_CONFIG", p.writer())
        .env("COFFER_RETRY_DEADLINE_SECS", deadline_secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_chunks(p: &DevProxy, prefix: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.stored(prefix).len() < n {
        assert!(Instant::now() < deadline, "only {} chunks arrived", p.stored(prefix).len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two 12 MiB random halves in files, and a script that sends the first,
/// pauses, then sends the second.
fn two_halves(p: &DevProxy, pause: u32) -> (Vec<u8>, String) {
    halves(p, pause, "")
}

/// As [`two_halves`], with data distinct for each `label`.
fn halves(p: &DevProxy, pause: u32, label: &str) -> (Vec<u8>, String) {
    let (a, b) =
        (random_bytes(&format!("first half{label}"), 12 << 20), random_bytes(&format!("second half{label}"), 12 << 20));
    let d = p.dir.display();
    std::fs::write(p.dir.join(format!("a{label}.bin")), &a).unwrap();
    std::fs::write(p.dir.join(format!("b{label}.bin")), &b).unwrap();
    let script = format!("cat {d}/a{label}.bin; sleep {pause}; cat {d}/b{label}.bin");
    ([a, b].concat(), script)
}

#[test]
fn proxy_killed_mid_backup_the_agent_resumes_and_completes() {
    let addr = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let mut p = DevProxy::start_at(tmp.path(), &addr, "warn");
    coffer(&p.writer(), &["init", "--repo", "dev/k"], None).ok();
    let (data, script) = two_halves(&p, 3);
    let backup = spawn_backup(&p, "dev/k", &script, 60);
    wait_for_chunks(&p, "dev/k/chunks", 8);

    p.kill(); // SIGKILL, with the backup still running
    std::thread::sleep(Duration::from_millis(500));
    let p = DevProxy::start_at(tmp.path(), &addr, "warn");

    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bytes_in"], data.len() as u64);
    // Counted at the proxy, which audits every chunk PUT before it answers
    // (the agent's own count sits below its retries): a chunk whose answer
    // was acknowledged is never sent again, so only the uploads in flight
    // when the proxy died may arrive twice.
    let mut puts: std::collections::HashMap<String, usize> = Default::default();
    for e in p.audit_events().iter().filter(|e| e["action"] == "put-chunk") {
        *puts.entry(e["object"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let twice: Vec<_> = puts.iter().filter(|(_, n)| **n > 1).collect();
    for chunk in p.stored("dev/k/chunks") {
        let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            continue; // a write the SIGKILL cut short: never linked in, so no object
        }
        assert!(puts.contains_key(name.split('.').next().unwrap()), "{name} is stored with no PUT audited");
    }
    assert!(puts.len() >= 8, "{} chunks uploaded", puts.len());
    assert!(
        twice.len() <= coffer_agent::config::DEFAULT_UPLOADS_IN_FLIGHT,
        "acknowledged chunks were sent again: {twice:?}"
    );
    assert!(puts.values().all(|n| *n <= 2), "a chunk sent more than twice: {twice:?}");
    let id = report["id"].as_str().unwrap();
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/k", id], None);
    restored.ok();
    assert!(restored.stdout == data, "the resumed backup must restore bit-exact");
}

#[test]
fn a_proxy_that_stays_down_leaves_no_snapshot() {
    let addr = format!("127.0.0.1:{}", free_port());
    let tmp = tempfile::tempdir().unwrap();
    let mut p = DevProxy::start_at(tmp.path(), &addr, "warn");
    coffer(&p.writer(), &["init", "--repo", "dev/d"], None).ok();
    let (_, script) = two_halves(&p, 2);
    let backup = spawn_backup(&p, "dev/d", &script, 2);
    wait_for_chunks(&p, "dev/d/chunks", 8);
    p.kill();

    let out = backup.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshot was committed"), "{err}");
    assert!(out.stdout.is_empty());

    let p = DevProxy::start_at(tmp.path(), &addr, "warn");
    let list = coffer(&p.reader(), &["snapshots", "--repo", "dev/d", "--json"], None).json();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn an_agent_killed_mid_run_commits_nothing_and_the_next_run_dedups() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/a"], None).ok();
    let (data, script) = two_halves(&p, 30);
    let mut backup = spawn_backup(&p, "dev/a", &script, 10);
    // The chunker holds up to one maximum chunk while the source pauses, so
    // only part of the first half is out when the agent dies.
    wait_for_chunks(&p, "dev/a/chunks", 2);
    std::thread::sleep(Duration::from_millis(300));
    backup.kill().unwrap();
    backup.wait().unwrap();
    assert!(p.stored("dev/a/snapshots").is_empty(), "a killed agent must leave no snapshot");
    let stored_before = p.stored("dev/a/chunks").len() as u64;

    let again = coffer(&p.writer(), &["backup", "--repo", "dev/a", "--json", "-"], Some(&data)).json();
    let (uploaded, chunks) = (again["chunks_new"].as_u64().unwrap(), again["chunks"].as_u64().unwrap());
    // Every chunk stored before the kill is reused: only the rest (and the
    // manifest) is uploaded.
    assert_eq!(uploaded + stored_before, chunks + 1, "{again}");
}

/// `chattr +i` on a folder: not even root can add to it. Undone on drop.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("chattr").arg("+i").arg(dir).status().unwrap();
        assert!(status.success(), "chattr +i {} (root, on a file system with attributes)", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// The proxy fails between a commit's two writes (index segment, then
/// root): the repository's `snapshots` folder made immutable makes the
/// root's write fail for real while reads work. No snapshot is visible
/// meanwhile, and once the store is writable again the agent's retry of the
/// same commit completes with the index already there.
#[test]
fn a_commit_cut_between_index_and_root_leaves_no_snapshot_and_its_retry_completes() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/c"], None).ok();
    let snapshots = p.objects().join("dev/c/snapshots");
    assert!(!snapshots.exists());
    let frozen = Immutable::new(&snapshots);
    let data = random_bytes("cut commit", 3 << 20);
    let source = p.dir.join("cut-commit.bin");
    std::fs::write(&source, &data).unwrap();
    let backup = spawn_backup(&p, "dev/c", &format!("cat {}", source.display()), 60);

    let failed = p.wait_for_event("failed commit", |e| e["action"] == "commit" && e["outcome"] == "error");
    let index = p.stored("dev/c/index");
    assert_eq!(index.len(), 1, "the index segment is written before the root: {failed}");
    let snapshot = index[0].file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(failed["object"], snapshot.as_str(), "{failed}");
    let listed = coffer(&p.reader(), &["snapshots", "--repo", "dev/c", "--json"], None).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "an index without a root is no snapshot: {listed}");

    drop(frozen);
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["id"], snapshot.as_str(), "the retry commits the same snapshot: {done}");
    assert_eq!(p.stored("dev/c/index").len(), 1);
    let restored = coffer(&p.reader(), &["restore", "--repo", "dev/c", &snapshot], None);
    assert!(restored.stdout == data, "the snapshot must restore bit-exact");
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_uploads_and_commits_change_nothing() {
    use coffer_proto::snapshot::{CommitRequest, IndexSegment};
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/r"], None).ok();
    let id =
        coffer(&p.writer(), &["backup", "--repo", "dev/r", "-"], Some(&random_bytes("replay", 3 << 20))).last_line();
    let before: Vec<(std::path::PathBuf, Vec<u8>)> =
        p.stored("dev/r").into_iter().map(|f| (f.clone(), std::fs::read(f).unwrap())).collect();
    let client = raw_client(&p.writer()).await;
    let repo: coffer_proto::RepoName = "dev/r".parse().unwrap();

    // A captured chunk upload, sent again.
    let chunk = p.stored("dev/r/chunks").remove(0);
    let chunk_id: coffer_proto::ChunkId = chunk.file_name().unwrap().to_str().unwrap().parse().unwrap();
    client.put_chunk(&repo, &chunk_id, std::fs::read(&chunk).unwrap().into()).await.unwrap();

    // A captured commit, sent again: same root, same chunks.
    let root = std::fs::read(p.dir.join(format!("store/objects/dev/r/snapshots/{id}"))).unwrap();
    let index =
        IndexSegment::decode(&std::fs::read(p.dir.join(format!("store/objects/dev/r/index/{id}"))).unwrap()).unwrap();
    let commit = CommitRequest {
        snapshot: id.parse().unwrap(),
        root,
        stats: index.stats,
        chunks: index.chunks.iter().map(|e| e.id).collect(),
    };
    let info = client.commit(&repo, commit.encode()).await.unwrap();
    assert_eq!(info.id.to_string(), id);

    let after: Vec<(std::path::PathBuf, Vec<u8>)> =
        p.stored("dev/r").into_iter().map(|f| (f.clone(), std::fs::read(f).unwrap())).collect();
    assert_eq!(before, after, "replays must not add or change any object");
    let list = coffer(&p.reader(), &["snapshots", "--repo", "dev/r", "--json"], None).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// A writer lying in its commit's stats (which feed the listing, the
/// report and the ransomware detector) is refused; the same commit with
/// the stats its agent reported is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_stats_contradict_its_chunks_is_refused() {
    use coffer_proto::snapshot::{CommitRequest, IndexSegment, SnapshotStats};
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/s"], None).ok();
    let id =
        coffer(&p.writer(), &["backup", "--repo", "dev/s", "-"], Some(&random_bytes("stats", 3 << 20))).last_line();
    let client = raw_client(&p.writer()).await;
    let repo: coffer_proto::RepoName = "dev/s".parse().unwrap();
    let root = std::fs::read(p.dir.join(format!("store/objects/dev/s/snapshots/{id}"))).unwrap();
    let index =
        IndexSegment::decode(&std::fs::read(p.dir.join(format!("store/objects/dev/s/index/{id}"))).unwrap()).unwrap();
    let commit = |stats: SnapshotStats| CommitRequest {
        snapshot: coffer_proto::SnapshotId::random(),
        root: root.clone(),
        stats,
        chunks: index.chunks.iter().map(|e| e.id).collect(),
    };
    let max = SnapshotStats {
        bytes_in: u64::MAX,
        bytes_new: u64::MAX,
        stored_new: u64::MAX,
        chunks: u64::MAX,
        chunks_new: u64::MAX,
    };
    let hidden = SnapshotStats { stored_new: index.stats.stored_new * 1000, ..index.stats };
    for lie in [max, hidden] {
        let e = client.commit(&repo, commit(lie).encode()).await.unwrap_err();
        assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
        assert!(e.to_string().contains("contradict"), "{e}");
    }
    client.commit(&repo, commit(index.stats).encode()).await.expect("the agent's own stats");
    // (The copied root fails authentication under its new id on restore;
    // the proxy cannot know, and that is not what this test is about.)
    assert_eq!(p.stored("dev/s/snapshots").len(), 2, "no lying commit was recorded");
    assert_eq!(p.stored("dev/s/index").len(), 2, "no lying commit left an index segment");
}

/// A writer that uploads new data (say, what ransomware encrypted) and
/// commits it claiming nothing is new: the proxy records what it saw the
/// writer store since its last commit, not the claim, so the report and
/// the detector see the upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_calls_its_uploads_old_is_recorded_with_what_was_uploaded() {
    use coffer_proto::snapshot::{CommitRequest, IndexSegment, SnapshotStats};
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/u"], None).ok();
    let id = coffer(&p.writer(), &["backup", "--repo", "dev/u", "-"], Some(b"a first snapshot")).last_line();
    let root = std::fs::read(p.dir.join(format!("store/objects/dev/u/snapshots/{id}"))).unwrap();
    let first =
        IndexSegment::decode(&std::fs::read(p.dir.join(format!("store/objects/dev/u/index/{id}"))).unwrap()).unwrap();
    // A run that uploads random data and stops before its commit (the
    // chunk still open when its source fails is not uploaded).
    let file = p.dir.join("encrypted");
    std::fs::write(&file, random_bytes("ransomed", 6 << 20)).unwrap();
    let source = format!("cat {}; sleep 3; exit 3", file.display());
    let failed = coffer(&p.writer(), &["backup", "--repo", "dev/u", "--", "sh", "-c", &source], None);
    assert_ne!(failed.code(), 0);
    let known: Vec<String> = first.chunks.iter().map(|e| e.id.to_string()).collect();
    let (uploaded, sizes): (Vec<coffer_proto::ChunkId>, Vec<u64>) = p
        .stored("dev/u/chunks")
        .iter()
        .filter_map(|f| Some((f.file_name()?.to_str()?.parse().ok()?, std::fs::metadata(f).ok()?.len())))
        .filter(|(id, _): &(coffer_proto::ChunkId, u64)| !known.contains(&id.to_string()))
        .unzip();
    assert!(!uploaded.is_empty(), "the failed run uploaded nothing");
    let claimed =
        SnapshotStats { bytes_in: 4 << 20, bytes_new: 0, stored_new: 0, chunks: uploaded.len() as u64, chunks_new: 0 };
    let commit =
        CommitRequest { snapshot: coffer_proto::SnapshotId::random(), root, stats: claimed, chunks: uploaded.clone() };
    let client = raw_client(&p.writer()).await;
    let info = client.commit(&"dev/u".parse().unwrap(), commit.encode()).await.unwrap();
    assert_eq!(info.stats.chunks_new, uploaded.len() as u64, "{:?}", info.stats);
    assert_eq!(info.stats.stored_new, sizes.iter().sum::<u64>(), "the envelopes it stored: {:?}", info.stats);
    // (Its copied root does not open under the new id, so no agent lists
    // it; the index segment is what the report and the detector read.)
    let index = std::fs::read(p.dir.join(format!("store/objects/dev/u/index/{}", info.id))).unwrap();
    assert_eq!(IndexSegment::decode(&index).unwrap().stats, info.stats);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_a_clear_answer_and_the_proxy_keeps_serving() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/h"], None).ok();
    let client = raw_client(&p.writer()).await;
    let id = "ab".repeat(32);

    // Oversized body.
    let big = vec![0u8; coffer_proto::ENVELOPE_MAX + 1];
    let err = client.raw(http::Method::PUT, &format!("/v1/repos/dev/h/chunks/{id}"), big, None).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(413), "{err}");
    // A dedup query of more ids than one request may make the store look up.
    let ids = vec![0u8; (coffer_proto::endpoint::MISSING_IDS_MAX + 1) * 32];
    let err = client.raw(http::Method::POST, "/v1/repos/dev/h/chunks/missing", ids, None).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(413), "{err}");
    // A body of the wrong type, or with an empty one.
    let sealed = vec![0u8; 1024];
    for content_type in ["text/plain", "application/json", ""] {
        let header = Some(("content-type", content_type.to_string()));
        let path = format!("/v1/repos/dev/h/chunks/{id}");
        let err = client.raw(http::Method::PUT, &path, sealed.clone(), header).await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(415), "{content_type:?}: {err}");
    }
    let event = p.wait_for_event("wrong media type", |e| {
        e["outcome"] == "invalid" && e["reason"].as_str().is_some_and(|r| r.contains("\"text/plain\""))
    });
    assert_eq!(event["action"], "put-chunk", "{event}");
    assert!(event["reason"].as_str().unwrap().contains("is application/octet-stream"), "{event}");
    // Invalid ids and unknown endpoints.
    for (path, status) in
        [("/v1/repos/dev/h/chunks/zz", 400), ("/v1/repos/dev/h/keys/1234", 400), ("/v1/nope", 404), ("/", 404)]
    {
        let err = client.raw(http::Method::PUT, path, vec![], None).await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{path}: {err}");
    }
    // A huge header.
    let huge = client.raw(http::Method::GET, "/v1/whoami", vec![], Some(("x-junk", "a".repeat(1 << 20)))).await;
    // Refused by the proxy itself (HTTP/2's answer to an oversized header
    // list is GOAWAY ENHANCE_YOUR_CALM), not failed on this side.
    let huge = format!("{:?}", huge.expect_err("a 1 MiB header must be refused"));
    assert!(huge.contains("header_list") && huge.contains("ENHANCE_YOUR_CALM") && huge.contains("Remote"), "{huge}");

    // TLS garbage and plain HTTP on the TLS port: each is refused (its own
    // denied handshake event) and the proxy hangs up rather than waiting.
    let denied = |p: &DevProxy| {
        p.audit_events().iter().filter(|e| e["action"] == "handshake" && e["outcome"] == "denied").count()
    };
    // (A whole TLS record of garbage: a record cut short would be waited
    // for until the handshake timeout.)
    for junk in [&b"\x16\x03\x01\x00\x18garbage-garbage-garbage!"[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let before = denied(&p);
        let mut s = std::net::TcpStream::connect(&p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 256];
        loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // a TLS alert, then the close
                Err(e) => {
                    assert!(
                        !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                        "the proxy kept a junk connection open: {e}"
                    );
                    break;
                }
            }
        }
        let junk_text = String::from_utf8_lossy(junk).to_string();
        p.wait_for_event(&junk_text, |_| denied(&p) > before);
    }

    // Still serving, on a fresh connection too, and nothing was stored.
    raw_client(&p.writer()).await.whoami().await.unwrap();
    coffer(&p.writer(), &["whoami"], None).ok();
    assert!(p.stored("dev/h/chunks").is_empty());
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK block for `PUT path` without Huffman coding or indexing
/// (RFC 7541 §6.2.2, names from the static table), so no encoder is needed.
fn hpack_put(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x87]; // :scheme https (indexed)
    for (name_index, value) in [(2u8, "PUT"), (4, path), (1, authority)] {
        assert!(value.len() < 127);
        block.extend([name_index, value.len() as u8]);
        block.extend(value.as_bytes());
    }
    block
}

/// A client that opens more streams than the proxy advertises, which no
/// HTTP/2 library will do, so the frames are written by hand: the proxy
/// closes the connection with GOAWAY ENHANCE_YOUR_CALM and records it.
#[tokio::test]
async fn too_many_streams_close_the_connection_with_an_audit_event() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const STREAMS: u32 = 200;
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/s"], None).ok();
    let cfg = coffer_client::ClientConfig::load(&p.writer()).unwrap();
    let mut tls = coffer_client::tls_stream(&cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // Preface and empty SETTINGS, then every HEADERS frame in one write:
    // chunk uploads whose bodies never come, so each stream stays open.
    let mut burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..STREAMS {
        let path = format!("/v1/repos/dev/s/chunks/{:064x}", i + 1);
        burst.extend(h2_frame(0x1, 0x4, 2 * i + 1, &hpack_put(&path, &p.addr)));
    }
    tls.write_all(&burst).await.unwrap();
    tls.flush().await.unwrap();

    // Read frames until the proxy hangs up, noting a GOAWAY's error code.
    let mut goaway = None;
    let read_all = async {
        let mut header = [0u8; 9];
        while tls.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                break;
            }
            if header[3] == 0x7 && len >= 8 {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    assert!(closed.is_ok(), "the proxy must close a connection that opens too many streams");
    assert_eq!(goaway, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM expected");

    let event = p.wait_for_event("too many streams", |e| e["action"] == "connection");
    assert_eq!(event["outcome"], "denied", "{event}");
    assert_eq!(event["identity"], "spiffe://coffer.dev/writer", "{event}");
    assert!(event["reason"].as_str().unwrap().contains("ENHANCE_YOUR_CALM"), "{event}");
    // Nothing was stored, and everyone, the same identity included, carries on.
    assert!(p.stored("dev/s/chunks").is_empty());
    coffer(&p.writer(), &["backup", "--repo", "dev/s", "-"], Some(b"still serving")).ok();
}

/// 32 agents of one identity at once. Each connects, then waits at a
/// barrier for its data, so all 32 are open at the same moment; none may
/// need a retry (the harness fails a run whose agent retried), and the
/// proxy refuses none of their requests.
#[test]
fn thirty_two_agents_at_once() {
    const AGENTS: usize = 32;
    // 32 agents of one identity keep more than the default 64 requests of
    // it in flight at once on a slow machine: that bound is another test's.
    let p = DevProxy::start().restarted(|text| format!("{text}\n[limits]\nidentity_in_flight = 1024\n"));
    coffer(&p.writer(), &["init", "--repo", "dev/load"], None).ok();
    let go = p.dir.join("go");
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let runs: Vec<_> = (0..AGENTS)
        .map(|i| {
            let data = random_bytes(&format!("agent {i}"), (1 << 20) + i * 4096);
            let file = p.dir.join(format!("agent-{i}.bin"));
            std::fs::write(&file, &data).unwrap();
            // The agent runs its command once it has opened the repository
            // (connected): the ready file says so.
            let ready_file = p.dir.join(format!("ready-{i}"));
            let script = format!(
                "touch {r}; while [ ! -e {g} ]; do sleep 0.05; done; cat {f}",
                r = ready_file.display(),
                g = go.display(),
                f = file.display()
            );
            let (writer, ready) = (p.writer(), ready.clone());
            std::thread::spawn(move || {
                ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let r = coffer_with_env(
                    &writer,
                    &["backup", "--repo", "dev/load", "--", "sh", "-c", &script],
                    None,
                    &[("COFFER_RETRY_DEADLINE_SECS", "120")],
                );
                (data, r, Instant::now())
            })
        })
        .collect();
    let connected = || (0..AGENTS).filter(|i| p.dir.join(format!("ready-{i}")).exists()).count();
    while ready.load(std::sync::atomic::Ordering::SeqCst) < AGENTS || connected() < AGENTS {
        assert!(started.elapsed() < Duration::from_secs(120), "{} of {AGENTS} agents connected", connected());
        std::thread::sleep(Duration::from_millis(20));
    }
    // All 32 are connected and waiting: none can finish before this.
    let released = Instant::now();
    std::fs::write(&go, b"").unwrap();
    let mut done = Vec::new();
    for run in runs {
        let (data, r, ended) = run.join().unwrap();
        assert!(ended > released, "an agent finished before the barrier opened");
        done.push((data, r.last_line()));
    }
    let refused: Vec<_> = p.audit_events().into_iter().filter(|e| e["outcome"] == "denied").collect();
    assert!(refused.is_empty(), "the proxy refused requests of the 32: {refused:#?}");
    assert!(started.elapsed() < Duration::from_secs(300));
    for (data, id) in &done {
        let restored = coffer(&p.reader(), &["restore", "--repo", "dev/load", id], None);
        restored.ok();
        assert!(&restored.stdout == data, "snapshot {id} differs");
    }
    let out = Command::new(bin("coffer-proxy"))
        .arg("--config")
        .arg(p.dir.join("proxy.toml"))
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A tmpfs of `mib` MiB mounted on `dir` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, mib: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs needs root (the tests and CI run as root)");
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_commits_nothing_and_leaves_no_partial_object() {
    let tmp = tempfile::tempdir().unwrap();
    let _disk = SmallDisk::mount(&tmp.path().join("store"), 6);
    let p = DevProxy::start_in(tmp.path());
    coffer(&p.writer(), &["init", "--repo", "dev/full"], None).ok();
    let run = coffer_tests::coffer_retrying(
        &p.writer(),
        &["backup", "--repo", "dev/full", "-"],
        Some(&random_bytes("full", 16 << 20)),
    );
    assert_eq!(run.code(), 1);
    assert!(run.retries() > 0, "a full disk is a store error the agent retries: {}", run.stderr);
    assert!(run.stderr.contains("no snapshot was committed"), "{}", run.stderr);
    assert!(p.stored("dev/full/snapshots").is_empty());

    // Every object that is there is whole, and no temporary file is left.
    // A chunk's size must be the size of the body the proxy received for
    // it (audited before it was written); where its lock file exists, its
    // bytes must also match the digest recorded at write time. The disk may
    // fill between an object and its lock file (such an object counts as
    // locked forever), but only for the uploads in flight at that moment.
    // The agent gave up with uploads still open; the proxy may finish
    // writing them after it exits. Read once the store has settled.
    let mut last = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = p.stored("dev/full");
        let temporary = now.iter().any(|o| o.file_name().unwrap().to_string_lossy().starts_with(".tmp-"));
        if now == last && !temporary {
            break;
        }
        last = now;
    }
    let sent: std::collections::HashMap<String, u64> = p
        .audit_events()
        .iter()
        .filter(|e| e["action"] == "put-chunk")
        .map(|e| (e["object"].as_str().unwrap().to_string(), e["bytes"].as_u64().unwrap()))
        .collect();
    let objects = p.stored("dev/full");
    let chunks = objects.iter().filter(|o| o.to_string_lossy().contains("/chunks/")).count();
    assert!(chunks > 0, "the disk filled before any chunk: {objects:?}");
    let mut unlocked = 0;
    for obj in &objects {
        let name = obj.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with(".tmp-"), "a temporary file was left: {}", obj.display());
        let bytes = std::fs::read(obj).unwrap();
        let rel = obj.strip_prefix(p.objects()).unwrap();
        if rel.to_string_lossy().contains("/chunks/") {
            let id = name.split('.').next().unwrap();
            let expected = sent.get(id).unwrap_or_else(|| panic!("{} was stored with no PUT audited", obj.display()));
            assert_eq!(bytes.len() as u64, *expected, "{} is not whole", obj.display());
        }
        match std::fs::read(p.dir.join("store/locks").join(rel)) {
            Ok(lock) => {
                let lock: serde_json::Value = serde_json::from_slice(&lock).unwrap();
                let digest = blake3::hash(&bytes).to_hex().to_string();
                assert_eq!(lock["blake3"], digest.as_str(), "{} is not whole", obj.display());
            }
            Err(_) => {
                assert!(rel.to_string_lossy().contains("/chunks/"), "{} has no lock", obj.display());
                unlocked += 1;
            }
        }
    }
    assert!(unlocked <= coffer_agent::config::DEFAULT_UPLOADS_IN_FLIGHT, "{unlocked} objects without a lock");
    // And the proxy still answers.
    coffer(&p.writer(), &["whoami"], None).ok();
}

/// The writer's config, but reaching the proxy through `relay`.
fn via_relay(p: &DevProxy, relay: &coffer_tests::TcpRelay, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(p.writer()).unwrap().replace(&p.addr, &relay.addr);
    let path = p.dir.join(format!("relay-{}.toml", relay.addr.replace(':', "-")));
    std::fs::write(&path, format!("{extra}\n{text}")).unwrap();
    path
}

fn backup_through(config: &std::path::Path, repo: &str, script: &str) -> std::process::Child {
    Command::new(bin("coffer"))
        .args(["backup", "--repo", repo, "--json", "--", "sh", "-c", script])
        .env("COFFER_CONFIG", config)
        .env("COFFER_RETRY_DEADLINE_SECS", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cut_or_stalled_connection_is_reestablished_and_the_backup_completes() {
    let p = DevProxy::start();
    coffer(&p.writer(), &["init", "--repo", "dev/net"], None).ok();
    for (what, repo) in [("cut", "dev/net"), ("freeze", "dev/net")] {
        let relay = coffer_tests::TcpRelay::start(&p.addr);
        // Pings every second, so a frozen connection is given up in ~7 s.
        let config = via_relay(&p, &relay, "keepalive_secs = 1");
        // The second half waits for a go file made just after the cut, so
        // the backup is still running when its connection goes. The first
        // half may all be sent by then, leaving nothing in flight: an idle
        // agent connects again only for its next request, so the go file
        // comes at once rather than after the reconnection.
        let (data, script) = halves(&p, 0, what);
        let go = p.dir.join(format!("go-{what}"));
        let script = script.replace("sleep 0;", &format!("while [ ! -e {} ]; do sleep 0.05; done;", go.display()));
        let before = p.stored("dev/net/chunks").len();
        let backup = backup_through(&config, repo, &script);
        wait_for_chunks(&p, "dev/net/chunks", before + 4);
        let connections = relay.connections();
        let at = Instant::now();
        if what == "cut" {
            relay.cut();
        } else {
            relay.freeze();
        }
        std::fs::write(&go, b"").unwrap();
        // The agent notices and connects again: within a couple of seconds
        // of a cut, and after its keepalive pings go unanswered (about 7 s
        // at one a second) for a freeze.
        let limit = Duration::from_secs(if what == "cut" { 10 } else { 30 });
        while relay.connections() == connections {
            assert!(at.elapsed() < limit, "{what}: no new connection in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{what}: reconnected after {:?}", at.elapsed());
        let out = backup.wait_with_output().unwrap();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));

        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let restored = coffer(&p.reader(), &["restore", "--repo", repo, report["id"].as_str().unwrap()], None);
        restored.ok();
        assert!(restored.stdout == data, "{what}: restore differs");
    }
}

/// One certificate opening connection after connection holds only its own
/// share; a flood of bare TCP connections from one address holds only that
/// address's share and writes only a few audit events a minute; other
/// clients (the admin among them) still get in.
#[tokio::test(flavor = "multi_thread")]
async fn one_client_cannot_hold_the_proxys_connections() {
    use tokio::io::AsyncReadExt as _;
    let p = DevProxy::start()
        .restarted(|text| format!("{text}\n[limits]\nconnections_per_source = 8\nconnections_per_identity = 3\n"));

    // Per identity: the writer's fourth connection is closed after the handshake.
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = raw_client(&p.writer()).await;
        c.whoami().await.unwrap();
        held.push(c);
    }
    let fourth = raw_client(&p.writer()).await;
    assert!(fourth.whoami().await.is_err(), "a fourth connection of one identity");
    p.wait_for_event("the identity's refusal", |e| {
        e["action"] == "connection"
            && e["reason"].as_str().unwrap_or("").contains("spiffe://coffer.dev/writer")
            && e["reason"].as_str().unwrap_or("").contains("connections_per_identity")
    });
    raw_client(&p.reader()).await.whoami().await.expect("another identity gets in");
    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if raw_client(&p.writer()).await.whoami().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "a closed connection gives its slot back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Per source: 40 bare connections from 127.0.0.2 that never speak TLS.
    let addr: std::net::SocketAddr = p.addr.parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(socket.connect(addr).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut flood {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 40 - 8, "all but the address's 8 are closed at once");
    raw_client(&p.reader()).await.whoami().await.expect("clients from other addresses get in");
    let written = || {
        p.audit_events()
            .iter()
            .filter(|e| e["action"] == "connect" && e["peer"].as_str().unwrap_or("").starts_with("127.0.0.2:"))
            .count()
    };
    let allowance = coffer_proxy::server::conns::REFUSALS_AUDITED_PER_MINUTE as usize;
    // Refusals are written behind the answer: wait for the allowance's worth.
    let deadline = Instant::now() + Duration::from_secs(10);
    while written() < allowance && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let written = written();
    assert!(
        (allowance..=2 * allowance).contains(&written),
        "32 refusals, at most {allowance} events a minute: {written}"
    );
}

/// With every general connection taken (by bare TCP connections from four
/// addresses), a writer is turned away and an admin still gets in, to
/// revoke or lock down.
#[tokio::test(flavor = "multi_thread")]
async fn the_last_connections_are_kept_for_admins() {
    use coffer_proxy::server::conns::ADMIN_RESERVED;
    use coffer_proxy::server::MAX_CONNECTIONS;
    let p = DevProxy::start().restarted(|text| format!("{text}\n[limits]\nhandshake_timeout_secs = 60\n"));
    let addr: std::net::SocketAddr = p.addr.parse().unwrap();
    let mut flood = Vec::new();
    for i in 0..MAX_CONNECTIONS - ADMIN_RESERVED {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("127.0.0.{}:0", 2 + i / 248).parse().unwrap()).unwrap();
        flood.push(socket.connect(addr).await.unwrap());
    }
    // The accept loop takes the last general slot before the next connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer = raw_client(&p.writer()).await;
    let refused = writer.whoami().await.unwrap_err();
    assert!(refused.retryable(), "a full proxy is a transient refusal: {refused}");
    p.wait_for_event("the reserve's refusal", |e| {
        e["action"] == "connection" && e["reason"].as_str().unwrap_or("").contains("kept for admins")
    });
    let admin = raw_client(&p.config("admin")).await;
    let whoami = admin.whoami().await.expect("an admin gets a reserved connection");
    assert_eq!(whoami.identity, "spiffe://coffer.dev/admin");
    drop(flood);
}

/// A proxy (or something in its place) that accepts connections and never
/// answers: every attempt has a deadline, so the command fails with a
/// clear message once its retries are spent, instead of hanging for ever.
#[test]
fn a_proxy_that_never_answers_fails_the_command_in_bounded_time() {
    let p = DevProxy::start();
    let relay = coffer_tests::TcpRelay::start(&p.addr);
    let config = via_relay(&p, &relay, "request_timeout_secs = 2");
    coffer(&config, &["whoami"], None).ok();
    relay.freeze_all();
    let started = Instant::now();
    let mut child = Command::new(bin("coffer"))
        .args(["whoami", "--config"])
        .arg(&config)
        .env("COFFER_RETRY_DEADLINE_SECS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("coffer whoami still waiting after 60 s on a proxy that never answers");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no answer from the proxy within 2 s"), "{stderr}");
}

/// A reader that asks for chunk after chunk and never reads the answers
/// (HTTP/2 window 0): the answers waiting for it count against its buffer
/// budget, and once that is full it gets 503 instead of pinning more of the
/// proxy's memory; other clients are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_cannot_pin_the_proxys_memory() {
    let p = DevProxy::start().restarted(|text| {
        // The smallest budget the proxy accepts: the largest body.
        format!(
            "{text}\n[limits]\ncommit_max_bytes = 1048576\nidentity_buffer_bytes = {}\n",
            coffer_proto::ENVELOPE_MAX
        )
    });
    coffer(&p.writer(), &["init", "--repo", "dev/pin"], None).ok();
    // Incompressible, so its chunks are about 1 MiB each; the cut points are
    // keyed per repository, so the count varies from run to run: 40 MiB
    // gives some 30 chunks, far from the 16 the test asks for.
    // The small budget may turn some of its uploads away for a moment
    // (503 limit), which the agent retries; nothing else may be retried.
    let backup = coffer_tests::coffer_retrying(
        &p.writer(),
        &["backup", "--repo", "dev/pin", "-"],
        Some(&random_bytes("pin", 40 << 20)),
    );
    let retried: Vec<&str> = backup.stderr.lines().filter(|l| l.contains("retrying in")).collect();
    assert!(retried.iter().all(|l| l.contains("503 Service Unavailable limit")), "{retried:#?}");
    let id = backup.last_line();
    let mut chunks: Vec<String> = p
        .stored("dev/pin/chunks")
        .iter()
        .filter(|c| std::fs::metadata(c).unwrap().len() > 256 * 1024)
        .map(|c| c.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    chunks.sort();
    assert!(chunks.len() >= 16, "{} large chunks", chunks.len());

    let cfg = coffer_client::ClientConfig::load(&p.reader()).unwrap();
    let tls = coffer_client::tls_stream(&cfg).await.unwrap();
    let (mut h2, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tls).await.unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    let mut held = Vec::new();
    for chunk in &chunks[..16] {
        h2 = h2.ready().await.unwrap();
        let req = http::Request::get(format!("https://{}/v1/repos/dev/pin/chunks/{chunk}", p.addr)).body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        statuses.push(resp.status().as_u16());
        held.push(resp); // never read
    }
    // What is waiting for this client fits its budget; what did not fit was
    // refused (chunks differ in size, so a smaller one may still fit later).
    let size =
        |c: &String| std::fs::metadata(p.objects().join(format!("dev/pin/chunks/{}/{c}", &c[..2]))).unwrap().len();
    let waiting: u64 = chunks[..16].iter().zip(&statuses).filter(|(_, &s)| s == 200).map(|(c, _)| size(c)).sum();
    let all: u64 = chunks[..16].iter().map(size).sum();
    assert!(waiting <= coffer_proto::ENVELOPE_MAX as u64, "{waiting} bytes waiting: {statuses:?}");
    assert!(all > coffer_proto::ENVELOPE_MAX as u64 && statuses.contains(&503), "{all} asked: {statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
    p.wait_for_event("the buffer refusal", |e| {
        e["action"] == "limit" && e["reason"].as_str().unwrap_or("").contains("waiting in the proxy")
    });
    // Another identity is not affected, nor is this one's restore over a
    // connection that reads.
    coffer(&p.writer(), &["whoami"], None).ok();
    drop(held);
    drop(h2);
    // (The dropped streams' bytes may take a moment to leave the budget:
    // only limit answers may be retried.)
    let restored = coffer_tests::coffer_retrying(&p.reader(), &["restore", "--repo", "dev/pin", &id], None);
    assert_eq!(restored.code(), 0, "{}", restored.stderr);
    let retried: Vec<&str> = restored.stderr.lines().filter(|l| l.contains("retrying in")).collect();
    assert!(retried.iter().all(|l| l.contains("503 Service Unavailable limit")), "{retried:#?}");
}

/// A request past its deadline is answered 503 `timeout` and audited; a
/// commit gets a second more per 8 KiB of its declared body (its work in
/// the proxy grows with the chunks it names), never less. Both are
/// uploads whose bodies never end.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_deadline_is_answered_and_a_commit_gets_longer() {
    let p = DevProxy::start().restarted(|text| format!("{text}\n[limits]\nrequest_timeout_secs = 1\n"));
    coffer(&p.writer(), &["init", "--repo", "dev/slow"], None).ok();
    let cfg = coffer_client::ClientConfig::load(&p.writer()).unwrap();
    let tls = coffer_client::tls_stream(&cfg).await.unwrap();
    let (h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let addr = p.addr.clone();
    let hang = |path: String, len: usize, media: &str| {
        let mut h2 = h2.clone();
        let (addr, media) = (addr.clone(), media.to_string());
        async move {
            h2 = h2.ready().await.unwrap();
            let req = http::Request::builder()
                .method(if path.ends_with("/snapshots") { "POST" } else { "PUT" })
                .uri(format!("https://{addr}{path}"))
                .header("content-type", media)
                .header("content-length", len)
                .header(coffer_proto::api::DIGEST_HEADER, "00".repeat(32))
                .body(())
                .unwrap();
            let t = Instant::now();
            let (answer, mut body) = h2.send_request(req, false).unwrap();
            body.send_data(bytes::Bytes::from_static(b"not all of it"), false).unwrap();
            let answer = answer.await.unwrap();
            drop(body);
            (answer.status().as_u16(), t.elapsed())
        }
    };
    let chunk = format!("/v1/repos/dev/slow/chunks/{}", "ab".repeat(32));
    let (status, _) = hang(chunk, 1000, "application/octet-stream").await;
    assert_eq!(status, 503, "an upload whose body never ends is cut at the deadline");
    p.wait_for_event("the timeout event", |e| e["action"] == "timeout");
    let (status, took) = hang("/v1/repos/dev/slow/snapshots".into(), 64 * 1024, "application/octet-stream").await;
    assert_eq!(status, 503);
    assert!(took >= Duration::from_secs(8), "a 64 KiB commit gets 1 + 8 s, cut after {took:?}");
}
