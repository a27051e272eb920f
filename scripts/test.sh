#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite.
# Storage tests run on SQLite always and on PostgreSQL at VOXGATE_TEST_POSTGRES_URL (default: the local server
# on 127.0.0.1:5432, database test); when that server does not answer they are skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's Chromium: the test setup installs it.
VOXGATE_SETUP_BROWSER=1 bash scripts/setup.sh
export VOXGATE_TEST_POSTGRES_URL="${VOXGATE_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
exec .venv/bin/python -m pytest -ra "$@"
