"""What Silero VAD costs per call: one ONNX call scoring a batch of streams, at 8 kHz (phone) and 16 kHz.

Every call needs 31.25 chunks of 32 ms a second. For each rate and batch size this prints the time per model
call, per chunk, and the share of one core that N calls' VAD alone would take (the ceiling VAD puts on calls
per core, before any networking). One intra-op thread, as the gateway runs it. Writes JSON.

    .venv/bin/python bench/vad.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.vad_silero import SileroVAD  # noqa: E402

CHUNKS_PER_CALL_S = 1000 / 32


def measure(vad: SileroVAD, rate: int, batch: int, repeats: int) -> float:
    """Seconds per model call for ``batch`` streams of real-looking (noisy) audio."""
    rng = np.random.default_rng(0)
    states = [vad.new_state(rate) for _ in range(batch)]
    chunk = rate * 32 // 1000
    chunks = (0.1 * rng.standard_normal((batch, chunk))).astype(np.float32)
    for _ in range(3):
        vad.speech_probs(states, chunks)
    start = time.perf_counter()
    for _ in range(repeats):
        vad.speech_probs(states, chunks)
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,32,64,128,300")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--calls", type=int, default=300, help="calls for the 'cores for N calls' column")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vad.json"))
    args = parser.parse_args(argv)
    vad = SileroVAD()
    rows = []
    print(f"{'rate':>6} {'batch':>6} {'ms/call':>8} {'us/chunk':>9} {f'cores@{args.calls}':>10}")
    for rate in vad.sample_rates:
        for batch in (int(b) for b in args.batches.split(",")):
            seconds = measure(vad, rate, batch, args.repeats)
            per_chunk = seconds / batch
            cores = per_chunk * CHUNKS_PER_CALL_S * args.calls
            rows.append(
                {
                    "sample_rate": rate,
                    "batch": batch,
                    "ms_per_model_call": round(seconds * 1000, 3),
                    "us_per_chunk": round(per_chunk * 1e6, 1),
                    "cores_for_calls": round(cores, 3),
                    "calls_per_core_vad_only": int(1 / (per_chunk * CHUNKS_PER_CALL_S)),
                }
            )
            print(f"{rate:>6} {batch:>6} {seconds * 1000:>8.2f} {per_chunk * 1e6:>9.1f} {cores:>10.2f}")
    result = {
        "benchmark": "vad",
        "date": time.strftime("%Y-%m-%d"),
        "calls": args.calls,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
