"""A small Python client for ``/v1/voice``: streams audio at real-time pace and records what comes back.

Used by the tests, the benchmarks and as the README's example. Times are ``time.monotonic()`` on the client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets


@dataclass
class Received:
    """Everything the server sent, in order, with arrival times."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio: list[tuple[float, bytes]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # "audio" or an event type, in arrival order

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == type_]

    def first_time(self, type_: str) -> float | None:
        return next((t for t, e in self.events if e["type"] == type_), None)

    def audio_bytes(self, after: float = 0.0, before: float = float("inf")) -> bytes:
        return b"".join(chunk for t, chunk in self.audio if after <= t < before)


class VoiceClient:
    """Connect with ``async with VoiceClient(url) as c:``; ``c.received`` fills in as messages arrive."""

    def __init__(
        self,
        url: str,
        sample_rate: int = 16000,
        encoding: str = "pcm_s16le",
        ack_played: bool = False,
        read: bool = True,
        max_queue: int = 16,
        receive_buffer: int | None = None,
    ) -> None:
        sep = "&" if "?" in url else "?"
        self.url = f"{url}{sep}sample_rate={sample_rate}&encoding={encoding}"
        self.sample_rate = sample_rate
        self.sample_width = 1 if encoding == "mulaw" else 2
        self.ack_played = ack_played
        self.received = Received()
        self._reading = asyncio.Event()
        if read:
            self._reading.set()
        self._max_queue = max_queue
        self._receive_buffer = receive_buffer
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._played: dict[str, float] = {}
        self.close_code: int | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> VoiceClient:
        sock = None
        if self._receive_buffer:
            # A small kernel buffer makes a non-reading client push back on the server quickly.
            from urllib.parse import urlsplit

            parts = urlsplit(self.url)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            sock.connect((parts.hostname, parts.port or 80))
        self._ws = await websockets.connect(
            self.url,
            max_size=None,
            open_timeout=30,
            max_queue=self._max_queue,
            sock=sock,
            ping_interval=None,  # the server pings; a paused test client must not time itself out
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, Exception):
                self._reader.cancel()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def _read(self) -> None:
        try:
            while True:
                await self._reading.wait()
                message = await self._ws.recv()
                now = time.monotonic()
                if isinstance(message, bytes):
                    self.received.audio.append((now, message))
                    self.received.order.append("audio")
                    if self.ack_played:
                        await self._ack(message)
                else:
                    event = json.loads(message)
                    self.received.events.append((now, event))
                    self.received.order.append(event["type"])
                    if event["type"] == "response.started":
                        self._current = event["response_id"]
                async with self._changed:
                    self._changed.notify_all()
        except websockets.ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
            async with self._changed:
                self._changed.notify_all()

    async def _ack(self, chunk: bytes) -> None:
        # A real player would ack as audio plays; acking on arrival is the upper bound of what was heard.
        rid = getattr(self, "_current", None)
        if rid is None:
            return
        ms = self._played.get(rid, 0.0) + len(chunk) / 2 / self.sample_rate * 1000
        self._played[rid] = ms
        await self.send_event({"type": "output_audio.played", "response_id": rid, "ms": ms})

    async def send_event(self, event: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(event))

    async def send_raw(self, data: bytes | str) -> None:
        await self._ws.send(data)

    async def stream(self, pcm: bytes, realtime: bool = True, chunk_ms: int = 20) -> float:
        """Send audio in the session's format in ``chunk_ms`` pieces; returns when the last one was sent."""
        step = self.sample_rate * self.sample_width * chunk_ms // 1000
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), step)):
            if realtime:
                delay = start + i * chunk_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._ws.send(pcm[offset : offset + step])
        return time.monotonic()

    async def silence(self, seconds: float, realtime: bool = True) -> float:
        zero = b"\xff" if self.sample_width == 1 else b"\x00\x00"  # mu-law silence is 0xFF
        return await self.stream(zero * int(self.sample_rate * seconds), realtime)

    async def wait_for(self, type_: str, timeout: float = 30.0, count: int = 1) -> dict[str, Any]:
        """The ``count``-th event of a type (waiting for it); raises TimeoutError."""
        return await self._wait(
            type_, lambda events: events[count - 1] if len(events) >= count else None, timeout, f"#{count}"
        )

    async def wait_for_response(self, type_: str, response_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The event of a type for one response (``response.text.done`` of a given answer, ...)."""
        return await self._wait(
            type_,
            lambda events: next((e for e in events if e.get("response_id") == response_id), None),
            timeout,
            f"for {response_id}",
        )

    async def _wait(
        self,
        type_: str,
        pick: Callable[[list[dict[str, Any]]], dict[str, Any] | None],
        timeout: float,
        what: str,
    ) -> dict[str, Any]:
        def found() -> bool:
            return pick(self.received.of(type_)) is not None or self.close_code is not None

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(found), timeout)
        except TimeoutError:
            # Say what did arrive: a timeout alone tells nothing about why the awaited event never came.
            seen = [e for _, e in self.received.events if not e["type"].endswith(".delta")][-30:]
            raise TimeoutError(f"no {type_} {what} within {timeout} s; last events: {seen}") from None
        event = pick(self.received.of(type_))
        if event is None:
            raise ConnectionError(f"socket closed ({self.close_code}) before {type_} {what}")
        return event


def pcm_from_float(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
