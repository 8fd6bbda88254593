#!/usr/bin/env bash
# Starts the packaged units for real: a Debian container with systemd as
# PID 1 (podman --systemd=always --privileged, so the units' hardening is
# enforced) and no network. It installs the .debs that check-packages.sh
# made, starts coffer-proxy, backs up with coffer-agent's daemon and with a
# coffer-backup@ timer unit, verifies the snapshots, shows that a config the
# service user cannot read makes the unit fail at start, and purges with the
# services running. As root; run check-packages.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "check-units: needs root (rootful podman)" >&2; exit 1; }
. tests/tools.sh
need_podman

IMAGE=localhost/coffer-debian-systemd:bookworm
ROOTFS="${COFFER_SYSTEMD_ROOTFS:-/var/tmp/coffer-rootfs-systemd}"
out="${CARGO_TARGET_DIR:-$PWD/target}/packages"
name=coffer-units-$$
say() { printf '== %s\n' "$*"; }
fail() {
    printf 'check-units: FAILED: %s\n' "$*" >&2
    podman exec "$name" journalctl --no-pager -n 60 -u coffer-proxy -u coffer-agent -u 'coffer-backup@*' >&2 || true
    exit 1
}
[ -f "$out/coffer-agent_0.1.0-2.deb" ] || fail "no packages in $out: run packaging/check-packages.sh first"

if ! podman image exists "$IMAGE"; then
    if [ ! -x "$ROOTFS/lib/systemd/systemd" ]; then
        rm -rf "$ROOTFS.tmp"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,adduser,procps bookworm "$ROOTFS.tmp" \
            http://deb.debian.org/debian >/dev/null
        mv "$ROOTFS.tmp" "$ROOTFS"
    fi
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/lib/systemd/systemd"]' - "$IMAGE" >/dev/null
fi

trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
podman run -d --name "$name" --systemd=always --privileged --network=none \
    -v "$out:/packages:ro" "$IMAGE" /lib/systemd/systemd >/dev/null
in_c() { podman exec "$name" "$@"; }
# Until systemd is up, exec may fail or report "starting"; give it 60 s.
state=unknown
for _ in $(seq 120); do
    state=$(in_c systemctl is-system-running 2>&1 || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in running | degraded) ;; *) fail "systemd in the container is not up: $state" ;; esac

say "install, certificates, configuration"
in_c dpkg -i /packages/coffer-agent_0.1.0-2.deb /packages/coffer-proxy_0.1.0-2.deb >/dev/null
in_c sh -euc '
    coffer-proxy dev --dir /root/dev --listen 127.0.0.1:0 >/dev/null 2>&1 & dev=$!
    for _ in $(seq 100); do [ -f /root/dev/address ] && break; sleep 0.1; done
    kill $dev; wait $dev || true
    d=/root/dev
    install -d -m 0755 /etc/coffer/tls
    install -m 0644 $d/ca.pem /etc/coffer/tls/ca.pem
    install -m 0644 $d/ca.pem /etc/coffer/tls/agents-ca.pem
    install -m 0644 $d/writer.pem /etc/coffer/tls/agent.pem
    install -m 0640 -g coffer $d/writer.key /etc/coffer/tls/agent.key
    install -m 0644 $d/proxy.pem /etc/coffer/tls/proxy.pem
    install -m 0640 -g coffer-proxy $d/proxy.key /etc/coffer/tls/proxy.key
    install -m 0600 -o coffer-proxy $d/master.key /etc/coffer/master.key
    install -m 0600 -o coffer $d/master.key /etc/coffer/agent-master.key
    # One host: the local key provider on both sides; the dev identities.
    sed -i "s|^listen = .*|listen = \"127.0.0.1:7443\"|" /etc/coffer/proxy.toml
    cat >>/etc/coffer/proxy.toml <<EOF
[[rules]]
name = "writer"
trust_domain = "main"
identity = "spiffe://coffer.dev/writer"
roles = ["writer"]
repos = ["dev/**"]

