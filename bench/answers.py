"""Answer shape over a 20-question typed conversation: length, sentence ends, and repetition.

One session (the real pipeline and the configured LLM, with stand-in VAD, STT and TTS so only the answers
cost time) is asked 20 distinct questions as typed turns, each answer heard to its end before the next
question. It reports how many answers ran into the token cap, how many stopped mid-sentence, their mean and
largest word count, and how many repeat a run of 6 words from an earlier answer. Writes JSON.

    .venv/bin/python bench/answers.py                  # the service defaults (instructions, limits, sampling)
    .venv/bin/python bench/answers.py --before         # main before issue 11: old instructions, no shaping
    .venv/bin/python bench/answers.py --repeat-penalty 1.2 --max-words 0   # try a knob (0: no limit)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.base import Capabilities, GenerationOptions, Transcript, Voice  # noqa: E402
from engines.registry import build  # noqa: E402
from gateway.engines import engine_choices  # noqa: E402
from gateway.settings import Settings, session_config  # noqa: E402
from pipeline.events import ServerEvent  # noqa: E402
from pipeline.runtime import Runtime  # noqa: E402
from pipeline.session import Session, SessionConfig  # noqa: E402
from pipeline.text import ends_at_sentence_end  # noqa: E402

# Questions of a caller's kind; none of them appears in the tests (tests/test_answer_shape.py has its own).
QUESTIONS = [
    "What should I pack for a weekend of camping?",
    "How long should I boil an egg?",
    "Why do cats purr?",
    "What is a good way to fall asleep faster?",
    "How far away is the moon?",
    "Can you suggest a name for a goldfish?",
    "What causes thunder?",
    "How do I keep basil alive indoors?",
    "What is the difference between a frog and a toad?",
    "Give me a tip for learning to juggle.",
    "Why is the ocean salty?",
    "What should I cook for dinner tonight?",
    "How many legs does a spider have?",
    "What is a fun thing to do on a rainy day?",
    "How do bees make honey?",
    "What is the tallest animal in the world?",
    "How can I stop my glasses from fogging up?",
    "What is a haiku?",
    "Why do leaves change colour in autumn?",
    "How do I say thank you in Japanese?",
]

# What main said before issue 11 (the measurement in the issue): its instructions, no answer shaping.
BEFORE_INSTRUCTIONS = (
    "You are a friendly voice assistant. Answer in one or two short sentences. "
    "Do not use lists, markdown or emoji."
)


class QuietVAD:
    sample_rate = 16000
    sample_rates = (16000,)
    capabilities = Capabilities(batched=True)

    def new_state(self, sample_rate: int = 16000) -> dict[str, int]:
        return {}

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        return np.zeros(len(states), np.float32)


class NoSTT:
    capabilities = Capabilities()

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return Transcript("", duration_s=len(audio) / 16000)


class ShortTTS:
    """10 ms of near-silence per word: the answer is paced and heard to its end, quickly."""

    capabilities = Capabilities(streaming=True)
    sample_rate = 16000

    def voices(self) -> list[Voice]:
        return [Voice("short", "short", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        yield np.ones(160 * max(1, len(text.split())), np.int16)


class CountingLLM:
    """The real LLM, counting the deltas (about one per token) of each call and the cap it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.calls: list[dict[str, Any]] = []

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        call = {"deltas": 0, "max_tokens": options.max_tokens, "extra": dict(options.extra)}
        self.calls.append(call)
        for delta in self.inner.stream_chat(messages, options):
            call["deltas"] += 1
            yield delta


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def repeated_runs(answers: list[str], n: int = 6) -> list[tuple[int, str]]:
    """(index, run) for each answer holding a run of ``n`` words that an earlier answer holds."""
    seen: set[tuple[str, ...]] = set()
    out: list[tuple[int, str]] = []
    for index, answer in enumerate(answers):
        words = words_of(answer)
        grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
        repeated = sorted(grams & seen)
        if repeated:
            out.append((index, " ".join(repeated[0])))
        seen |= grams
    return out


