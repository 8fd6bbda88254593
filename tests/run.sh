#!/usr/bin/env bash
# The whole test suite, from a fresh clone: builds the binaries that the
# end-to-end tests run as real processes, then runs every test.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
