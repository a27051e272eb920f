"""What a session owes its caller, waiting to be written to the socket by the transport's writer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class OutAudio:
    """A wire-ready agent audio frame (already in the session's rate and encoding)."""

    payload: bytes
    response_id: str
    ms: float
    generation: int = 0


class Outbox:
    """Bounded queue of events and audio; the transport drains it, a barge-in purges its audio.

    Audio that is still here has not left: purging it is how "no agent audio frame leaves after the
    interrupt decision" holds even when the socket is slow.
    """

    def __init__(self, max_events: int = 512, max_audio: int = 64) -> None:
        self._items: deque[dict[str, Any] | OutAudio] = deque()
        self._events = 0
        self._audio = 0
        self.max_events = max_events
        self.max_audio = max_audio
        # Two events rather than a Condition: a frame goes in and out without taking a lock, and a writer
        # that finds items waiting never suspends (50 frames a second per call add up at hundreds of calls).
        self._readable = asyncio.Event()  # items waiting, or closed
        self._room = asyncio.Event()  # something left or was purged: blocked producers look again
        self.closed = False
        self.generation = 0  # bumped by every purge; frames made before it are stale

    @property
    def depth(self) -> int:
        return len(self._items)

    async def _wait_for_room(self, full: Callable[[], bool]) -> None:
        while full() and not self.closed:
            self._room.clear()
            await self._room.wait()

    async def put_event(self, event: dict[str, Any]) -> None:
        await self._wait_for_room(lambda: self._events >= self.max_events)
        if self.closed:
            return
        self._items.append(event)
        self._events += 1
        self._readable.set()

    async def put_audio(self, frame: OutAudio) -> None:
        await self._wait_for_room(lambda: self._audio >= self.max_audio)
        if self.closed or frame.generation != self.generation:
            return
        self._items.append(frame)
        self._audio += 1
        self._readable.set()

    def purge_audio(self) -> int:
        """Drop every queued audio frame; returns how many. Synchronous, so nothing can slip out meanwhile."""
        kept = deque(item for item in self._items if not isinstance(item, OutAudio))
        dropped = len(self._items) - len(kept)
        self._items = kept
        self._audio = 0
        self.generation += 1
        self._room.set()
        return dropped

    async def get(self) -> dict[str, Any] | OutAudio | None:
        """The next thing to write; None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if isinstance(item, OutAudio):
            self._audio -= 1
        else:
            self._events -= 1
        self._room.set()
        return item

    async def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._room.set()