async def converse(rt: Runtime, config: SessionConfig, questions: list[str]) -> list[dict[str, Any]]:
    session = Session(rt, config)
    await session.start()
    events: list[dict[str, Any]] = []
    changed = asyncio.Event()

    async def drain() -> None:
        while (item := await session.outbox.get()) is not None:
            if isinstance(item, ServerEvent):
                events.append(item.to_wire())
                changed.set()

    async def first(type_: str, **match: Any) -> dict[str, Any]:
        while True:
            for event in events:
                if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                    return event
            changed.clear()
            await asyncio.wait_for(changed.wait(), 120)

    reader = asyncio.create_task(drain())
    turns: list[dict[str, Any]] = []
    try:
        for question in questions:
            started_count = sum(e["type"] == "response.started" for e in events)
            t0 = time.perf_counter()
            await session.submit_text(question)
            while sum(e["type"] == "response.started" for e in events) <= started_count:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 120)
            rid = [e for e in events if e["type"] == "response.started"][-1]["response_id"]
            done = await first("response.text.done", response_id=rid)
            t_text = time.perf_counter() - t0
            await first("response.audio.done", response_id=rid)
            response = session.answers.get(rid).response  # type: ignore[union-attr]
            turns.append(
                {
                    "question": question,
                    "answer": done["text"],
                    "dropped": response.dropped_text,
                    "text_s": round(t_text, 2),
                }
            )
    finally:
        await session.close()
        await asyncio.wait_for(reader, 10)
    return turns


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    answers = [t["answer"] for t in turns]
    counts = [len(words_of(a)) for a in answers]
    repeats = repeated_runs(answers)
    return {
        "answers": len(answers),
        "hit_token_cap": sum(t["hit_cap"] for t in turns),
        "ended_mid_sentence": sum(not ends_at_sentence_end(a) for a in answers),
        "trimmed": sum(bool(t["dropped"].strip()) for t in turns),
        "mean_words": round(statistics.fmean(counts), 1),
        "max_words": max(counts),
        "repeat_6gram_answers": len(repeats),
        "repeats": [{"answer": i + 1, "run": run} for i, run in repeats],
        "mean_text_s": round(statistics.fmean(t["text_s"] for t in turns), 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    config = session_config(settings)
    if args.before:
        config.instructions = BEFORE_INSTRUCTIONS
        config.max_tokens = 60
        config.answer_max_sentences = config.answer_max_words = None
        config.repeat_penalty = config.presence_penalty = config.frequency_penalty = None
        config.no_repeat_ngram = None
        config.end_at_sentence = None
    for name in (
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "no_repeat_ngram",
        "max_tokens",
        "temperature",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value if value >= 0 else None)
    if args.no_end_at_sentence:
        config.end_at_sentence = None
    if args.max_words is not None:
        config.answer_max_words = args.max_words or None
    if args.max_sentences is not None:
        config.answer_max_sentences = args.max_sentences or None
    if args.instructions is not None:
        config.instructions = args.instructions
    llm = CountingLLM(await asyncio.to_thread(build, engine_choices(settings)["llm"]))
    rt = Runtime(vad=QuietVAD(), stt=NoSTT(), llm=llm, tts=ShortTTS())
    try:
        questions = QUESTIONS
        if args.questions_file:
            lines = Path(args.questions_file).read_text().splitlines()
            questions = [q.strip() for q in lines if q.strip() and not q.startswith("#")]
        turns = await converse(rt, config, questions[: args.questions])
    finally:
        await rt.close()
    for turn, call in zip(turns, llm.calls, strict=False):
        turn["deltas"] = call["deltas"]
        turn["hit_cap"] = call["deltas"] >= call["max_tokens"]
    knobs = {
        key: getattr(config, key)
        for key in (
            "instructions",
            "max_tokens",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "no_repeat_ngram",
            "end_at_sentence",
            "answer_max_sentences",
            "answer_max_words",
        )
    }
    return {
        "benchmark": "answer shape over a typed conversation",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "llm": settings.llm_engine,
        "mode": "before" if args.before else "defaults",
        "config": knobs,
        "summary": summarize(turns),
        "turns": turns,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", action="store_true", help="main before issue 11 (see above)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--instructions")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--repeat-penalty", dest="repeat_penalty", type=float, help="-1: unset")
    parser.add_argument("--presence-penalty", dest="presence_penalty", type=float, help="-1: unset")
    parser.add_argument("--frequency-penalty", dest="frequency_penalty", type=float, help="-1: unset")
    parser.add_argument("--no-repeat-ngram", dest="no_repeat_ngram", type=int, help="-1: unset")
    parser.add_argument("--no-end-at-sentence", dest="no_end_at_sentence", action="store_true")
    parser.add_argument("--questions-file", help="one question per line instead of the built-in list")
    parser.add_argument("--max-words", dest="max_words", type=int)
    parser.add_argument("--max-sentences", dest="max_sentences", type=int)
    parser.add_argument("--out", help="JSON path (default bench/results/answers-<mode>.json)")
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    out = Path(args.out or ROOT / "bench" / "results" / f"answers-{report['mode']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.show:
        for i, turn in enumerate(report["turns"], 1):
            print(f"{i:2d}. {turn['question']}\n    -> {turn['answer']}")
            if turn["dropped"].strip():
                print(f"       (dropped: {turn['dropped'].strip()})")
    summary = dict(report["summary"])
    repeats = summary.pop("repeats")
    print(json.dumps(summary))
    for repeat in repeats:
        print(f"  answer {repeat['answer']} repeats: {repeat['run']!r}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
