//! Criterion micro-benchmarks of the pipeline's stages, each on the same
//! data and reported as bytes per second: FastCDC, the keyed chunk-id hash,
//! zstd at the levels a repository may use, sealing (compress + AES-GCM) and
//! opening. `cargo bench -p coffer-bench`; the end-to-end numbers come from
//! `coffer-bench e2e` (docs/performance.md).

use coffer_bench::data::{random_bytes, text_bytes};
use coffer_proto::keys::{DataKey, IdKey};
use coffer_proto::repo::{ChunkerParams, DEFAULT_ZSTD_LEVEL};
use coffer_proto::{chunk, KeyId, RepoName};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const STREAM: usize = 32 << 20;
const CHUNK: usize = 1 << 20;

fn chunker(c: &mut Criterion) {
    let data = text_bytes(1, STREAM);
    let p = ChunkerParams::default();
    let mut g = c.benchmark_group("chunker");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc", |b| {
        b.iter(|| fastcdc::v2020::FastCDC::new(&data, p.min_size, p.avg_size, p.max_size).count())
    });
    g.finish();
}

fn id_hash(c: &mut Criterion) {
    let data = text_bytes(2, CHUNK);
    let key = IdKey::random();
    let mut g = c.benchmark_group("chunk_id");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("keyed_blake3", |b| b.iter(|| key.chunk_id(&data)));
    g.finish();
}

fn compress(c: &mut Criterion) {
    let data = text_bytes(3, CHUNK);
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1, 3] {
        g.bench_with_input(BenchmarkId::new("compress_text", level), &level, |b, &level| {
            b.iter(|| zstd::bulk::compress(&data, level).expect("compresses"))
        });
    }
    g.finish();
}

fn seal_and_open(c: &mut Criterion) {
    let repo: RepoName = "bench/stages".parse().expect("a valid name");
    let (key, key_id, id_key) = (DataKey::random(), KeyId::random(), IdKey::random());
    let mut g = c.benchmark_group("envelope");
    for (kind, data) in [("text", text_bytes(4, CHUNK)), ("random", random_bytes("seal", CHUNK))] {
        let id = id_key.chunk_id(&data);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(BenchmarkId::new("seal", kind), |b| {
            b.iter(|| chunk::seal(&data, &key, key_id, &repo, &id, DEFAULT_ZSTD_LEVEL))
        });
        let sealed = chunk::seal(&data, &key, key_id, &repo, &id, DEFAULT_ZSTD_LEVEL);
        g.bench_function(BenchmarkId::new("open", kind), |b| {
            b.iter(|| chunk::open(&sealed, &key, &repo, &id, &id_key).expect("opens"))
        });
    }
    g.finish();
}

criterion_group!(stages, chunker, id_hash, compress, seal_and_open);
criterion_main!(stages);
