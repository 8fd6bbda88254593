#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the S3/KMS emulator
# (moto, pinned, into a virtual environment: .venv, or $COFFER_VENV) and
# Debian's chromium (for the HTML report test; needs root, as here), builds
# the binaries that the end-to-end tests run as real processes, then runs
# every test. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/tools.sh
need_moto
export COFFER_MOTO="$COFFER_VENV/bin/moto_server"
# Headless Chromium renders the HTML compliance report in a test.
need_debs chromium:chromium
cargo build --workspace --bins
cargo test --workspace "$@"
