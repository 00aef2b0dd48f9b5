#!/usr/bin/env bash
# One command to check everything: sets up what is missing, then ruff, mypy --strict, the
# whole pytest suite (which starts its own PostgreSQL+TimescaleDB and Mosquitto on free
# loopback ports) and the per-module coverage gate. Extra arguments go to pytest (no gate).
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO_DIR/deploy/setup.sh"
cd "$REPO_DIR"
VENV="$REPO_DIR/.venv/bin"
echo "[test] ruff"
"$VENV/ruff" check --no-cache .
echo "[test] mypy --strict"
"$VENV/mypy" --no-incremental
echo "[test] pytest"
# pytest exits 5 when no test was collected: that fails this script like any other error.
if [ "$#" -gt 0 ]; then
    # A chosen subset: no coverage gate (it judges the whole suite).
    exec "$VENV/python" -m pytest -p no:cacheprovider "$@"
fi
COVERAGE_JSON="$(mktemp -t csms-coverage.XXXXXX.json)"
trap 'rm -f "$COVERAGE_JSON" .coverage' EXIT
"$VENV/python" -m pytest -p no:cacheprovider --cov --cov-report=json:"$COVERAGE_JSON" --cov-report=
echo "[test] coverage gate (pure core and writer, per module)"
"$VENV/python" deploy/coverage_gate.py "$COVERAGE_JSON"
