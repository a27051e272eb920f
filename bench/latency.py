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
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.client import VoiceClient  # noqa: E402
from pipeline.audio import resample  # noqa: E402

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
FRAME_MS = 20
SPEECH_DBFS = -45.0  # a 20 ms frame above this has speech energy


def dbfs(frame: bytes) -> float:
    x = np.frombuffer(frame, "<i2").astype(np.float32) / 32768
    return float(10 * np.log10(np.mean(x**2) + 1e-12)) if len(x) else -120.0


def last_speech_frame(pcm: bytes, rate: int) -> int:
    """Index of the last 20 ms frame of ``pcm`` with speech energy (Piper pads its output with silence)."""
    step = rate * 2 * FRAME_MS // 1000
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    voiced = [i for i, f in enumerate(frames) if dbfs(f) > SPEECH_DBFS]
    return voiced[-1] if voiced else len(frames) - 1


class Microphone:
    """Sends 20 ms every 20 ms, forever: queued speech, else silence. Records when each utterance ended."""

    def __init__(self, client: VoiceClient) -> None:
        self.client = client
        self.step = client.sample_rate * 2 * FRAME_MS // 1000
        self._queue: asyncio.Queue[tuple[bytes, int, asyncio.Future[tuple[float, float]]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def say(self, pcm: bytes) -> tuple[float, float]:
        """Speak ``pcm``; returns (time its first frame was sent, time its last speech frame was sent)."""
        done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        await self._queue.put((pcm, last_speech_frame(pcm, self.client.sample_rate), done))
        return await done

    async def _run(self) -> None:
        silence = bytes(self.step)
        start = time.monotonic()
        n = 0
        current: list[bytes] = []
        marks: tuple[int, asyncio.Future[tuple[float, float]]] | None = None
        first_sent = 0.0
        while True:
            if not current and not self._queue.empty():
                pcm, last, done = self._queue.get_nowait()
                current = [pcm[i : i + self.step] for i in range(0, len(pcm), self.step)]
                marks = (last, done)
                index = 0
            delay = start + n * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            n += 1
            if current:
                frame = current.pop(0)
                await self.client.send_raw(frame.ljust(self.step, b"\x00"))
                now = time.monotonic()
                assert marks is not None
                if index == 0:
                    first_sent = now
                if index == marks[0]:
                    marks[1].set_result((first_sent, now))
                index += 1
            else:
                await self.client.send_raw(silence)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


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


async def first_voiced_audio_after(client: VoiceClient, t0: float, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        audio = client.received.audio
        for t, frame in audio[seen:]:
            if t > t0 and dbfs(frame) > SPEECH_DBFS:
                return t
        seen = len(audio)
        await asyncio.sleep(0.005)
    return None


async def run_turn(
    client: VoiceClient, mic: Microphone, pcm: bytes, question: str, barge_in: bool, interruption: bytes
) -> Turn:
    turn = Turn(question)
    responses_before = len(client.received.of("response.started"))
    metrics_before = len(client.received.of("metrics"))
    _, t_last = await mic.say(pcm)
    try:
        started = await client.wait_for("response.started", timeout=20, count=responses_before + 1)
    except (TimeoutError, ConnectionError):
        turn.error = "no answer within 20 s"
        return turn
    # Only this answer's audio counts: it follows its response.started on the socket.
    t_started = next(t for t, e in client.received.events if e is started)
    voiced = await first_voiced_audio_after(client, max(t_last, t_started - 0.001), timeout=20)
    if voiced is None:
        turn.error = "no agent audio within 20 s"
        return turn
    turn.voice_to_voice_ms = round((voiced - t_last) * 1000, 1)
    try:
        finals = client.received.of("transcript.final")
        turn.transcript = finals[-1]["text"] if finals else ""
        metrics = await client.wait_for("metrics", timeout=5, count=metrics_before + 1)
        turn.server = {
            k: metrics.get(k) for k in ("stt_ms", "llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms")
        }
        if barge_in:
            await asyncio.sleep(0.5)
            interrupted_before = len(client.received.of("response.interrupted"))
            speak = asyncio.create_task(mic.say(interruption))
            await asyncio.sleep(0)
            t_speak = time.monotonic()
            finals_before = len(client.received.of("transcript.final"))
            interrupted = asyncio.create_task(
                client.wait_for("response.interrupted", timeout=10, count=interrupted_before + 1)
            )
            final = asyncio.create_task(
                client.wait_for("transcript.final", timeout=10, count=finals_before + 1)
            )
            await asyncio.wait({interrupted, final}, return_when=asyncio.FIRST_COMPLETED)
            if not interrupted.done():
                # The answer ended while the caller drew breath: the interruption became a plain turn.
                interrupted.cancel()
                turn.barge_in_skipped = "the answer ended before the interruption reached min_interrupt_ms"
                await speak
                await client.wait_for("response.started", timeout=30, count=responses_before + 2)
                await asyncio.sleep(1.0)
                await _stop_answer(client)
                return turn
            final.cancel()
            event = interrupted.result()
            t_event = next(t for t, e in client.received.events if e is event)
            turn.barge_in_ms = round((t_event - t_speak) * 1000, 1)
            before_event = [t for t, _ in client.received.audio if t <= t_event]
            turn.audio_stop_ms = round((max(before_event) - t_speak) * 1000, 1) if before_event else None
            await speak
            # The interruption is itself a question: let its answer start, then stop it.
            await client.wait_for("response.started", timeout=30, count=responses_before + 2)
            await asyncio.sleep(1.0)
            await _stop_answer(client)
        else:
            done = await client.wait_for("response.text.done", timeout=30, count=_count_for(client, started))
            turn.answer = done["text"]
            # One second of the answer is enough to measure; stopping it keeps 50 turns to a few minutes.
            await asyncio.sleep(1.0)
            await _stop_answer(client)
    except (TimeoutError, ConnectionError) as exc:
        recent = [e["type"] for _, e in client.received.events[-40:] if e["type"] != "response.text.delta"][
            -8:
        ]
        turn.error = f"{type(exc).__name__} {exc} after {recent}"
    return turn


def _count_for(client: VoiceClient, started: dict[str, object]) -> int:
    """Which response.text.done belongs to ``started`` (the n-th response has the n-th done)."""
    return client.received.of("response.started").index(started) + 1


async def _stop_answer(client: VoiceClient) -> None:
    ended = ("response.interrupted", "response.audio.done")
    before = sum(len(client.received.of(kind)) for kind in ended)
    await client.send_event({"type": "response.cancel"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum(len(client.received.of(kind)) for kind in ended) == before:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)


def synthesize(texts: list[str], rate: int) -> dict[str, bytes]:
    from engines.tts_piper import PiperTTS

    tts = PiperTTS()
    out = {}
    for text in texts:
        pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
        out[text] = resample(pcm, tts.sample_rate, rate)
    return out


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


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


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "VOXGATE_PORT": str(port), "VOXGATE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not become ready")


@contextlib.contextmanager
def gateway(url: str | None) -> Iterator[str]:
    """The voice URL of the gateway under test: ``url`` if given, else a ``voxgate serve`` started (and
    stopped) here on a free port."""
    if url is not None:
        yield url
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(port)
    try:
        yield f"ws://127.0.0.1:{port}/v1/voice"
    finally:
        proc.terminate()
        proc.wait(15)


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
