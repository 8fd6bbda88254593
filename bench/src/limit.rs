//! `coffer-bench limit`: each unavoidable stage of a backup measured alone
//! on the same data, and the ceiling they put on the whole pipeline on this
//! machine's cores.
//!
//! The model, from how the agent and proxy run: the agent reads, cuts and
//! hashes the stream on three threads, one stage each, so it cannot beat
//! `1 / max(read, chunk, hash)` (costs in seconds per MB); all CPU work of the
//! agent and the proxy (those three, sealing, and TLS on both ends) shares
//! the cores, so they cannot beat `cores / (sum of the costs)`; and the
//! store cannot take more than its fsync'd writes allow (measured with 8
//! writers, as the agent keeps 8 uploads in flight). The ceiling is the
//! lowest of the three.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use coffer_proto::keys::{DataKey, IdKey};
use coffer_proto::repo::ChunkerParams;
use coffer_proto::{chunk, KeyId, RepoName};
use serde::Serialize;

/// Writers at once for the store stage: the agent's default uploads in flight.
const STORE_WRITERS: usize = 8;

#[derive(Debug, Serialize)]
pub struct Stage {
    pub stage: &'static str,
    pub mb_per_sec: f64,
    /// CPU seconds per MB this stage costs (for the CPU ceiling).
    pub cpu_secs_per_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Limits {
    pub bytes: u64,
    pub cores: usize,
    pub zstd_level: i32,
    pub stages: Vec<Stage>,
    /// The reader's bound: one thread reads and cuts while another hashes.
    pub reader_ceiling: f64,
    /// All CPU stages sharing the cores.
    pub cpu_ceiling: f64,
    /// The store's fsync'd writes.
    pub store_ceiling: f64,
    /// The lowest of the three, MB/s.
    pub ceiling: f64,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs `f` and returns (wall seconds, CPU seconds of this process).
fn measure(f: impl FnOnce()) -> (f64, f64) {
    let cpu = || crate::procfs::sample(std::process::id()).map_or(0.0, |s| s.cpu_secs);
    let (c0, t0) = (cpu(), Instant::now());
    f();
    (t0.elapsed().as_secs_f64(), cpu() - c0)
}

fn stage(name: &'static str, bytes: u64, (wall, cpu): (f64, f64)) -> Stage {
    Stage { stage: name, mb_per_sec: mb(bytes) / wall.max(1e-9), cpu_secs_per_mb: cpu.max(0.0) / mb(bytes).max(1e-9) }
}

/// Measures every stage on the file at `source`; `tls_dir` holds a dev
/// proxy's certificates (ca.pem, proxy.pem/key, writer.pem/key) and
/// `scratch` takes the store stage's files.
pub fn measure_stages(source: &Path, zstd_level: i32, tls_dir: &Path, scratch: &Path) -> Result<Limits, String> {
    let io = |e: std::io::Error| e.to_string();
    let bytes = std::fs::metadata(source).map_err(io)?.len();
    let mut stages = Vec::new();

    let mut data = Vec::with_capacity(bytes as usize);
    let t = measure(|| {
        data.clear();
        let _ = std::fs::File::open(source).and_then(|mut f| f.read_to_end(&mut data));
    });
    if data.len() as u64 != bytes {
        return Err(format!("{}: could not read it whole", source.display()));
    }
    stages.push(stage("read", bytes, t));

    let p = ChunkerParams::default();
    let mut cuts = Vec::new();
    let t = measure(|| {
        cuts = fastcdc::v2020::FastCDC::new(&data, p.min_size, p.avg_size, p.max_size)
            .map(|c| (c.offset, c.length))
            .collect();
    });
    stages.push(stage("chunk", bytes, t));
    let chunks: Vec<&[u8]> = cuts.iter().map(|&(o, l)| &data[o..o + l]).collect();

    let id_key = IdKey::random();
    let mut ids = Vec::new();
    let t = measure(|| ids = chunks.iter().map(|c| id_key.chunk_id(c)).collect());
    stages.push(stage("hash", bytes, t));

    let repo: RepoName = "bench/limit".parse().map_err(|e| format!("{e}"))?;
    let (key, key_id) = (DataKey::random(), KeyId::random());
    let mut sealed = Vec::new();
    let t = measure(|| {
        sealed = chunks.iter().zip(&ids).map(|(c, id)| chunk::seal(c, &key, key_id, &repo, id, zstd_level)).collect();
    });
    stages.push(stage("compress + encrypt", bytes, t));
    let sealed_bytes: u64 = sealed.iter().map(|s| s.len() as u64).sum();

    let t = tls_transfer(tls_dir, &sealed)?;
    stages.push(stage("TLS both ways", sealed_bytes, t));

    let t = store_writes(scratch, &sealed)?;
    stages.push(stage("store write (fsync)", sealed_bytes, t));

    // Stages measured on the sealed bytes cost per stream MB in proportion.
    let per_stream_mb = |s: &Stage| match s.stage {
        "TLS both ways" | "store write (fsync)" => s.cpu_secs_per_mb * sealed_bytes as f64 / bytes.max(1) as f64,
        _ => s.cpu_secs_per_mb,
    };
    let cost = |name: &str| stages.iter().find(|s| s.stage == name).map_or(0.0, |s| 1.0 / s.mb_per_sec);
    let reader_ceiling = 1.0 / cost("read").max(cost("chunk")).max(cost("hash"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_ceiling = cores as f64 / stages.iter().map(per_stream_mb).sum::<f64>().max(1e-12);
    let store = stages.iter().find(|s| s.stage == "store write (fsync)").map_or(f64::INFINITY, |s| s.mb_per_sec);
    let store_ceiling = store * bytes as f64 / sealed_bytes.max(1) as f64;
    let ceiling = reader_ceiling.min(cpu_ceiling).min(store_ceiling);
    Ok(Limits { bytes, cores, zstd_level, stages, reader_ceiling, cpu_ceiling, store_ceiling, ceiling })
}

/// The sealed chunks through TLS 1.3 with client certificates on loopback,
/// as an agent sends them to the proxy: wall time and both ends' CPU.
fn tls_transfer(dir: &Path, sealed: &[Vec<u8>]) -> Result<(f64, f64), String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let read_certs = |name: &str| {
        CertificateDer::pem_file_iter(dir.join(name))
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{name}: {e}"))
    };
    let read_key = |name: &str| PrivateKeyDer::from_pem_file(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs("ca.pem")? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs("proxy.pem")?, read_key("proxy.key")?)
        .map_err(|e| e.to_string())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs("writer.pem")?, read_key("writer.key")?)
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let total: usize = sealed.iter().map(Vec::len).sum();
    let receiver = std::thread::spawn(move || -> Result<usize, String> {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            match tls.read(&mut buf).map_err(|e| e.to_string())? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    });
    let mut result = Ok(());
    let t = measure(|| {
        result = (|| {
            let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            for s in sealed {
                tls.write_all(s).map_err(|e| e.to_string())?;
            }
            tls.flush().map_err(|e| e.to_string())?;
            let got = receiver.join().map_err(|_| "the TLS receiver panicked".to_string())??;
            if got != total {
                return Err(format!("TLS: sent {total} bytes, {got} arrived"));
            }
            Ok(())
        })();
    });
    result.map(|()| t)
}

/// The sealed chunks written as the filesystem store writes objects (a
/// temporary file, fsync, a link into place, the folder fsync'd), by
/// [`STORE_WRITERS`] threads at once.
fn store_writes(scratch: &Path, sealed: &[Vec<u8>]) -> Result<(f64, f64), String> {
    let dir = scratch.join("store-stage");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(None);
    let t = measure(|| {
        std::thread::scope(|s| {
            for _ in 0..STORE_WRITERS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = sealed.get(i) else { break };
                    if let Err(e) = write_once(&dir, i, body) {
                        *failed.lock().expect("not poisoned") = Some(e.to_string());
                        break;
                    }
                });
            }
        });
    });
    let _ = std::fs::remove_dir_all(&dir);
    match failed.into_inner().expect("not poisoned") {
        Some(e) => Err(format!("store stage: {e}")),
        None => Ok(t),
    }
}

fn write_once(dir: &Path, i: usize, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".tmp-{i}"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::hard_link(&tmp, dir.join(format!("{i:08}")))?;
    std::fs::remove_file(&tmp)?;
    std::fs::File::open(dir)?.sync_all()
}
