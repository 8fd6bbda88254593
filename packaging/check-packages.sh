#!/usr/bin/env bash
# Builds the coffer-agent and coffer-proxy .deb packages from static musl
# binaries and checks them for real on this machine (as root): lintian,
# the systemd units (systemd-analyze verify and security), install with
# dpkg, --version and --check-config as the service users, an upgrade that
# keeps an edited conffile, remove, and a purge that leaves nothing behind.
# Installs its tools when missing (the musl target, musl-tools, lintian,
# cargo-deb pinned). Packages are left in $CARGO_TARGET_DIR/packages.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check-packages: needs root (dpkg -i)" >&2; exit 1; }

TARGET=x86_64-unknown-linux-musl
CARGO_DEB_VERSION=3.8.0
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/packages"
say() { printf '== %s\n' "$*"; }
fail() { printf 'check-packages: FAILED: %s\n' "$*" >&2; exit 1; }

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
missing=()
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v lintian >/dev/null || missing+=(lintian)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
fi

say "static release binaries ($TARGET)"
cargo build --release --locked --target "$TARGET" -p coffer-agent -p coffer-proxy --bins
for b in coffer coffer-proxy; do
    file -L "$target_dir/$TARGET/release/$b" | grep -q "static" || fail "$b is not statically linked"
done

say "packages: two versions of each, for the upgrade"
rm -rf "$out" && mkdir -p "$out"
for pkg in coffer-agent coffer-proxy; do
    for v in 0.1.0-1 0.1.0-2; do
        cargo deb -p "$pkg" --target "$TARGET" --no-build --deb-version "$v" -o "$out/${pkg}_$v.deb" >/dev/null
    done
done

say "lintian"
# Allowed, and why:
#  no-changelog: built from the source tree, not a Debian source package;
#    the history is the git log;
#  no-manual-page: the commands document themselves (--help) and the docs
#    ship in /usr/share/doc;
#  shared-library-lacks-prerequisites: lintian reads a static-pie binary
#    (on purpose: one binary for any distribution) as a shared library;
#  maintainer-script-calls-systemctl: prerm stops template instances
#    (coffer-backup@*.timer) by glob, which deb-systemd-invoke cannot.
allowed=no-changelog,no-manual-page,shared-library-lacks-prerequisites,maintainer-script-calls-systemctl
for pkg in coffer-agent coffer-proxy; do
    lintian --fail-on error,warning --suppress-tags "$allowed" "$out/${pkg}_0.1.0-2.deb" 2>&1 \
        | grep -v "running with root privileges" || true
    lintian --fail-on error,warning --suppress-tags "$allowed" "$out/${pkg}_0.1.0-2.deb" >/dev/null 2>&1 \
        || fail "lintian $pkg (output above)"
done

cleanup() {
    dpkg -P coffer-agent coffer-proxy >/dev/null 2>&1 || true
    rm -rf /etc/coffer/tls /etc/coffer/master.key "${scratch:-/nonexistent}"
}
trap cleanup EXIT
if dpkg -s coffer-agent >/dev/null 2>&1 || dpkg -s coffer-proxy >/dev/null 2>&1; then
    fail "coffer-agent or coffer-proxy is already installed here; refusing to touch it"
fi

say "install"
dpkg -i "$out/coffer-agent_0.1.0-1.deb" "$out/coffer-proxy_0.1.0-1.deb" >/dev/null
coffer --version | grep -q "^coffer " || fail "coffer --version"
coffer-proxy --version | grep -q "^coffer-proxy " || fail "coffer-proxy --version"
getent passwd coffer >/dev/null && getent passwd coffer-proxy >/dev/null || fail "no service users"
[ "$(stat -c '%U:%G %a' /etc/coffer/agent.toml)" = "root:coffer 640" ] || fail "agent.toml: $(stat -c '%U:%G %a' /etc/coffer/agent.toml)"
[ "$(stat -c '%U:%G %a' /etc/coffer/proxy.toml)" = "root:coffer-proxy 640" ] || fail "proxy.toml mode"
[ "$(stat -c '%U %a' /var/lib/coffer-proxy)" = "coffer-proxy 750" ] || fail "/var/lib/coffer-proxy"

