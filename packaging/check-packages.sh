#!/usr/bin/env bash
# Builds the coffer-agent and coffer-proxy .deb and .rpm packages from
# static musl binaries and checks them for real (as root). The .debs on this
# machine: lintian, the systemd units (systemd-analyze verify and security),
# install with dpkg, --version and --check-config as the service users, an
# upgrade that keeps an edited conffile, remove, and a purge that leaves
# nothing behind. The .rpms: rpm -K, rpmlint, and install, verify, upgrade
# and erase into a scratch Debian root (debootstrap minbase, cached), where
# their scriptlets really run. Installs its tools when missing (the musl
# target, musl-tools, lintian, rpm, rpmlint, debootstrap, cargo-deb and
# cargo-generate-rpm pinned). Packages are left in $CARGO_TARGET_DIR/packages.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check-packages: needs root (dpkg -i)" >&2; exit 1; }

. tests/tools.sh
TARGET=$MUSL_TARGET
PROFILE=dist
# A pristine minbase root for the rpm checks, made once and copied per run.
ROOTFS="${COFFER_ROOTFS:-/var/tmp/coffer-rootfs-bookworm}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_dir/packages"
say() { printf '== %s\n' "$*"; }
fail() { printf 'check-packages: FAILED: %s\n' "$*" >&2; exit 1; }

need_musl_target
need_debs lintian:lintian rpm:rpm rpmlint:rpmlint debootstrap:debootstrap file:file systemd-analyze:systemd
need_cargo_tools

say "static binaries ($TARGET, profile $PROFILE)"
cargo build --profile "$PROFILE" --locked --target "$TARGET" -p coffer-agent -p coffer-proxy --bins
for b in coffer coffer-proxy; do
    file -L "$target_dir/$TARGET/$PROFILE/$b" | grep -q "static.*stripped" || fail "$b is not static and stripped"
done

say "manual pages and shell completions, generated from the CLI definitions"
gen="$target_dir/$TARGET/$PROFILE/generated"
rm -rf "$gen" && mkdir -p "$gen"
for b in coffer coffer-proxy; do
    bin="$target_dir/$TARGET/$PROFILE/$b"
    "$bin" man >"$gen/$b.1"
    gzip -9n <"$gen/$b.1" >"$gen/$b.1.gz"
    "$bin" completions bash >"$gen/$b.bash"
    "$bin" completions zsh >"$gen/_$b"
    "$bin" completions fish >"$gen/$b.fish"
done

say "packages: two versions of each, for the upgrade"
rm -rf "$out" && mkdir -p "$out"
for pkg in coffer-agent coffer-proxy; do
    for v in 0.1.0-1 0.1.0-2; do
        cargo deb -p "$pkg" --target "$TARGET" --profile "$PROFILE" --no-build --deb-version "$v" \
            -o "$out/${pkg}_$v.deb" >/dev/null
    done
    for release in 1 2; do
        cargo generate-rpm -p "${pkg#coffer-}" --target "$TARGET" --profile "$PROFILE" \
            -s "release = \"$release\"" -o "$out/$pkg-0.1.0-$release.x86_64.rpm" >/dev/null
    done
done

say "lintian"
# Allowed, and why:
#  no-changelog: built from the source tree, not a Debian source package;
#    the history is the git log;
#  shared-library-lacks-prerequisites: lintian reads a static-pie binary
#    (on purpose: one binary for any distribution) as a shared library;
#  maintainer-script-calls-systemctl: prerm stops template instances
#    (coffer-backup@*.timer) by glob, which deb-systemd-invoke cannot.
allowed=no-changelog,shared-library-lacks-prerequisites,maintainer-script-calls-systemctl
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
for f in coffer-rules.yml grafana-dashboard.json; do
    cmp -s "/usr/share/coffer-proxy/monitoring/$f" "packaging/monitoring/$f" || fail "coffer-proxy ships no $f"
