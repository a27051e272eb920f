"""What the client-side benchmarks share: a caller's open microphone, its questions' audio, the gateway under
test, and matching the server's events to one spoken turn by id.

``bench/latency.py`` re-exports the names it always had (``Microphone``, ``synthesize``, ``last_speech_frame``,
``percentile``, ``gateway``, ``dbfs``, ``first_voiced_audio_after``); ``bench/conversation.py`` uses them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.client import VoiceClient  # noqa: E402
from pipeline.audio import resample  # noqa: E402

FRAME_MS = 20
SPEECH_DBFS = -45.0  # a 20 ms frame above this has speech energy
VOICES = ("piper", "espeak")  # what speaks the caller's questions


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


async def voiced_audio_or_end(
    client: VoiceClient, t0: float, response_id: str, mark: int, timeout: float
) -> tuple[float | None, dict[str, Any] | None]:
    """(arrival of the first agent frame after ``t0`` with speech energy, None), or (None, the event that
    ended response ``response_id`` first: ``response.audio.done`` / ``response.interrupted``, looked for from
    event index ``mark``): an answer with no sound (an empty answer) ends without voiced audio, and waiting
    out ``timeout`` for it would only stall the caller. (None, None) after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = 0
    scanned = mark
    while True:
        # Events first: a frame that arrived before the end event is still found by the scan below.
        events = client.received.events
        end = next(
            (
                e
                for _, e in events[scanned:]
                if e["type"] in ("response.audio.done", "response.interrupted")
                and e.get("response_id") == response_id
            ),
            None,
        )
        scanned = len(events) if end is None else scanned
        audio = client.received.audio
        for t, frame in audio[seen:]:
            if t > t0 and dbfs(frame) > SPEECH_DBFS:
                return t, None
        seen = len(audio)
        if end is not None:
            return None, end
        if time.monotonic() >= deadline or client.close_code is not None:
            return None, None
        await asyncio.sleep(0.005)


def synthesize(texts: list[str], rate: int, voice: str = "piper") -> dict[str, bytes]:
    """Each text spoken by the shipped Piper voice (``voice="piper"``) or by espeak-ng (``"espeak"``), as
    PCM16 at ``rate``."""
    if voice == "piper":
        from engines.tts_piper import PiperTTS

        tts: Any = PiperTTS()
    elif voice == "espeak":
        from engines.tts_espeak import EspeakTTS

        tts = EspeakTTS()
    else:
        raise ValueError(f"unknown voice {voice!r}; one of {VOICES}")
    out = {}
    for text in texts:
        pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
        out[text] = resample(pcm, tts.sample_rate, rate)
    return out


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


# -- the server's events for one turn, by id ---------------------------------------------------------------


async def next_event(
    client: VoiceClient, type_: str | tuple[str, ...], after: int = 0, timeout: float = 30.0, **match: Any
) -> tuple[float, dict[str, Any]]:
    """(arrival time, event) of the first event of type ``type_`` (or of any of several types) from index
    ``after`` of ``client.received.events`` whose fields equal ``match`` (``response_id=...``,
    ``turn_id=...``); TimeoutError or ConnectionError."""
    types = (type_,) if isinstance(type_, str) else type_
    deadline = time.monotonic() + timeout
    scanned = after
    while True:
        events = client.received.events
        for t, event in events[scanned:]:
            if event["type"] in types and all(event.get(k) == v for k, v in match.items()):
                return t, event
        scanned = max(scanned, len(events))
        if client.close_code is not None:
            raise ConnectionError(f"socket closed ({client.close_code}) before {type_} {match or ''}")
        if time.monotonic() >= deadline:
            seen = [e["type"] for _, e in events[after:] if not e["type"].endswith(".delta")][-12:]
            raise TimeoutError(f"no {type_} {match or ''} within {timeout} s; since the turn: {seen}")
        await asyncio.sleep(0.005)


async def answer_to_speech(
    client: VoiceClient, mark: int, t_last: float, timeout: float = 20.0, settle: float = 3.0
) -> tuple[float, dict[str, Any]]:
    """The ``response.started`` (with its arrival time) that answers the speech whose last voiced frame was
    sent at ``t_last``; ``mark`` is ``len(client.received.events)`` from before the speech began.

    The answer is the response to the *last* voice turn of the utterance: if the server split the question
    into turns, earlier halves get (or start) answers of their own, before ``t_last``. The first answer to
    start after ``t_last`` is taken; failing that, after ``settle`` seconds with no newer one, the latest.
    Resumed answers (``resumed_from``) continue an earlier response and are never this turn's answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        started = [
            (t, e)
            for t, e in client.received.events[mark:]
            if e["type"] == "response.started" and "resumed_from" not in e
        ]
        after = [(t, e) for t, e in started if t >= t_last]
        if after:
            return after[0]
        now = time.monotonic()
        if started and now >= t_last + settle:
            return started[-1]
        if client.close_code is not None:
            raise ConnectionError(f"socket closed ({client.close_code}) before the answer started")
        if now >= deadline:
            seen = [e["type"] for _, e in client.received.events[mark:] if not e["type"].endswith(".delta")]
            raise TimeoutError(f"no answer started within {timeout} s; since the turn: {seen[-12:]}")
        await asyncio.sleep(0.005)


# -- the gateway under test --------------------------------------------------------------------------------


def start_server(
    port: int, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.Popen[bytes]:
    """``voxgate serve`` on ``port`` (``env``: more VOXGATE_* settings), once it answers /health/ready."""
    # A bench stops its server when it is done with it: no drain to wait out (VOXGATE_DRAIN_TIMEOUT_S).
    env = {
        **os.environ,
        "VOXGATE_PORT": str(port),
        "VOXGATE_LOG_LEVEL": "warning",
        "VOXGATE_DRAIN_TIMEOUT_S": "0",
        **(env or {}),
    }
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT)
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"voxgate serve exited with {proc.returncode} before it was ready")
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
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RecordingSocket:
    """A WebSocket client for the benches that records what arrives (``received``: events and audio, with
    their arrival times) from a background reader; each protocol's subclass says how to read a message."""

    def __init__(self, url: str, sample_rate: int) -> None:
        from gateway.client import Received

        self.url = url
        self.sample_rate = sample_rate
        self.received = Received()
        self.close_code: int | None = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        import websockets

        self._ws = await websockets.connect(self.url, max_size=None, open_timeout=30, ping_interval=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _read(self) -> None:
        raise NotImplementedError