[[rules]]
name = "reader"
trust_domain = "main"
identity = "spiffe://coffer.dev/reader"
roles = ["reader"]
repos = ["dev/**"]
EOF
    sed -i -e "s|^proxy = .*|proxy = \"https://127.0.0.1:7443\"|" \
        -e "s|^provider = \"kms\"|provider = \"local\"|" \
        -e "s|^key_id = .*|master_key = \"/etc/coffer/agent-master.key\"|" \
        -e "/^chunk_id_key_id = /d" /etc/coffer/agent.toml
    cat >>/etc/coffer/agent.toml <<EOF

[[jobs]]
name = "docs"
repo = "dev/docs"
schedule = "* * * * * *"
path = "/usr/share/doc/coffer-agent"
EOF
    sed -e "s|^cert = .*|cert = \"$d/reader.pem\"|" -e "s|^key = .*|key = \"$d/reader.key\"|" \
        -e "/^\[daemon\]/,\$d" /etc/coffer/agent.toml >/root/restore.toml
'

say "coffer-proxy starts"
in_c systemctl start coffer-proxy
sleep 1
[ "$(in_c systemctl is-active coffer-proxy)" = active ] || fail "coffer-proxy is not active"
in_c runuser -u coffer -- coffer --config /etc/coffer/agent.toml init --repo dev/docs >/dev/null \
    || fail "init as coffer"

say "coffer-agent runs its job"
in_c systemctl start coffer-agent
for _ in $(seq 150); do
    in_c journalctl --no-pager -u coffer-agent -o cat | grep -q '"backup committed"' && break
    sleep 0.2
done
in_c journalctl --no-pager -u coffer-agent -o cat | grep -q '"backup committed"' || fail "no backup from the daemon"
in_c systemctl stop coffer-agent
[ "$(in_c systemctl show -p Result --value coffer-agent)" = success ] || fail "coffer-agent did not stop cleanly"

say "coffer-backup@docs.service (the timer's unit) runs once"
in_c systemctl start coffer-backup@docs.service || fail "coffer-backup@docs.service failed"
in_c systemctl list-timers --all --no-pager >/dev/null
in_c systemctl start coffer-backup@docs.timer
[ "$(in_c systemctl is-active coffer-backup@docs.timer)" = active ] || fail "the timer is not active"
in_c systemctl stop coffer-backup@docs.timer

say "the snapshots verify"
count=$(in_c coffer --config /root/restore.toml snapshots --repo dev/docs --json | grep -c '"id"')
[ "$count" -ge 2 ] || fail "expected the daemon's and the timer's snapshots, found $count"
in_c coffer --config /root/restore.toml verify --repo dev/docs >/dev/null || fail "verify"

say "a config the service user cannot read fails the start"
in_c chmod 0600 /etc/coffer/agent.toml
in_c systemctl start coffer-agent || true
sleep 1
[ "$(in_c systemctl is-active coffer-agent || true)" != active ] || fail "coffer-agent ran with an unreadable config"
in_c chmod 0640 /etc/coffer/agent.toml
in_c systemctl reset-failed coffer-agent

say "purge with the services running"
in_c systemctl start coffer-agent
in_c rm -rf /etc/coffer/tls /etc/coffer/master.key /etc/coffer/agent-master.key
in_c dpkg -P coffer-agent coffer-proxy >/dev/null
if in_c pgrep -f '/usr/bin/coffer' >/dev/null; then fail "coffer processes left after purge"; fi
left=$(in_c sh -c 'ls -d /etc/coffer /var/lib/coffer /lib/systemd/system/coffer* 2>/dev/null || true')
[ -z "$left" ] || fail "left after purge: $left"
# ...but the filesystem store, which holds backups, stays.
[ "$(in_c ls -A /var/lib/coffer-proxy)" = store ] || fail "purge removed the backups or left more than them"
say "units ok"
