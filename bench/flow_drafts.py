"""AI-drafted flows: how many of the values a description asks for end up as collect nodes.

Drafts ten descriptions with the embedded model (SmolLM2-135M on llama.cpp, greedy, under the draft grammar),
repairs and validates each draft, and checks every value the description names against the drafted collect
nodes: a value is *matched* when a collect node's variable or question mentions it, and *kind-matched* when
that node also asks for the right kind (number, date, ...). Prints a table and writes JSON.

    .venv/bin/python bench/flow_drafts.py
    .venv/bin/python bench/flow_drafts.py --out bench/reference/flow_drafts-2026-12-01.json --max-tokens 700
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.base import GenerationOptions  # noqa: E402
from engines.llm_llama import LlamaCppLLM  # noqa: E402
from engines.models import smollm2_gguf_path  # noqa: E402
from flows.draft import draft_flow  # noqa: E402

# (description, [(regex over variable + question, expected kind), ...])
CASES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "Book a table at a restaurant: ask how many people, the date and the time, then confirm with yes or no.",
        [
            (r"people|party|guest|size|how many", "number"),
            (r"date|day", "date"),
            (r"time", "time"),
            (r"confirm|correct|book it|yes", "yes_no"),
        ],
    ),
    (
        "Remind a patient of their dentist appointment and ask whether they can come.",
        [(r"come|attend|make it|confirm|able", "yes_no")],
    ),
    (
        "Take a pizza delivery order: number of pizzas, the delivery address, and the delivery time.",
        [(r"pizza|number|how many", "number"), (r"address|where", "text"), (r"time|when", "time")],
    ),
    (
        "Schedule a plumber visit: ask the caller's name, the preferred date, and whether it is an emergency.",
        [(r"name", "text"), (r"date|day", "date"), (r"emergency|urgent", "yes_no")],
    ),
    (
        "Ask the caller for their order number and their email address, then say goodbye.",
        [(r"order", "number"), (r"email|e-mail|address", "text")],
    ),
    (
        "Customer survey: ask for a rating from one to ten and whether they would recommend us.",
        [(r"rating|rate|score|one to ten|1", "number"), (r"recommend", "yes_no")],
    ),
    (
        "Hotel reservation: ask for the check-in date, the number of nights, and the number of guests.",
        [(r"check|arriv|date", "date"), (r"night", "number"), (r"guest|people|person", "number")],
    ),
    (
        "Answer questions about a gym's opening hours and prices, and transfer to a person if asked.",
        [],
    ),
    (
        "Car service booking: ask for the car's licence plate, the service date and a drop-off time.",
        [(r"plate|licen|registration|car", "text"), (r"date|day", "date"), (r"time|drop", "time")],
    ),
    (
        "Event RSVP: ask whether the caller will attend and how many guests they will bring.",
        [(r"attend|coming|come|rsvp", "yes_no"), (r"guest|how many|people", "number")],
    ),
]


class EmbeddedComplete:
    """``complete`` on the embedded model; every call runs on one worker thread."""

    def __init__(self, model_path: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.llm = self.executor.submit(LlamaCppLLM, model_path).result()
        self.tokens = 0

    def _run(self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int) -> str:
        extra = {"json_schema": schema} if schema is not None else {}
        text = "".join(self.llm.stream_chat(messages, GenerationOptions(max_tokens=max_tokens, extra=extra)))
        self.tokens = self.llm.count_tokens(text)
        return text

    async def __call__(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int
    ) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self._run, messages, schema, max_tokens
        )


def score(flow: dict[str, Any], expected: list[tuple[str, str]]) -> tuple[int, int]:
    """(matched, kind-matched): each expected value claims at most one collect node, and vice versa."""
    collects = [n for n in flow["nodes"] if n["type"] == "collect"]
    matched = kind_matched = 0
    used: set[str] = set()
    for pattern, kind in expected:
        candidates = [
            n for n in collects
            if n["id"] not in used and re.search(pattern, f"{n['variable']} {n['prompt']}".replace("_", " "), re.I)
        ]  # fmt: skip
        if not candidates:
            continue
        best = next((n for n in candidates if n["kind"] == kind), candidates[0])
        used.add(best["id"])
        matched += 1
        kind_matched += best["kind"] == kind
    return matched, kind_matched


async def run(args: argparse.Namespace) -> dict[str, Any]:
    complete = EmbeddedComplete(args.model or smollm2_gguf_path())
    rows: list[dict[str, Any]] = []
    for description, expected in CASES[: args.limit]:
        started = time.perf_counter()
        result = await draft_flow(description, complete, max_tokens=args.max_tokens)
        seconds = time.perf_counter() - started
        matched, kind_matched = score(result.flow, expected)
        rows.append(
            {
                "description": description,
                "seconds": round(seconds, 2),
                "tokens": complete.tokens,
                "valid": result.valid,
                "nodes": len(result.flow["nodes"]),
                "collect_nodes": sum(n["type"] == "collect" for n in result.flow["nodes"]),
                "expected_values": len(expected),
                "matched": matched,
                "kind_matched": kind_matched,
                "repairs": len(result.repairs),
                "flow": result.flow,
            }
        )
        print(
            f"{seconds:6.1f}s {complete.tokens:4d} tok  valid={result.valid!s:5}  "
            f"values {matched}/{len(expected)} (kind {kind_matched})  repairs={len(result.repairs):2d}  "
            f"{description[:60]}",
            flush=True,
        )
    expected_total = sum(r["expected_values"] for r in rows) or 1
    summary = {
        "drafts": len(rows),
        "valid": sum(r["valid"] for r in rows),
        "values_expected": sum(r["expected_values"] for r in rows),
        "values_matched": sum(r["matched"] for r in rows),
        "values_kind_matched": sum(r["kind_matched"] for r in rows),
        "match_rate": round(sum(r["matched"] for r in rows) / expected_total, 3),
        "kind_match_rate": round(sum(r["kind_matched"] for r in rows) / expected_total, 3),
        "median_seconds": round(statistics.median(r["seconds"] for r in rows), 2) if rows else None,
        "mean_repairs": round(statistics.mean(r["repairs"] for r in rows), 2) if rows else None,
    }
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "model": Path(args.model or smollm2_gguf_path()).name,
        "max_tokens": args.max_tokens,
        "summary": summary,
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "flow_drafts.json"))
    parser.add_argument("--max-tokens", type=int, default=700)
    parser.add_argument("--limit", type=int, default=len(CASES), help="draft only the first N descriptions")
    parser.add_argument("--model", default=None, help="a GGUF file (default: the embedded SmolLM2-135M)")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    s = report["summary"]
    print(
        f"\nvalid {s['valid']}/{s['drafts']}  values matched {s['values_matched']}/{s['values_expected']} "
        f"({s['match_rate']:.0%}), right kind {s['values_kind_matched']} ({s['kind_match_rate']:.0%}), "
        f"median {s['median_seconds']} s per draft"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