done
for b in coffer coffer-proxy; do
    zcat "/usr/share/man/man1/$b.1.gz" | grep -q "^\.TH $b 1" || fail "no manual page for $b"
    # Each completion names a subcommand only its own binary has.
    sub=$([ "$b" = coffer ] && echo snapshots || echo keygen)
    for f in "/usr/share/bash-completion/completions/$b" "/usr/share/zsh/vendor-completions/_$b" \
        "/usr/share/fish/vendor_completions.d/$b.fish"; do
        grep -q "$sub" "$f" || fail "$f does not complete $b's commands"
    done
done
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

say "rpm -K and rpmlint"
for pkg in coffer-agent coffer-proxy; do
    rpm -K "$out/$pkg-0.1.0-2.x86_64.rpm" | grep -q "digests OK" || fail "rpm -K $pkg"
done
rpmlint -r packaging/rpm/rpmlintrc "$out"/*-0.1.0-2.x86_64.rpm >"$scratch/rpmlint.txt" 2>&1 \
    || { cat "$scratch/rpmlint.txt"; fail "rpmlint"; }

say "rpm install, verify, upgrade and erase in a scratch root"
if [ ! -x "$ROOTFS/usr/sbin/useradd" ]; then
    rm -rf "$ROOTFS.tmp"
    debootstrap --variant=minbase bookworm "$ROOTFS.tmp" http://deb.debian.org/debian >/dev/null
    mv "$ROOTFS.tmp" "$ROOTFS"
fi
root="$scratch/root"
cp -a "$ROOTFS" "$root"
in_root() { rpm --root "$root" --dbpath /var/lib/rpm "$@"; }
in_root --initdb
in_root -i --nodeps "$out/coffer-agent-0.1.0-1.x86_64.rpm" "$out/coffer-proxy-0.1.0-1.x86_64.rpm"
grep -q '^coffer:' "$root/etc/passwd" && grep -q '^coffer-proxy:' "$root/etc/passwd" || fail "rpm %pre made no users"
[ "$(stat -c '%a' "$root/etc/coffer/agent.toml")" = 640 ] || fail "rpm: agent.toml mode"
[ "$(stat -c '%g' "$root/etc/coffer/agent.toml")" = "$(grep '^coffer:' "$root/etc/group" | cut -d: -f3)" ] \
    || fail "rpm: agent.toml is not in group coffer"
[ -d "$root/var/lib/coffer-proxy" ] || fail "rpm %post made no state folder"
chroot "$root" /usr/bin/coffer --version | grep -q "^coffer " || fail "coffer --version in the scratch root"
in_root -V --nodeps coffer-agent coffer-proxy || fail "rpm -V after install"
for f in usr/share/man/man1/coffer.1.gz usr/share/man/man1/coffer-proxy.1.gz \
    usr/share/bash-completion/completions/coffer usr/share/zsh/site-functions/_coffer-proxy; do
    [ -s "$root/$f" ] || fail "rpm: no /$f"
done
echo '# edited by the admin' >>"$root/etc/coffer/agent.toml"
in_root -U --nodeps "$out/coffer-agent-0.1.0-2.x86_64.rpm" "$out/coffer-proxy-0.1.0-2.x86_64.rpm"
[ "$(in_root -q --qf '%{RELEASE}' coffer-agent)" = 2 ] || fail "rpm upgrade"
grep -q '^# edited by the admin$' "$root/etc/coffer/agent.toml" || fail "rpm upgrade replaced the edited config"
in_root -e coffer-agent coffer-proxy
left=$(cd "$root" && ls -d etc/coffer/* var/lib/coffer var/lib/coffer-proxy usr/bin/coffer* usr/lib/systemd/system/coffer* \
    usr/share/man/man1/coffer* usr/share/bash-completion/completions/coffer* 2>/dev/null || true)
# rpm keeps an edited config as .rpmsave, as it does for every package.
[ "$left" = "etc/coffer/agent.toml.rpmsave" ] || fail "left after rpm -e: $left"
! grep -q '^coffer' "$root/etc/passwd" || fail "rpm %postun left the users"
say "packages ok: $(cd "$out" && echo *)"
