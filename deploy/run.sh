#!/usr/bin/env bash
# One command to run the system: sets up what is missing (see deploy/setup.sh), then
# `csms run` on an embedded PostgreSQL+TimescaleDB in .csms/. Extra arguments go to csms run.
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO_DIR/deploy/setup.sh"
cd "$REPO_DIR"
exec "$REPO_DIR/.venv/bin/csms" run "$@"
