#!/usr/bin/env bash
# One command to check everything: sets up what is missing, then ruff, mypy --strict
# and the whole pytest suite (which starts its own PostgreSQL+TimescaleDB and Mosquitto
# on free loopback ports). Extra arguments go to pytest.
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
exec "$VENV/python" -m pytest -p no:cacheprovider "$@"
