"""Another caller's wait for LLM text while one client floods the gateway with typed turns (issue 9).

One client sends ``--turns`` ``input_text`` events ``--gap-ms`` apart and never reads; meanwhile and after it
leaves, a second caller asks a question and times its first ``response.text.delta``. Before the fix, 600
turns 40 ms apart kept every other caller waiting ~160 s (cancelled LLM jobs stayed queued and all ran).
Prints a table and writes JSON.

    .venv/bin/python bench/flood.py                  # starts `voxgate serve` on a free port
    .venv/bin/python bench/flood.py --turns 600 --gap-ms 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.latency import gateway  # noqa: E402
from gateway.client import VoiceClient  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name a fruit that is yellow.", "How many legs has a spider?"]


async def ask(url: str, text: str, timeout: float = 300.0) -> float:
    """Seconds from sending ``text`` to the first text delta of its answer."""
    async with VoiceClient(url) as client:
        await client.wait_for("session.created")
        sent = time.monotonic()
        await client.send_event({"type": "input_text", "text": text})
        await client.wait_for("response.text.delta", timeout=timeout)
        first = client.received.first_time("response.text.delta")
        assert first is not None
        await client.wait_for("response.text.done", timeout=timeout)
        return first - sent


async def flood(url: str, turns: int, gap_s: float) -> None:
    async with VoiceClient(url, read=False) as client:
        for i in range(turns):
            await client.send_event({"type": "input_text", "text": f"Tell me a long story, number {i}."})
            await asyncio.sleep(gap_s)


async def bench(url: str, turns: int, gap_s: float) -> dict[str, object]:
    baseline = [await ask(url, q) for q in QUESTIONS]
    flooder = asyncio.create_task(flood(url, turns, gap_s))
    await asyncio.sleep(min(2.0, turns * gap_s / 4))
    during = []
    while not flooder.done():
        during.append(await ask(url, QUESTIONS[len(during) % len(QUESTIONS)]))
    await flooder
    after = [await ask(url, q) for q in QUESTIONS]
    return {"baseline_s": baseline, "during_flood_s": during, "after_flood_s": after}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="ws URL of a running gateway (default: start one)")
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--gap-ms", type=float, default=40.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "flood.json"))
    args = parser.parse_args()
    with gateway(args.url) as url:
        result = asyncio.run(bench(url, args.turns, args.gap_ms / 1000))
    report = {
        "benchmark": "another caller's first LLM text during and after a typed-turn flood",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "flood": {"turns": args.turns, "gap_ms": args.gap_ms},
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'phase':14} {'n':>3} {'median s':>9} {'max s':>7}")
    for phase in ("baseline_s", "during_flood_s", "after_flood_s"):
        values = result[phase]
        assert isinstance(values, list)
        if values:
            print(f"{phase:14} {len(values):>3} {statistics.median(values):>9.2f} {max(values):>7.2f}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
