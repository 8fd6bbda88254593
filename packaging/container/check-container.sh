#!/usr/bin/env bash
# Builds the Coffer image with podman and checks it with no network at all:
# both binaries run as the non-root user, there is no shell, and the sidecar
# works end to end inside one pod (--network=none): a dev proxy, the agent
# daemon with its socket on a shared volume, and `coffer send` from a third
# container that holds no certificate or key, then a restore compared
# bit-exact. As root; installs podman and runc when missing. No registry is
# reachable here, so BASE is a Debian minbase root (debootstrap, cached)
# imported with `podman import`.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "check-container: needs root (rootful podman)" >&2; exit 1; }

. tests/tools.sh
TARGET=$MUSL_TARGET
PROFILE=dist
IMAGE=localhost/coffer:check
BASE=localhost/coffer-debian:bookworm
ROOTFS="${COFFER_ROOTFS:-/var/tmp/coffer-rootfs-bookworm}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
say() { printf '== %s\n' "$*"; }
fail() { printf 'check-container: FAILED: %s\n' "$*" >&2; exit 1; }

need_podman
need_musl_target

say "base image"
if ! podman image exists "$BASE"; then
    if [ ! -x "$ROOTFS/usr/sbin/useradd" ]; then
        rm -rf "$ROOTFS.tmp"
        debootstrap --variant=minbase bookworm "$ROOTFS.tmp" http://deb.debian.org/debian >/dev/null
        mv "$ROOTFS.tmp" "$ROOTFS"
    fi
    tar -C "$ROOTFS" -c . | podman import - "$BASE" >/dev/null
fi

say "image"
cargo build --profile "$PROFILE" --locked --target "$TARGET" -p coffer-agent -p coffer-proxy --bins
work=$(mktemp -d)
pod=coffer-check-$$
cleanup() {
    podman pod rm -f "$pod" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/context/bin"
cp "$target_dir/$TARGET/$PROFILE/coffer" "$target_dir/$TARGET/$PROFILE/coffer-proxy" "$work/context/bin/"
cp /etc/ssl/certs/ca-certificates.crt "$work/context/"
podman build --quiet --network=none --build-arg "BASE=$BASE" -f packaging/container/Dockerfile \
    -t "$IMAGE" "$work/context" >/dev/null

say "smoke: versions, user, no shell"
podman run --rm --network=none "$IMAGE" --version | grep -q "^coffer " || fail "coffer --version"
podman run --rm --network=none --entrypoint /usr/bin/coffer-proxy "$IMAGE" --version | grep -q "^coffer-proxy " \
    || fail "coffer-proxy --version"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "65532:65532" ] || fail "the image runs as root"
if podman run --rm --network=none --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    fail "the image has a shell"
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
[ "$size" -lt 60000000 ] || fail "the image is $size bytes"

say "sidecar in a pod without network: proxy, daemon, send, restore"
mkdir -p "$work/state" "$work/socket"
chown 65532:65532 "$work/state" "$work/socket"
podman pod create --name "$pod" --network=none >/dev/null
run_in_pod() { podman run --rm --pod "$pod" -v "$work/state:/state" "$IMAGE" "$@"; }
podman run -d --pod "$pod" -v "$work/state:/state" --entrypoint /usr/bin/coffer-proxy "$IMAGE" \
    dev --dir /state --listen 127.0.0.1:7443 >/dev/null
for _ in $(seq 100); do [ -f "$work/state/address" ] && break; sleep 0.1; done
[ -f "$work/state/address" ] || fail "the dev proxy did not start"
run_in_pod --config /state/writer.toml init --repo dev/pod >/dev/null
{
    cat "$work/state/writer.toml"
    printf '\n[daemon]\nsocket = "/run/coffer/coffer.sock"\nsocket_repos = ["dev/pod"]\n'
} >"$work/state/daemon.toml"
podman run -d --pod "$pod" -v "$work/state:/state" -v "$work/socket:/run/coffer" "$IMAGE" \
    --config /state/daemon.toml daemon >/dev/null
for _ in $(seq 100); do [ -S "$work/socket/coffer.sock" ] && break; sleep 0.1; done
[ -S "$work/socket/coffer.sock" ] || fail "the daemon made no socket"
head -c 3000000 /dev/urandom >"$work/data"
# The sender: no pod, no network, no config, only the socket's folder.
id=$(podman run --rm -i --network=none -v "$work/socket:/run/coffer" "$IMAGE" send --repo dev/pod - <"$work/data" \
    | tail -n 1)
[ -n "$id" ] || fail "coffer send printed no snapshot id"
run_in_pod --config /state/reader.toml restore --repo dev/pod "$id" >"$work/restored"
cmp -s "$work/data" "$work/restored" || fail "the restore differs from what was sent"
say "container ok: $IMAGE ($((size / 1000000)) MB), snapshot $id"
