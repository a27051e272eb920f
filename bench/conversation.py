"""Long spoken conversations over ``/v1/voice``, in real time, like a caller with an open microphone.

A simulated microphone sends 20 ms of audio every 20 ms and never stops (silence between turns). It speaks a
question (Piper's voice, or espeak-ng's with ``--voice espeak``), waits until the agent's answer has finished
playing (the client plays each frame as it arrives), waits ``--gap`` seconds more, and asks the next question:
``--turns`` questions in one session, ``--runs`` sessions. Per turn it reports:

- voice-to-voice: the send time of the 20 ms frame holding the question's last speech sample -> the first
  agent audio frame of the answer with speech energy (> -45 dBFS), the rule of bench/latency.py;
- first token: the server's ``llm_ttft_ms`` (``metrics`` event: LLM request -> first token; the request may
  precede the end of the turn, for an answer started on hold), and the client's first text: last speech
  sample sent -> the answer's first ``response.text.delta``;
- the answer: its length in words, whether it ends at a sentence end, and whether it repeats a run of 6
  words from an earlier answer of the same conversation;
- the server's final transcript of the question and its WER against the question text, and how many
  server turns (``transcript.final``) the question made: more than one is a split, a defect;
- stopped -> audio: the ``speech.stopped`` that ended the turn -> the answer's first audio frame, on arrival.

``--protocol realtime`` runs the same questions over ``/v1/realtime`` too (OpenAI's Realtime API, 24 kHz PCM16,
the server's turn detection: voxgate's own by default, as on ``/v1/voice``, or ``--realtime-vad server_vad``),
one Realtime session per run before the ``/v1/voice`` one, and reports its ``input_audio_buffer.speech_stopped``
-> first ``response.output_audio.delta`` next to the ``/v1/voice`` figure (bench/conversation_realtime.py).

Prints a table and writes JSON to bench/results/conversation-<timestamp>.json.

    .venv/bin/python bench/conversation.py                        # starts `voxgate serve` on a free port
    .venv/bin/python bench/conversation.py --turns 6 --voice espeak
    .venv/bin/python bench/conversation.py --url ws://127.0.0.1:8000/v1/voice --runs 3
    .venv/bin/python bench/conversation.py --protocol realtime --turns 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import conversation_realtime as realtime  # noqa: E402
from bench.answers import repeated_runs  # noqa: E402
from bench.mic import (  # noqa: E402
    FRAME_MS,
    VOICES,
    Microphone,
    answer_to_speech,
    gateway,
    next_event,
    percentile,
    synthesize,
    voiced_audio_or_end,
)
from gateway.client import VoiceClient  # noqa: E402
from pipeline.text import count_words, ends_at_sentence_end  # noqa: E402
from tests.speech import wer  # noqa: E402

QUESTIONS_FILE = ROOT / "bench" / "data" / "conversation_questions.txt"
ENDED = ("response.audio.done", "response.interrupted")


def load_questions(path: Path) -> list[str]:
    """One question a line; blank lines and ``#`` comments are skipped."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass
class Turn:
    run: int
    turn: int  # 1-based, within its conversation
    question: str
    voice_to_voice_ms: float | None = None
    stopped_to_audio_ms: float | None = (
        None  # the turn's last speech.stopped -> the answer's first audio frame
    )
    first_text_ms: float | None = None  # last speech sample sent -> the answer's first text delta
    server: dict[str, float | None] = field(default_factory=dict)  # the answer's `metrics` event
    transcript: str = ""  # the server's final transcript of the answered turn
    wer: float | None = None
    transcripts: list[str] = field(default_factory=list)  # every transcript.final the question made
    server_turns: int = 0
    answer: str = ""
    answer_words: int = 0
    sentence_end: bool = False
    repeated: str | None = None  # a 6-word run that an earlier answer of the conversation holds
    answer_audio_ms: int | None = None
    interrupted: str | None = None  # the reason, if the answer was cut
    error: str | None = None
    session_id: str = ""  # with response_id: the turn in GET /v1/sessions/{id}
    response_id: str = ""


def playout_end(audio: list[tuple[float, bytes]], after: float, until: float) -> float:
    """When a player that plays each frame as it arrives finishes the frames that arrived in (after, until]."""
    end = after
    for t, _ in audio:
        if after < t <= until:
            end = max(end, t) + FRAME_MS / 1000
    return end


