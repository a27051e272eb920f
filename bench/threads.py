"""Does llama.cpp fight CTranslate2 for 2 cores? Whisper and LLM speed under each OpenMP wait policy.

Each policy runs in a fresh subprocess (the policy is read when OpenMP starts): Whisper tiny.en on a FLEURS
clip, then SmolLM2 decoding 40 tokens, then Whisper again, three times, all on one worker thread as the
gateway does. Prints a table and writes JSON.

    .venv/bin/python bench/threads.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "audio" / "fleurs-en-003.ogg"

PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from engines.base import GenerationOptions
from engines.llm_llama import LlamaCppLLM
from engines.models import smollm2_gguf_path
from engines.stt_whisper import WhisperSTT
from pipeline.audio import load_audio

stt = WhisperSTT(min_window_s=None)
llm = LlamaCppLLM(smollm2_gguf_path(), n_threads=2)
audio = load_audio(sys.argv[2])
messages = [{"role": "system", "content": "Answer in one sentence."}, {"role": "user", "content": "Why is the sky blue?"}]

def whisper_ms():
    start = time.perf_counter(); stt.transcribe(audio); return (time.perf_counter() - start) * 1000

def llm_tokens_per_s():
    start = time.perf_counter(); first = None; n = 0
    for _ in llm.stream_chat(messages, GenerationOptions(max_tokens=40)):
        n += 1
        if first is None:
            first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - first)

whisper_ms(); llm_tokens_per_s()
rows = [(whisper_ms(), llm_tokens_per_s(), whisper_ms()) for _ in range(3)]
print(json.dumps(rows))
"""


def main() -> int:
    results = {}
    for policy in ("default", "PASSIVE", "ACTIVE"):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        out = (
            subprocess.run(
                [sys.executable, "-c", PROBE, str(ROOT), str(CLIP)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows = json.loads(out)
        results[policy] = {
            "whisper_ms": [round(r[0]) for r in rows],
            "llm_tokens_per_s": [round(r[1], 1) for r in rows],
            "whisper_after_llm_ms": [round(r[2]) for r in rows],
        }
    print(f"{'OMP_WAIT_POLICY':16} {'Whisper ms':>18} {'LLM tok/s':>18} {'Whisper after LLM':>20}")
    for policy, r in results.items():
        print(
            f"{policy:16} {r['whisper_ms']!s:>18} {r['llm_tokens_per_s']!s:>18} {r['whisper_after_llm_ms']!s:>20}"
        )
    out_path = ROOT / "bench" / "results" / "threads.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), **results}, indent=2)
    )
    print(f"JSON: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
