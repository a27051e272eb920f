"""Voice-to-voice latency over the WebSocket, measured by the client like a caller would.

Scripted spoken questions (Piper voice) stream at real-time pace from a simulated microphone that never stops
sending (silence between turns). Voice-to-voice = the moment the chunk holding the last speech sample was sent
-> the first agent audio frame with speech energy. Every ``--barge-in-every`` turn the caller talks over the
answer, measuring how fast the agent stops. Prints a table and writes JSON.

    .venv/bin/python bench/latency.py                 # starts `voxgate serve` on a free port
    .venv/bin/python bench/latency.py --url ws://127.0.0.1:8000/v1/voice --turns 50
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mic import (  # noqa: E402  (shared with bench/conversation.py; re-exported under these names)
    FRAME_MS,
    SPEECH_DBFS,
    Microphone,
    answer_to_speech,
    dbfs,
    first_voiced_audio_after,
    gateway,
    last_speech_frame,
    next_event,
    percentile,
    start_server,
    synthesize,
    voiced_audio_or_end,
)
from gateway.client import VoiceClient  # noqa: E402

__all__ = [
    "FRAME_MS",
    "QUESTIONS",
    "SPEECH_DBFS",
    "Microphone",
    "dbfs",
    "first_voiced_audio_after",
    "gateway",
    "last_speech_frame",
    "percentile",
    "start_server",
    "synthesize",
]

QUESTIONS = [
    "What is the capital of France?",
    "Can you recommend a good book?",
    "How do I make a cup of tea?",
    "What time does the library open?",
    "Tell me something interesting about the ocean.",
    "What should I cook for dinner tonight?",
    "How far away is the moon?",
    "Can you help me plan a trip to Rome?",
    "What is your favorite color?",
    "How do plants grow?",
    "What is the weather usually like in spring?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "What is a good name for a cat?",
    "Can you give me a tip for sleeping better?",
    "What do bees make?",
    "How do I reset my password?",
    "Where do penguins live?",
    "What is the largest planet?",
    "How can I learn to play the guitar?",
    "What is the best way to save money?",
    "Who wrote Romeo and Juliet?",
    "What makes a good breakfast?",
    "How do airplanes fly?",
    "Can you tell me a fun fact?",
]
INTERRUPTION = "Sorry, stop, I have another question."


@dataclass
class Turn:
    question: str
    voice_to_voice_ms: float | None = None
    server: dict[str, float | None] = field(default_factory=dict)
    transcript: str = ""
    answer: str = ""
    barge_in_ms: float | None = None  # interrupting speech started -> response.interrupted received
    audio_stop_ms: float | None = None  # interrupting speech started -> last agent frame received
    barge_in_skipped: str | None = None
    error: str | None = None


async def run_turn(
    client: VoiceClient, mic: Microphone, pcm: bytes, question: str, barge_in: bool, interruption: bytes
) -> Turn:
    """One spoken question and its answer. Events are matched to this turn by id, never by counting: an
    answer cut before its text was done has no ``response.text.done``, and a question the server split in
    two has two answers, either of which shifted every later count in the session."""
    turn = Turn(question)
    mark = len(client.received.events)
    _, t_last = await mic.say(pcm)
    try:
        t_started, started = await answer_to_speech(client, mark, t_last, timeout=20)
    except (TimeoutError, ConnectionError):
        turn.error = "no answer within 20 s"
        return turn
    rid = started["response_id"]
    # Only this answer's audio counts: it follows its response.started on the socket.
    voiced, end = await voiced_audio_or_end(client, max(t_last, t_started - 0.001), rid, mark, timeout=20)
    if voiced is None:
        texts = [e["text"] for _, e in client.received.events[mark:] if e["type"] == "response.text.done"]
        turn.answer = texts[-1] if texts else ""
        turn.error = (
            "no agent audio within 20 s"
            if end is None
            else f"the answer ended with no audio ({end['type']}, text {turn.answer!r})"
        )
        return turn
    turn.voice_to_voice_ms = round((voiced - t_last) * 1000, 1)
    try:
        final = next(
            (
                e
                for _, e in client.received.events[mark:]
                if e["type"] == "transcript.final" and e.get("turn_id") == started["turn_id"]
            ),
            None,
        )
        turn.transcript = final["text"] if final else ""
        _, metrics = await next_event(client, "metrics", mark, timeout=5, response_id=rid)
        turn.server = {
            k: metrics.get(k) for k in ("stt_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms")
        }
        if barge_in:
            await asyncio.sleep(0.5)
            mark2 = len(client.received.events)
            speak = asyncio.create_task(mic.say(interruption))
            await asyncio.sleep(0)
            t_speak = time.monotonic()
            interrupted = asyncio.create_task(
                next_event(client, "response.interrupted", mark2, timeout=10, response_id=rid)
            )
            new_turn = asyncio.create_task(next_event(client, "transcript.final", mark2, timeout=10))
            await asyncio.wait({interrupted, new_turn}, return_when=asyncio.FIRST_COMPLETED)
            if not interrupted.done():
                # The answer ended while the caller drew breath: the interruption became a plain turn.
                interrupted.cancel()
                turn.barge_in_skipped = "the answer ended before the interruption reached min_interrupt_ms"
            else:
                new_turn.cancel()
                t_event, _ = interrupted.result()
                turn.barge_in_ms = round((t_event - t_speak) * 1000, 1)
                before_event = [t for t, _ in client.received.audio if t <= t_event]
                turn.audio_stop_ms = round((max(before_event) - t_speak) * 1000, 1) if before_event else None
            _, t_last2 = await speak
            # The interruption is itself a question: let its answer start, then stop it.
            _, answer2 = await answer_to_speech(client, mark2, t_last2, timeout=30)
            await asyncio.sleep(1.0)
            await _stop_answer(client, answer2["response_id"], mark2)
        else:
            _, done = await next_event(client, "response.text.done", mark, timeout=30, response_id=rid)
            turn.answer = done["text"]
            # One second of the answer is enough to measure; stopping it keeps 50 turns to a few minutes.
            await asyncio.sleep(1.0)
            await _stop_answer(client, rid, mark)
    except (TimeoutError, ConnectionError) as exc:
        recent = [e["type"] for _, e in client.received.events[-40:] if e["type"] != "response.text.delta"][
            -8:
        ]
        turn.error = f"{type(exc).__name__} {exc} after {recent}"
    return turn


async def _stop_answer(client: VoiceClient, response_id: str, mark: int) -> None:
    """Cancel the answer ``response_id`` and wait (up to 5 s) until it has ended, one way or the other."""

    def ended() -> bool:
        return any(
            e["type"] in ("response.interrupted", "response.audio.done")
            and e.get("response_id") == response_id
            for _, e in client.received.events[mark:]
        )

    if not ended():
        await client.send_event({"type": "response.cancel"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not ended():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)


def summarize(turns: list[Turn]) -> dict[str, object]:
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    summary: dict[str, object] = {
        "turns": len(turns),
        "errors": sum(1 for t in turns if t.error),
        "voice_to_voice_ms": {
            "p50": percentile(v2v, 50),
            "p95": percentile(v2v, 95),
            "max": max(v2v, default=None),
        },
    }
    for stage in ("stt_ms", "llm_ttft_ms", "tts_ttfb_ms"):
        values = [t.server[stage] for t in turns if t.server.get(stage) is not None]
        summary[stage] = {"p50": percentile(values, 50), "p95": percentile(values, 95)}  # type: ignore[arg-type]
    barge = [t.barge_in_ms for t in turns if t.barge_in_ms is not None]
    stop = [t.audio_stop_ms for t in turns if t.audio_stop_ms is not None]
    summary["barge_in_event_ms"] = {
        "p50": percentile(barge, 50),
        "p95": percentile(barge, 95),
        "n": len(barge),
    }
    summary["barge_in_audio_stop_ms"] = {"p50": percentile(stop, 50), "p95": percentile(stop, 95)}
    summary["barge_in_skipped"] = sum(1 for t in turns if t.barge_in_skipped)
    return summary


async def bench(url: str, turns: int, per_session: int, barge_every: int) -> list[Turn]:
    texts = [*QUESTIONS, INTERRUPTION]
    audio = synthesize(texts, 16000)
    results: list[Turn] = []
    n = 0
    while n < turns:
        async with VoiceClient(url) as client:
            await client.wait_for("session.created")
            mic = Microphone(client)
            await asyncio.sleep(0.5)
            for _ in range(min(per_session, turns - n)):
                question = QUESTIONS[n % len(QUESTIONS)]
                barge = barge_every > 0 and n % barge_every == barge_every - 1
                turn = await run_turn(client, mic, audio[question], question, barge, audio[INTERRUPTION])
                results.append(turn)
                n += 1
                flag = f" barge-in {turn.barge_in_ms:.0f} ms" if turn.barge_in_ms else ""
                print(
                    f"turn {n:3d}: v2v {turn.voice_to_voice_ms} ms  server {turn.server}{flag}"
                    + (f"  ERROR {turn.error}" if turn.error else ""),
                    flush=True,
                )
                await asyncio.sleep(0.5)
            await mic.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="ws URL of a running gateway (default: start one)")
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--barge-in-every", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.json"))
    args = parser.parse_args()
    with gateway(args.url) as url:
        turns = asyncio.run(bench(url, args.turns, args.per_session, args.barge_in_every))
    summary = summarize(turns)
    report = {
        "benchmark": "voice-to-voice latency over WebSocket",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "engines": "embedded default (Silero VAD, Whisper tiny.en int8, SmolLM2-135M Q4_1, Piper joe)",
        "summary": summary,
        "turns": [asdict(t) for t in turns],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print()
    print(f"{'metric':28} {'p50':>8} {'p95':>8}")
    for key in (
        "voice_to_voice_ms",
        "stt_ms",
        "llm_ttft_ms",
        "tts_ttfb_ms",
        "barge_in_event_ms",
        "barge_in_audio_stop_ms",
    ):
        row = summary[key]
        assert isinstance(row, dict)
        print(f"{key:28} {row['p50']!s:>8} {row['p95']!s:>8}")
    print(f"turns {summary['turns']}, errors {summary['errors']}; JSON: {args.out}")
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    if v2v:
        print(f"mean {statistics.mean(v2v):.0f} ms over {len(v2v)} turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
