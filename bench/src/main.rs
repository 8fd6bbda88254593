//! `coffer-bench e2e`: backs up and restores through the real binaries —
//! `coffer-proxy dev` (filesystem store, mutual TLS on loopback) and
//! `coffer` — and reports, per phase, MB/s, CPU seconds and peak RSS of the
//! agent and the proxy. With `--peers`, restic and borg run the same phases
//! on the same data, interleaved with Coffer's. Every restore is checked
//! bit-exact.

mod cmd;

use clap::{Parser, Subcommand};
use cmd::{catalog, e2e, limit, s3, stream, Bench, Common, Input};

/// The proxy's allocator and its tuning (.cargo/config.toml): `catalog`
/// measures the proxy's structures in this process, as the proxy holds them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "coffer-bench", version, about = "Coffer's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// First backup, unchanged re-backup, backup after a 1% edit, restore.
    E2e {
        #[command(flatten)]
        input: Input,
        /// Also run restic and borg (those installed) on the same data.
        #[arg(long)]
        peers: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Each stage alone on the same data (read, chunk, hash, compress and
    /// encrypt, TLS both ways, store write), the ceiling they put on the
    /// pipeline on this machine, and a real first backup as a fraction of it.
    Limit {
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        common: Common,
    },
    /// One backup of a generated stream piped straight into the agent, at
    /// full speed or at `--rate`, sampling the agent's memory every second:
    /// does it stay flat for a very long or a trickling stream?
    Stream {
        /// SIZE,KIND as for e2e (e.g. 20GiB,mixed); nothing is written to disk but the store.
        #[arg(long)]
        generate: String,
        /// Feed at most this many bytes per second (e.g. 1MB), as a slow producer would.
        #[arg(long)]
        rate: Option<String>,
        /// Run this many agents at once, each with its own stream and repository.
        #[arg(long, default_value_t = 1)]
        agents: usize,
        #[command(flatten)]
        common: Common,
    },
    /// The real proxy on its S3 store (the emulator, moto) behind a relay
    /// that delays each request by `--latency-ms`: each phase at 0 ms and at
    /// the latency, S3 requests by kind, and the round trips per chunk the
    /// data path waits for one after another; then `snapshots` on a
    /// repository of `--snapshots` snapshots.
    S3 {
        #[command(flatten)]
        input: Input,
        /// Delay per S3 request, as a regional endpoint adds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        /// The moto server (default: COFFER_MOTO, or .venv/bin/moto_server).
        #[arg(long)]
        moto: Option<std::path::PathBuf>,
        /// Snapshots in the repository that is listed.
        #[arg(long, default_value_t = 1000)]
        snapshots: usize,
        /// The proxy's `limits.store_fan_out` (default: its own default).
        #[arg(long)]
        fan_out: Option<usize>,
        /// The proxy's `retention.upload_lock_hours` (default: none).
        #[arg(long)]
        upload_lock_hours: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// The proxy's chunk catalog at a size: memory per chunk and lookups
    /// per second for one repository of `--chunks` chunks.
    Catalog {
        #[arg(long, default_value_t = 1_000_000)]
        chunks: usize,
        /// Instead, time a commit referencing `--chunks` chunks the catalog
        /// knows (warm), then the same through a fresh proxy on the same
        /// store (cold: its catalog filled from the first commit's index),
        /// with the process's peak resident memory.
        #[arg(long)]
        commit: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let result = match Cli::parse().cmd {
        Cmd::E2e { input, peers, common } => Bench::new(&common)
            .and_then(|b| e2e::e2e(&b, input, peers))
            .map(|r| cmd::emit(&r, common.json, e2e::print_table)),
        Cmd::Limit { input, common } => Bench::new(&common)
            .and_then(|b| limit::limit(&b, input))
            .map(|r| cmd::emit(&r, common.json, limit::print_limit)),
        Cmd::S3 { input, latency_ms, moto, snapshots, fan_out, upload_lock_hours, common } => Bench::new(&common)
            .and_then(|b| {
                let opts = s3::S3Options { latency_ms, moto, snapshots, fan_out, upload_lock_hours };
                s3::s3(&b, input, opts)
            })
            .map(|r| cmd::emit(&r, common.json, s3::print_s3)),
        Cmd::Catalog { chunks, json, commit: false } => {
            catalog::catalog(chunks).map(|r| cmd::emit(&r, json, catalog::print_catalog))
        }
        Cmd::Catalog { chunks, json, commit: true } => {
            catalog::commit(chunks).map(|r| cmd::emit(&r, json, catalog::print_commit))
        }
        Cmd::Stream { generate, rate, agents, common } => Bench::new(&common)
            .and_then(|b| stream::stream(&b, &generate, rate.as_deref(), agents.max(1)))
            .map(|r| cmd::emit(&r, common.json, stream::print_stream)),
    };
    if let Err(e) = result {
        eprintln!("coffer-bench: {e}");
        std::process::exit(1);
    }
}