say "systemd units"
units=(/lib/systemd/system/coffer-agent.service /lib/systemd/system/coffer-proxy.service
    /lib/systemd/system/coffer-backup@.service /lib/systemd/system/coffer-backup@.timer)
# verify exits 0 on unknown keys: any output at all is a failure.
verify=$(systemd-analyze verify "${units[@]}" 2>&1 || true)
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
for unit in coffer-agent.service coffer-proxy.service; do
    systemd-analyze security --offline=yes --threshold=20 "/lib/systemd/system/$unit" >/dev/null \
        || fail "$unit: exposure above 2.0 (systemd-analyze security --offline=yes $unit)"
done

say "--check-config as the service users"
scratch=$(mktemp -d)
# Certificates and a master key from the dev proxy's first start.
coffer-proxy dev --dir "$scratch/dev" --listen 127.0.0.1:0 >/dev/null 2>&1 &
dev=$!
for _ in $(seq 100); do [ -f "$scratch/dev/address" ] && break; sleep 0.1; done
kill "$dev"; wait "$dev" 2>/dev/null || true
install -d -m 0755 /etc/coffer/tls
install -m 0644 "$scratch/dev/ca.pem" /etc/coffer/tls/ca.pem
install -m 0644 "$scratch/dev/ca.pem" /etc/coffer/tls/agents-ca.pem
install -m 0644 "$scratch/dev/writer.pem" /etc/coffer/tls/agent.pem
install -m 0640 -g coffer "$scratch/dev/writer.key" /etc/coffer/tls/agent.key
install -m 0644 "$scratch/dev/proxy.pem" /etc/coffer/tls/proxy.pem
install -m 0640 -g coffer-proxy "$scratch/dev/proxy.key" /etc/coffer/tls/proxy.key
install -m 0600 -o coffer-proxy "$scratch/dev/master.key" /etc/coffer/master.key
runuser -u coffer -- coffer --check-config --config /etc/coffer/agent.toml >/dev/null \
    || fail "coffer --check-config as coffer"
runuser -u coffer-proxy -- coffer-proxy --check-config --config /etc/coffer/proxy.toml >/dev/null \
    || fail "coffer-proxy --check-config as coffer-proxy"
# The trap the statoverride avoids: a root-only config fails for the service.
chmod 0600 /etc/coffer/agent.toml
if runuser -u coffer -- coffer --check-config --config /etc/coffer/agent.toml >/dev/null 2>&1; then
    fail "a 0600 root config should be unreadable for coffer"
fi
chmod 0640 /etc/coffer/agent.toml

say "upgrade keeps an edited conffile"
echo '# edited by the admin' >>/etc/coffer/agent.toml
dpkg -i "$out/coffer-agent_0.1.0-2.deb" "$out/coffer-proxy_0.1.0-2.deb" </dev/null >/dev/null
grep -q '^# edited by the admin$' /etc/coffer/agent.toml || fail "the upgrade replaced the edited conffile"
[ "$(dpkg-query -W -f='${Version}' coffer-agent)" = 0.1.0-2 ] || fail "not upgraded"
[ "$(stat -c '%U:%G %a' /etc/coffer/agent.toml)" = "root:coffer 640" ] || fail "the upgrade reset agent.toml's mode"

say "remove keeps the configuration, purge leaves nothing"
dpkg -r coffer-agent coffer-proxy >/dev/null
[ ! -e /usr/bin/coffer ] && [ ! -e /usr/bin/coffer-proxy ] || fail "binaries left after remove"
[ -f /etc/coffer/agent.toml ] || fail "remove deleted the conffile"
rm -rf /etc/coffer/tls /etc/coffer/master.key
dpkg -P coffer-agent coffer-proxy >/dev/null
left=$(ls -d /etc/coffer /var/lib/coffer /var/lib/coffer-proxy /run/coffer /lib/systemd/system/coffer* 2>/dev/null || true)
[ -z "$left" ] || fail "left after purge: $left"
! getent passwd coffer >/dev/null && ! getent passwd coffer-proxy >/dev/null || fail "service users left after purge"
! getent group coffer >/dev/null || fail "group coffer left after purge"
dpkg-statoverride --list | grep -q /etc/coffer && fail "statoverrides left after purge"
say "packages ok: $(ls "$out")"
