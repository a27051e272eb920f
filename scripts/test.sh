#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite.
# Storage tests run on SQLite always and on PostgreSQL at VOXGATE_TEST_POSTGRES_URL (default: the local server
# on 127.0.0.1:5432, database test); when that server does not answer they are skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's Chromium, the media tests torch and diffusers: the test setup installs them.
VOXGATE_SETUP_BROWSER=1 VOXGATE_SETUP_MEDIA=1 bash scripts/setup.sh
# The tests host servers in this process, as `voxgate serve`'s process runs: with its malloc arena cap
# (gateway/memory.py), which glibc reads only at process start.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
export VOXGATE_TEST_POSTGRES_URL="${VOXGATE_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
exec .venv/bin/python -m pytest -ra --durations=15 "$@"
