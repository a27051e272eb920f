#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite. PostgreSQL tests use 127.0.0.1:5432 when it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
