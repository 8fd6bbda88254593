//! Writes the seed corpus every target starts from: the test vectors'
//! envelopes and one well-formed object of each kind (binary and JSON), into
//! `corpus/<target>/` (run from proto/fuzz: `cargo run --bin seed`).

use std::path::Path;

const TARGETS: [&str; 12] = [
    "envelope",
    "key_record",
    "config",
    "snapshot_root",
    "commit",
    "manifest",
    "index",
    "ids",
    "route",
    "open",
    "epoch",
    "chunk_name",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(here.join("../testdata/vectors"))? {
        let path = entry?.path();
        let vector: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        if let (Some(stem), Some(envelope)) = (path.file_stem(), vector["envelope"].as_str()) {
            seeds.push((stem.to_string_lossy().into_owned(), hex::decode(envelope)?));
        }
    }
    for (i, seed) in coffer_proto::fuzz::structured_seeds().into_iter().enumerate() {
        seeds.push((format!("structured-{i}"), seed));
    }
    for target in TARGETS {
        let dir = here.join("corpus").join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, seed) in &seeds {
            std::fs::write(dir.join(name), seed)?;
        }
    }
    println!("{} seeds for each of {} targets in {}", seeds.len(), TARGETS.len(), here.join("corpus").display());
    Ok(())
}
