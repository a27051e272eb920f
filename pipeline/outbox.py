"""What a session owes its caller, waiting to be written to the socket by the transport's writer.

Three kinds of item come out: :class:`OutAudio` (a wire-ready agent frame), a
:class:`~pipeline.events.ServerEvent`, and :class:`Flush` (a barge-in: drop any agent audio buffered
past this point).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.events import ServerEvent


@dataclass
class OutAudio:
    """A wire-ready agent audio frame (already in the session's rate and encoding)."""

    payload: bytes
    response_id: str
    ms: float
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Flush:
    """The agent was cut off: whatever agent audio the transport or the far end still buffers must go.

    The outbox has already dropped its own audio; this tells the transport to drop its own (a track's
    buffer, a provider's ``clear``).
    """


FLUSH = Flush()

OutboxItem = OutAudio | ServerEvent | Flush


class Outbox:
    """Bounded queue of events and audio; the transport drains it, a barge-in purges its audio.

    Audio that is still here has not left: purging it is how "no agent audio frame leaves after the
    interrupt decision" holds even when the socket is slow. A :meth:`flush` also hands the writer a
    :class:`Flush` ahead of everything queued, so the transport drops what it buffered further on.
    """

    def __init__(self, max_events: int = 512, max_audio: int = 64, max_bytes: int = 4 << 20) -> None:
        self._items: deque[ServerEvent | OutAudio] = deque()
        self._sizes: deque[int] = deque()  # each item's wire size, in step with _items
        self._events = 0
        self._audio = 0
        self.bytes = 0
        self.max_events = max_events
        self.max_audio = max_audio
        # Counting events alone let one client pin ~200 MB with a few hundred large events it never read.
        self.max_bytes = max_bytes
        # Two events rather than a Condition: a frame goes in and out without taking a lock, and a writer
        # that finds items waiting never suspends (50 frames a second per call add up at hundreds of calls).
        self._readable = asyncio.Event()  # items waiting, or closed
        self._room = asyncio.Event()  # something left or was purged: blocked producers look again
        self.closed = False
        self.generation = 0  # bumped by every purge; frames made before it are stale
        # A signal rather than a queued item: it jumps the queue (the far end should stop playing at once),
        # takes no room, and two flushes before the writer looks are one.
        self._flush_pending = False

    @property
    def depth(self) -> int:
        return len(self._items)

    async def _wait_for_room(self, full: Callable[[], bool]) -> None:
        while full() and not self.closed:
            self._room.clear()
            await self._room.wait()

    def _over_bytes(self, size: int) -> bool:
        # An item larger than the whole budget still goes out once the queue is empty.
        return bool(self._items) and self.bytes + size > self.max_bytes

    def _append(self, item: ServerEvent | OutAudio, size: int) -> None:
        self._items.append(item)
        self._sizes.append(size)
        self.bytes += size
        self._readable.set()

    async def put_event(self, event: ServerEvent) -> None:
        size = len(json.dumps(event.to_wire(), default=str))
        await self._wait_for_room(lambda: self._events >= self.max_events or self._over_bytes(size))
        if self.closed:
            return
        self._events += 1
        self._append(event, size)

    async def put_audio(self, frame: OutAudio) -> None:
        size = len(frame.payload)
        await self._wait_for_room(lambda: self._audio >= self.max_audio or self._over_bytes(size))
        if self.closed or frame.generation != self.generation:
            return
        self._audio += 1
        self._append(frame, size)

    def purge_audio(self) -> int:
        """Drop every queued audio frame; returns how many. Synchronous, so nothing can slip out meanwhile."""
        kept = [(i, n) for i, n in zip(self._items, self._sizes, strict=True) if not isinstance(i, OutAudio)]
        dropped = len(self._items) - len(kept)
        self._items = deque(item for item, _ in kept)
        self._sizes = deque(size for _, size in kept)
        self.bytes = sum(self._sizes)
        self._audio = 0
        self.generation += 1
        self._room.set()
        return dropped

    def flush(self) -> int:
        """A barge-in: :meth:`purge_audio`, and tell the writer with a :class:`Flush` before anything else."""
        dropped = self.purge_audio()
        if not self.closed:
            self._flush_pending = True
            self._readable.set()
        return dropped

    async def get(self) -> OutboxItem | None:
        """The next thing to write; None once closed and drained."""
        while not self._items:
            if self._flush_pending:
                break
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        if self._flush_pending:
            self._flush_pending = False
            return FLUSH
        item = self._items.popleft()
        self.bytes -= self._sizes.popleft()
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

    def discard(self) -> None:
        """Forget whatever the client never read: an ended session keeps no buffers."""
        self.closed = True
        self._flush_pending = False
        self._items.clear()
        self._sizes.clear()
        self.bytes = self._events = self._audio = 0
        self._readable.set()
        self._room.set()
