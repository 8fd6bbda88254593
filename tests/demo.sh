#!/usr/bin/env bash
# The main job: a real backup and restore round trip through `coffer-proxy dev`
# (filesystem store, local key provider, mutual TLS on loopback).
#
# Backs up a tar stream of /usr/share/doc, backs it up again to show
# deduplication, restores it with the reader identity and checks it is
# bit-exact, then verifies every chunk. COFFER_DEMO_KEEP=1 keeps the dev folder.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
proxy_pid=
cleanup() {
    [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null && wait "$proxy_pid" 2>/dev/null
    if [ "${COFFER_DEMO_KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

"$bin/coffer-proxy" dev --dir "$work/dev" --listen 127.0.0.1:0 >"$work/proxy.out" 2>"$work/proxy.err" &
proxy_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$work/proxy.out" || { cat "$work/proxy.err"; echo "proxy did not start" >&2; exit 1; }
head -1 "$work/proxy.out"

coffer() { "$bin/coffer" "$@"; }
source_stream() { tar -C /usr/share -cf - doc 2>/dev/null; }
export COFFER_CONFIG="$work/dev/writer.toml"

coffer init --repo dev/demo
id=$(source_stream | coffer backup --repo dev/demo --name usr-share-doc -)
echo "first backup: snapshot $id"
again=$(source_stream | coffer backup --repo dev/demo --name usr-share-doc --json -)
echo "second backup of the same stream: $(echo "$again" | tr -d ' \n')"

expected=$(source_stream | sha256sum | cut -d' ' -f1)
restored=$(COFFER_CONFIG="$work/dev/reader.toml" coffer restore --repo dev/demo "$id" | sha256sum | cut -d' ' -f1)
COFFER_CONFIG="$work/dev/reader.toml" coffer verify --repo dev/demo
COFFER_CONFIG="$work/dev/reader.toml" coffer snapshots --repo dev/demo
if [ "$expected" != "$restored" ]; then
    echo "FAILED: restored stream differs ($restored != $expected)" >&2
    exit 1
fi
echo "OK: snapshot $id restored bit-exact (sha256 $restored)"