async def run_turn(
    client: VoiceClient, mic: Microphone, pcm: bytes, turn: Turn, gap: float, answer_timeout: float
) -> None:
    mark = len(client.received.events)
    _, t_last = await mic.say(pcm)
    try:
        t_started, started = await answer_to_speech(client, mark, t_last, timeout=20)
        rid = turn.response_id = started["response_id"]
        voiced, _ = await voiced_audio_or_end(
            client, max(t_last, t_started - 0.001), rid, mark, timeout=answer_timeout
        )
        if voiced is not None:
            turn.voice_to_voice_ms = round((voiced - t_last) * 1000, 1)
        stops = [
            t for t, e in client.received.events[mark:] if e["type"] == "speech.stopped" and t <= t_started
        ]
        first_audio = next((t for t, _ in client.received.audio if t >= t_started), None)
        if stops and first_audio is not None:
            turn.stopped_to_audio_ms = round((first_audio - stops[-1]) * 1000, 1)
        t_end, end = await next_event(client, ENDED, mark, timeout=answer_timeout, response_id=rid)
        if end["type"] == "response.interrupted":
            turn.interrupted = end["reason"]
        else:
            turn.answer_audio_ms = end["audio_ms"]
        # The caller hears the answer out, then takes a breath before the next question.
        delay = playout_end(client.received.audio, t_started, t_end) + gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        events = client.received.events[mark:]
        turn.answer = _answer_text(events, rid, end)
        turn.answer_words = count_words(turn.answer)
        turn.sentence_end = ends_at_sentence_end(turn.answer)
        deltas = [t for t, e in events if e["type"] == "response.text.delta" and e["response_id"] == rid]
        if deltas:
            turn.first_text_ms = round((deltas[0] - t_last) * 1000, 1)
        metrics = next((e for _, e in events if e["type"] == "metrics" and e["response_id"] == rid), None)
        if metrics is not None:
            turn.server = {k: v for k, v in metrics.items() if k.endswith("_ms")}
        final = next(
            (e for _, e in events if e["type"] == "transcript.final" and e["turn_id"] == started["turn_id"]),
            None,
        )
        if final is not None:
            turn.transcript = final["text"]
            turn.wer = round(wer(turn.question, turn.transcript), 3)
        if voiced is None:
            turn.error = f"the answer ended with no audio with speech energy (text {turn.answer!r})"
    except (TimeoutError, ConnectionError) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
        # Leave the next question a quiet line: stop whatever is still playing.
        await client.send_event({"type": "response.cancel"})
        await asyncio.sleep(gap + 1.0)
    finals = [e for _, e in client.received.events[mark:] if e["type"] == "transcript.final"]
    turn.transcripts = [e["text"] for e in finals]
    # A final for a turn already sent replaces it (``continues``: the caller went on after a pause).
    turn.server_turns = len({e["turn_id"] for e in finals})


def _answer_text(events: list[tuple[float, dict[str, Any]]], rid: str, end: dict[str, Any]) -> str:
    """The answer's whole text (``response.text.done``), else what was heard of a cut answer, else its deltas."""
    for _, e in events:
        if e["type"] == "response.text.done" and e["response_id"] == rid:
            return str(e["text"])
    if end["type"] == "response.interrupted":
        return str(end["heard_text"])
    return "".join(
        e["delta"] for _, e in events if e["type"] == "response.text.delta" and e["response_id"] == rid
    )


async def converse(
    url: str,
    run: int,
    questions: list[str],
    audio: dict[str, bytes],
    turns: int,
    gap: float,
    answer_timeout: float,
) -> list[Turn]:
    results: list[Turn] = []
    async with VoiceClient(url) as client:
        session_id = (await client.wait_for("session.created"))["session_id"]
        mic = Microphone(client)
        await asyncio.sleep(1.0)  # an open line before the first question
        try:
            for i in range(turns):
                question = questions[i % len(questions)]
                turn = Turn(run, i + 1, question, session_id=session_id)
                await run_turn(client, mic, audio[question], turn, gap, answer_timeout)
                results.append(turn)
                print(_row(turn), flush=True)
        finally:
            await mic.close()
            with contextlib.suppress(Exception):
                await client.send_event({"type": "session.close"})
    for index, run_text in repeated_runs([t.answer for t in results]):
        results[index].repeated = run_text
        print(f"  run {run} turn {index + 1} repeats an earlier answer: {run_text!r}")
    return results


def _row(t: Turn) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    flags = []
    if t.server_turns != 1:
        flags.append(f"SERVER TURNS {t.server_turns}")
    if t.answer and not t.sentence_end:
        flags.append("MID-SENTENCE")
    if t.interrupted:
        flags.append(f"interrupted ({t.interrupted})")
    if t.error:
        flags.append(f"ERROR {t.error}")
    wer_text = "-" if t.wer is None else f"{t.wer:.2f}"
    return (
        f"{t.run:>3} {t.turn:>4} {ms(t.voice_to_voice_ms):>6} {ms(t.server.get('llm_ttft_ms')):>6} "
        f"{ms(t.first_text_ms):>6} {t.answer_words:>5} {wer_text:>5}  {t.transcript[:40]!r} -> "
        f"{t.answer[:60]!r} {' '.join(flags)}"
    )


