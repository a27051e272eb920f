"""The official ``openai`` SDK as a Realtime client of a live voxgate server (helpers for the test_realtime*
modules; no tests of its own)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from pipeline.audio import resample
from tests.speech import piper_pcm

REALTIME_RATE = 24000


@contextlib.asynccontextmanager
async def realtime(server: Any, api_key: str = "unused", model: str = "voxgate") -> AsyncIterator[Recorder]:
    """An SDK connection to ``server``'s ``/v1/realtime``, its events recorded as they arrive."""
    client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key=api_key)
    async with client.realtime.connect(model=model) as connection:
        recorder = Recorder(connection)
        try:
            yield recorder
        finally:
            recorder.stop()


class Recorder:
    """Reads every server event in the background; tests wait for the ones they need."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.events: list[Any] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.connection:
            self.events.append(event)
            self._arrived.set()

    def stop(self) -> None:
        self._reader.cancel()

    def of(self, type_: str) -> list[Any]:
        return [e for e in self.events if e.type == type_]

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def wait_for(self, type_: str, timeout: float = 60.0, count: int = 1, after: int = 0) -> Any:
        """The ``count``-th event of ``type_`` among those from index ``after`` on."""

        async def seen() -> Any:
            while True:
                matches = [e for e in self.events[after:] if e.type == type_]
                if len(matches) >= count:
                    return matches[count - 1]
                if self._reader.done():
                    raise AssertionError(f"connection ended before {type_}; got {self.types()}")
                self._arrived.clear()
                await self._arrived.wait()

        try:
            return await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {type_} within {timeout} s; got {self.types()[-30:]}") from None

    async def send(self, event: dict[str, Any]) -> None:
        await self.connection.send(event)

    async def send_raw(self, text: str) -> None:
        await self.connection.send_raw(text)

    def audio(self, response_id: str) -> bytes:
        """The response's audio, as the deltas carried it."""
        deltas = [e.delta for e in self.of("response.output_audio.delta") if e.response_id == response_id]
        return b"".join(base64.b64decode(d) for d in deltas)


def at_level(pcm: bytes, dbfs: float = -26.0) -> bytes:
    """``pcm`` scaled to an RMS of ``dbfs``, as a microphone's gain stage puts speech (Piper's voice peaks at
    full scale: resampled on the way in, it clipped, and Whisper tiny heard "the sky" as "this guy")."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    rms = float(np.sqrt(np.mean(x**2))) or 1.0
    return np.clip(x * (32768 * 10 ** (dbfs / 20) / rms), -32768, 32767).astype("<i2").tobytes()


def speech24k(text: str) -> bytes:
    """``text`` spoken by Piper at a microphone's level, as 24 kHz PCM16 (the Realtime API's ``audio/pcm``)."""
    return at_level(piper_pcm(text, REALTIME_RATE))


async def stream(client: Recorder, pcm: bytes, rate: int = REALTIME_RATE, chunk_ms: int = 100,
                 realtime: bool = True, sample_bytes: int = 2) -> None:  # fmt: skip
    """``input_audio_buffer.append`` in ``chunk_ms`` pieces, at real-time pace unless told otherwise."""
    step = rate * chunk_ms // 1000 * sample_bytes
    for offset in range(0, len(pcm), step):
        audio = base64.b64encode(pcm[offset : offset + step]).decode()
        await client.send({"type": "input_audio_buffer.append", "audio": audio})
        if realtime:
            await asyncio.sleep(chunk_ms / 1000)


def silence(seconds: float, rate: int = REALTIME_RATE) -> bytes:
    return bytes(int(seconds * rate) * 2)


def to16k(pcm: bytes, rate: int = REALTIME_RATE) -> bytes:
    return resample(pcm, rate, 16000)
