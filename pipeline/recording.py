"""Recording a session's audio: what the caller said and what the agent said, as two WAV files."""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.aio import cancel_and_wait
from pipeline.audio import SAMPLE_WIDTH, mulaw_decode, read_wav, resample

log = logging.getLogger("voxgate.recording")


@dataclass
class RecordedFile:
    """One finished (or growing) track: where it is and how long it is."""

    kind: str
    path: Path
    sample_rate: int
    frames: int = 0

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


class _Track:
    def __init__(self, file: RecordedFile) -> None:
        self.file = file
        self.pending = bytearray()
        self.writer: wave.Wave_write | None = None

    @property
    def samples(self) -> int:
        """Samples on the track so far: written plus waiting to be written."""
        return self.file.frames + len(self.pending) // SAMPLE_WIDTH

    def open(self) -> None:
        self.file.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = wave.open(str(self.file.path), "wb")
        self.writer.setnchannels(1)
        self.writer.setsampwidth(SAMPLE_WIDTH)
        self.writer.setframerate(self.file.sample_rate)

    def write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.writeframesraw(data)  # the header is patched once, on close

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class SessionRecording:
    """``caller.wav`` (the 16 kHz audio VAD and STT saw) and ``agent.wav`` (the audio the pacer released,
    at the session's output rate), both on the session's clock: the agent track is padded with silence up
    to the moment each frame left, so the two line up when played side by side.

    ``caller`` and ``agent`` only append to memory; a background task writes about once a second from a
    thread, so disk I/O never runs on the event loop and memory stays at about a second of audio.
    """

    def __init__(
        self,
        directory: Path,
        agent_rate: int,
        agent_encoding: str,
        caller_rate: int = 16000,
        clock: Callable[[], float] = time.monotonic,
        flush_interval_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self._agent_mulaw = agent_encoding == "mulaw"
        self._clock = clock
        self._t0 = clock()
        self._interval = flush_interval_s
        self._caller = _Track(RecordedFile("caller", directory / "caller.wav", caller_rate))
        self._agent = _Track(RecordedFile("agent", directory / "agent.wav", agent_rate))
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def files(self) -> list[RecordedFile]:
        return [self._caller.file, self._agent.file]

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._task = asyncio.create_task(self._flush_loop(), name=f"recording-{self.directory.name}")

    def caller(self, pcm16: bytes) -> None:
        if not self._closed:
            self._caller.pending += pcm16

    def agent(self, wire: bytes) -> None:
        if self._closed:
            return
        pcm = mulaw_decode(wire) if self._agent_mulaw else wire
        track = self._agent
        due = int((self._clock() - self._t0) * track.file.sample_rate)
        gap = due - track.samples
        if gap > 0:  # the agent was silent since its last frame
            track.pending += bytes(gap * SAMPLE_WIDTH)
        track.pending += pcm

    async def close(self) -> list[RecordedFile]:
        """Write what is left, finish the WAV headers, and return the files."""
        if self._closed:
            return self.files
        self._closed = True
        await cancel_and_wait(self._task)
        await self._flush()
        await asyncio.to_thread(self._close_files)
        return self.files

    def _open(self) -> None:
        self._caller.open()
        self._agent.open()

    def _close_files(self) -> None:
        self._caller.close()
        self._agent.close()

    async def _flush(self) -> None:
        chunks = []
        for track in (self._caller, self._agent):
            data, track.pending = bytes(track.pending), bytearray()
            track.file.frames += len(data) // SAMPLE_WIDTH
            chunks.append((track, data))
        await asyncio.to_thread(lambda: [track.write(data) for track, data in chunks if data])

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._flush()
            except OSError:
                log.exception("writing recording %s failed; recording stops", self.directory)
                self._closed = True
                return


def write_stereo_call(caller: RecordedFile, agent: RecordedFile, out: Path, rate: int = 8000) -> float:
    """Caller left, agent right, at ``rate``, padded to the longer track: one file to listen to a call.

    Blocking (reads and writes files): run it in a thread. Returns the duration in seconds.
    """
    channels = []
    for track in (caller, agent):
        pcm, track_rate = read_wav(str(track.path))
        if track_rate != rate:
            pcm = resample(pcm, track_rate, rate)
        channels.append(np.frombuffer(pcm, dtype="<i2"))
    length = max(len(c) for c in channels)
    stereo = np.zeros((length, 2), dtype="<i2")
    for index, samples in enumerate(channels):
        stereo[: len(samples), index] = samples
    with wave.open(str(out), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(rate)
        w.writeframes(stereo.tobytes())
    return length / rate