HEADER = (
    f"{'run':>3} {'turn':>4} {'v2v':>6} {'ttft':>6} {'text':>6} {'words':>5} {'WER':>5}  transcript -> answer"
)


def summarize(turns: list[Turn]) -> dict[str, Any]:
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    stopped = [t.stopped_to_audio_ms for t in turns if t.stopped_to_audio_ms is not None]
    ttft = [float(v) for t in turns if (v := t.server.get("llm_ttft_ms")) is not None]
    first_text = [t.first_text_ms for t in turns if t.first_text_ms is not None]
    wers = [t.wer for t in turns if t.wer is not None]
    answered = [t for t in turns if t.answer]
    words = [t.answer_words for t in answered]
    return {
        "turns": len(turns),
        "errors": sum(1 for t in turns if t.error),
        "voice_to_voice_ms": {
            "p50": percentile(v2v, 50),
            "p95": percentile(v2v, 95),
            "max": max(v2v, default=None),
            "n": len(v2v),
        },
        "stopped_to_audio_ms": {
            "p50": percentile(stopped, 50),
            "p95": percentile(stopped, 95),
            "n": len(stopped),
        },
        "llm_ttft_ms": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95), "n": len(ttft)},
        "first_text_ms": {"p50": percentile(first_text, 50), "p95": percentile(first_text, 95)},
        "mean_wer": round(statistics.mean(wers), 3) if wers else None,
        "exact_transcripts": sum(1 for w in wers if w == 0),
        "answer_words": {
            "mean": round(statistics.mean(words), 1) if words else None,
            "max": max(words, default=None),
        },
        "empty_answers": sum(1 for t in turns if not t.answer and not t.error),
        "mid_sentence_cuts": sum(1 for t in answered if not t.sentence_end),
        "repeats": sum(1 for t in turns if t.repeated),
        "splits": sum(1 for t in turns if t.server_turns > 1),
        "no_turn": sum(1 for t in turns if t.server_turns == 0),
        "interrupted": sum(1 for t in turns if t.interrupted),
    }


def print_summary(summary: dict[str, Any]) -> None:
    v2v, ttft, text = summary["voice_to_voice_ms"], summary["llm_ttft_ms"], summary["first_text_ms"]
    print()
    print(f"{'metric':34} {'p50':>8} {'p95':>8} {'max':>8}")
    print(f"{'voice-to-voice ms (client)':34} {v2v['p50']!s:>8} {v2v['p95']!s:>8} {v2v['max']!s:>8}")
    stop = summary["stopped_to_audio_ms"]
    print(f"{'speech.stopped -> audio ms':34} {stop['p50']!s:>8} {stop['p95']!s:>8}")
    print(f"{'LLM first token ms (server)':34} {ttft['p50']!s:>8} {ttft['p95']!s:>8}")
    print(f"{'first text ms (client)':34} {text['p50']!s:>8} {text['p95']!s:>8}")
    print(
        f"turns {summary['turns']}, errors {summary['errors']}; mean WER {summary['mean_wer']} "
        f"({summary['exact_transcripts']} exact); answer words mean {summary['answer_words']['mean']}, "
        f"max {summary['answer_words']['max']}; empty answers {summary['empty_answers']}"
    )
    print(
        f"repeats {summary['repeats']}, mid-sentence cuts {summary['mid_sentence_cuts']}, "
        f"splits {summary['splits']}, questions with no turn {summary['no_turn']}, "
        f"interrupted {summary['interrupted']}"
    )


async def bench(
    url: str, runs: int, turns: int, questions: list[str], audio: dict[str, bytes], gap: float, timeout: float
) -> list[list[Turn]]:
    print(HEADER, flush=True)
    return [await converse(url, run + 1, questions, audio, turns, gap, timeout) for run in range(runs)]


