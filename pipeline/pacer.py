"""The single place that decides when agent audio leaves: real time, bounded lead, flush on interrupt."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.aio import cancel_and_wait
from pipeline.outbox import OutAudio, Outbox

log = logging.getLogger("voxgate.pacer")


@dataclass
class _Pending:
    payload: bytes
    response_id: str
    ms: float


class OutputPacer:
    """Releases wire-ready frames into the outbox no more than ``lead_ms`` ahead of the caller's playback.

    It assumes the caller plays audio in real time from the moment it arrives; after an underrun (nothing
    to send) playback restarts at the next frame. Released and estimated-played milliseconds are kept per
    response so a barge-in can tell what the caller heard.

    A transport whose far end says what it played (:meth:`follow_playback`, then :meth:`played`) also holds
    releases back while more than ``max_unplayed_ms`` of released audio is unconfirmed: a far end that
    plays slower than real time is not flooded. Transports never pace on their own.
    """

    def __init__(
        self,
        outbox: Outbox,
        lead_ms: int = 200,
        on_release: Callable[[str, float, bytes], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.lead_ms = lead_ms
        self._on_release = on_release
        self._clock = clock
        self._frames: deque[_Pending] = deque()
        self._buffered_ms = 0.0
        self._play_end = 0.0  # clock time at which the audio released so far finishes playing
        self._has_frames = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.released_ms: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._max_unplayed_ms: float | None = None  # None: nobody reports playback
        self._stall_s = 1.0
        self._unplayed_ms = 0.0  # released and not yet reported played
        self._played = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="output-pacer")

    @property
    def buffered_ms(self) -> float:
        return self._buffered_ms

    def ahead_ms(self) -> float:
        """Audio owed to the caller that has not played yet: queued here plus released but unplayed."""
        return self._buffered_ms + max(0.0, (self._play_end - self._clock()) * 1000)

    def follow_playback(self, max_unplayed_ms: float, stall_s: float) -> None:
        """The transport will report what its far end played (:meth:`played`). Releases wait while more
        than ``max_unplayed_ms`` is unconfirmed; after ``stall_s`` without a report one frame goes anyway,
        so a far end that stops reporting slows the call down but cannot stall it."""
        self._max_unplayed_ms = max_unplayed_ms
        self._stall_s = stall_s

    def played(self, ms: float) -> None:
        """The far end has played ``ms`` more of the released audio."""
        self._unplayed_ms = max(0.0, self._unplayed_ms - ms)
        self._played.set()

    def enqueue(self, response_id: str, frames: list[bytes], frame_ms: float) -> None:
        for payload in frames:
            self._frames.append(_Pending(payload, response_id, frame_ms))
        self._buffered_ms += frame_ms * len(frames)
        self._update_room()
        if self._frames:
            self._has_frames.set()

    async def wait_for_room(self) -> None:
        """Wait while the caller's buffer is more than ``lead_ms`` ahead (how TTS is held back)."""
        while self.ahead_ms() > self.lead_ms:
            self._room.clear()
            delay = (self.ahead_ms() - self.lead_ms) / 1000
            try:
                await asyncio.wait_for(self._room.wait(), timeout=max(delay, 0.005))
            except TimeoutError:
                pass

    def flush(self) -> int:
        """Drop everything not yet released, purge what waits in the outbox and tell the transport to drop what
        it buffered (:class:`~pipeline.outbox.Flush`). Returns frames dropped."""
        dropped = len(self._frames) + self.outbox.flush()
        # Clients drop buffered agent audio on an interruption, so what was released but not yet played
        # never will be: count only what played, then restart the playback clock.
        for response_id in self.released_ms:
            self.released_ms[response_id] = self.played_estimate_ms(response_id)
        self._frames.clear()
        self._buffered_ms = 0.0
        self._play_end = 0.0
        self._unplayed_ms = 0.0  # the far end drops what it buffered (Flush)
        self._played.set()  # a release held for playback must not wait out the stall for the next answer
        self._has_frames.clear()
        self._update_room()
        return dropped

    def played_estimate_ms(self, response_id: str) -> float:
        """What the caller has heard of a response, assuming real-time playback from arrival."""
        unplayed = max(0.0, (self._play_end - self._clock()) * 1000)
        return max(0.0, self.released_ms.get(response_id, 0.0) - unplayed)

    def _update_room(self) -> None:
        if self.ahead_ms() <= self.lead_ms:
            self._room.set()

    def _playback_behind(self) -> bool:
        return self._max_unplayed_ms is not None and self._unplayed_ms > self._max_unplayed_ms

    async def _wait_for_playback(self) -> bool:
        """Wait for the far end to report playback; False after ``stall_s`` without a report."""
        self._played.clear()
        try:
            await asyncio.wait_for(self._played.wait(), self._stall_s)
        except TimeoutError:
            log.warning("no playback reported for %.1f s; releasing a frame anyway", self._stall_s)
            return False
        return True

    async def _run(self) -> None:
        stalled = False  # the last wait for playback timed out: the next frame goes regardless
        while True:
            await self._has_frames.wait()
            if not self._frames:
                self._has_frames.clear()
                continue
            now = self._clock()
            if self._play_end < now:
                self._play_end = now
            ahead = (self._play_end - now) * 1000
            if ahead > self.lead_ms:
                await asyncio.sleep((ahead - self.lead_ms) / 1000)
                continue
            if not stalled and self._playback_behind():
                stalled = not await self._wait_for_playback()
                continue
            stalled = False
            frame = self._frames.popleft()
            self._unplayed_ms += frame.ms
            self._buffered_ms = max(0.0, self._buffered_ms - frame.ms)
            self._play_end += frame.ms / 1000
            self.released_ms[frame.response_id] = self.released_ms.get(frame.response_id, 0.0) + frame.ms
            generation = self.outbox.generation
            if self._on_release is not None:
                self._on_release(frame.response_id, frame.ms, frame.payload)
            await self.outbox.put_audio(OutAudio(frame.payload, frame.response_id, frame.ms, generation))
            self._update_room()

    async def close(self) -> None:
        await cancel_and_wait(self._task)
