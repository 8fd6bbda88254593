#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the S3/KMS emulator
# (moto, pinned, into a virtual environment: .venv, or $COFFER_VENV) and
# Debian's chromium (for the HTML report test; needs root, as here), builds
# the binaries that the end-to-end tests run as real processes, then runs
# every test. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COFFER_VENV:-$PWD/.venv}"
if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
    echo "installing moto[server]==5.2.5 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
export COFFER_MOTO="$venv/bin/moto_server"
# Headless Chromium renders the HTML compliance report in a test.
if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo build --workspace --bins
cargo test --workspace "$@"