async def bench_realtime(
    url: str, args: argparse.Namespace, questions: list[str], audio24k: dict[str, bytes]
) -> list[dict[str, Any]]:
    print(realtime.HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        rows += await realtime.realtime_turns(url, run + 1, questions, audio24k, args.turns, args.gap,
                                              args.answer_timeout, args.realtime_vad)  # fmt: skip
    return rows


def compare(rows: list[dict[str, Any]], turns: list[Turn]) -> dict[str, Any]:
    """speech_stopped -> first audio over /v1/realtime next to /v1/voice's, per percentile."""
    over_realtime = [r["stopped_to_audio_ms"] for r in rows if "stopped_to_audio_ms" in r]
    over_voice = [t.stopped_to_audio_ms for t in turns if t.stopped_to_audio_ms is not None]
    out: dict[str, Any] = {"realtime_n": len(over_realtime), "voice_n": len(over_voice),
                           "realtime_errors": sum(1 for r in rows if "error" in r)}  # fmt: skip
    for q in (50, 95):
        a, b = percentile(over_realtime, q), percentile(over_voice, q)
        out[f"p{q}"] = {
            "realtime": a,
            "voice": b,
            "difference": None if a is None or b is None else round(a - b, 1),
        }
    print(f"\n{'speech_stopped -> first audio ms':34} {'realtime':>9} {'voice':>9} {'diff':>7}")
    for q in (50, 95):
        row = out[f"p{q}"]
        print(f"{'p' + str(q):34} {row['realtime']!s:>9} {row['voice']!s:>9} {row['difference']!s:>7}")
    out["paired"] = paired = paired_difference(rows, turns)
    if paired:
        print(
            f"same turn, realtime - voice (n={paired['n']}): mean {paired['mean']} ms "
            f"(95% interval {paired['interval'][0]} .. {paired['interval'][1]}), median {paired['median']}, "
            f"spread (sd) {paired['sd']}"
        )
    return out


def paired_difference(rows: list[dict[str, Any]], turns: list[Turn]) -> dict[str, Any] | None:
    """The same question's turn over each protocol, realtime minus voice: what the protocol layer adds.

    The two sessions run one after the other, and one turn's time varies by +-150 ms with the machine
    (Whisper's encoder alone), so the percentiles of two separate runs differ by that much by chance; the
    mean of the per-turn differences, with its interval, is the estimate of the protocol's own cost."""
    voice = {(t.run, t.turn): t.stopped_to_audio_ms for t in turns if t.stopped_to_audio_ms is not None}
    diffs = [
        r["stopped_to_audio_ms"] - voice[(r["run"], r["turn"])]
        for r in rows
        if r.get("stopped_to_audio_ms") is not None and (r["run"], r["turn"]) in voice
    ]
    if len(diffs) < 3:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 1.96 * sd / len(diffs) ** 0.5
    return {
        "n": len(diffs),
        "mean": round(mean, 1),
        "median": round(statistics.median(diffs), 1),
        "sd": round(sd, 1),
        "interval": [round(mean - half, 1), round(mean + half, 1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="ws URL of a running gateway (default: start one)")
    parser.add_argument("--turns", type=int, default=30, help="questions per conversation (default 30)")
    parser.add_argument("--runs", type=int, default=1, help="conversations, one session each (default 1)")
    parser.add_argument("--voice", choices=VOICES, default="piper", help="who speaks the questions")
    parser.add_argument(
        "--gap", type=float, default=1.0, help="seconds after an answer has played (default 1)"
    )
    parser.add_argument("--answer-timeout", type=float, default=60.0, help="seconds for one answer to end")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE, help="one question a line")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/conversation-<time>.json)")
    parser.add_argument("--protocol", choices=("voice", "realtime"), default="voice",
                        help="realtime: the same turns over /v1/realtime first, compared with /v1/voice")  # fmt: skip
    parser.add_argument("--realtime-vad", choices=("server_vad", "semantic_vad"),
                        help="the Realtime session's turn_detection (default: the server's own, as /v1/voice)")  # fmt: skip
    args = parser.parse_args()
    questions = load_questions(args.questions)
    needed = questions[: args.turns]
    print(f"synthesizing {len(needed)} questions with {args.voice}...", flush=True)
    audio = synthesize(needed, 16000, args.voice)
    started = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    with gateway(args.url) as url:
        if args.protocol == "realtime":
            audio24k = synthesize(needed, realtime.RATE, args.voice)
            rows = asyncio.run(bench_realtime(url, args, questions, audio24k))
        conversations = asyncio.run(
            bench(url, args.runs, args.turns, questions, audio, args.gap, args.answer_timeout)
        )
    turns = [t for conversation in conversations for t in conversation]
    summary = summarize(turns)
    report = {
        "benchmark": "real-time spoken conversations over /v1/voice",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "options": {"turns": args.turns, "runs": args.runs, "voice": args.voice, "gap_s": args.gap},
        "summary": summary,
        "runs": [summarize(conversation) for conversation in conversations],
        "turns": [asdict(t) for t in turns],
    }
    if args.protocol == "realtime":
        report["realtime_turns"] = rows
        report["options"]["realtime_vad"] = args.realtime_vad
    out = args.out or ROOT / "bench" / "results" / f"conversation-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_summary(summary)
    if args.protocol == "realtime":
        report["realtime_vs_voice"] = compare(rows, turns)
        out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
