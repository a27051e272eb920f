"""Piper's memory and speed against the length of what it reads: why inputs are bounded (engines/tts_pieces.py).

Each mode runs in a process of its own (RSS is per process): it loads the default Piper voice, synthesizes
sentences of 5 to 100 words once each, in that order, and reports RSS after each one, and the synthesis time of
a fixed set of 8- to 30-word sentences (the length of most answers). Modes:

- ``bounded``: the shipped engine (inputs cut at 170 characters, the arena sized at load);
- ``unbounded``: the same with no bound (what main did before);
- ``no-arena``: no bound and onnxruntime's CPU arena off (the other way to keep RSS down).

    .venv/bin/python bench/tts_memory.py                    # all three, one after the other
    .venv/bin/python bench/tts_memory.py --mode bounded     # one

Prints one JSON line per mode and writes them to bench/results/tts-memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("bounded", "unbounded", "no-arena")
WORDS = (
    "the brave knight rode across the quiet valley toward a distant castle where a dragon slept under the "
    "hills and the villagers waited"
).split()


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def run_mode(mode: str) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    import engines.tts_piper as tts_piper

    if mode != "bounded":
        tts_piper.MAX_PIECE_CHARS = 10**9
        tts_piper._ARENA_WARMUP_TEXT = "Hello."
    if mode == "no-arena":
        import onnxruntime

        tts_piper._register_shared_arena = lambda onnxruntime: None  # nor the voices' shared arena

        original = onnxruntime.SessionOptions

        def options() -> object:
            made = original()
            made.enable_cpu_mem_arena = False
            return made

        onnxruntime.SessionOptions = options  # type: ignore[misc]
    started = time.perf_counter()
    tts = tts_piper.PiperTTS()
    tts.load()
    load_s = time.perf_counter() - started
    loaded = _rss_mb()
    rng = random.Random(1)
    growth = []
    for n in (5, 10, 20, 30, 40, 60, 80, 100):
        sum(chunk.size for chunk in tts.synthesize(_sentence(rng, n)))
        growth.append({"words": n, "rss_mb": round(_rss_mb(), 1)})
    rng = random.Random(2)
    times = []
    for n in (8, 12, 16, 20, 25, 30) * 4:
        text = _sentence(rng, n)
        t0 = time.perf_counter()
        sum(chunk.size for chunk in tts.synthesize(text))
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "mode": mode,
        "load_s": round(load_s, 2),
        "rss_after_load_mb": round(loaded, 1),
        "rss_by_longest_sentence": growth,
        "rss_growth_after_load_mb": round(growth[-1]["rss_mb"] - loaded, 1),
        "synthesis_ms_median": round(statistics.median(times), 1),
        "synthesis_ms_total": round(sum(times)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.mode)))
        return
    results = []
    for mode in [args.mode] if args.mode else MODES:
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2")}
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--child"],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(result))
        results.append(result)
    report = {
        "host": platform.node(),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "runs": results,
    }
    path = ROOT / "bench" / "results" / "tts-memory.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
