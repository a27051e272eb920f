"""Processors: small async classes with one job, linked by bounded queues into a chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from pipeline.frames import Frame

_DONE = object()


class Processor:
    """Turns each incoming frame into zero or more outgoing frames. Override ``process``."""

    name = "processor"

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        yield frame


class Chain:
    """Runs ``source -> processors... -> sink``, one task per stage, ``maxsize`` frames between stages.

    Bounded queues mean a slow stage (TTS waiting for the pacer) holds back the stages before it instead
    of letting text or audio pile up. ``cancel`` stops every stage at once: that is how a barge-in drops
    the work behind it.
    """

    def __init__(
        self,
        source: AsyncIterator[Frame],
        processors: Sequence[Processor],
        sink: Callable[[Frame], Awaitable[None]],
        maxsize: int = 4,
    ) -> None:
        self._queues: list[asyncio.Queue[object]] = [asyncio.Queue(maxsize) for _ in processors]
        self._source = source
        self._processors = list(processors)
        self._sink = sink
        self._tasks: list[asyncio.Task[None]] = []

    def depths(self) -> list[int]:
        return [q.qsize() for q in self._queues]

    async def run(self) -> None:
        """Run to completion; the first stage failure cancels the others and is raised."""
        outputs: list[Callable[[object], Awaitable[None]]] = [q.put for q in self._queues]
        outputs.append(self._deliver)
        self._tasks = [asyncio.create_task(self._pump_source(outputs[0]), name="chain-source")]
        for i, processor in enumerate(self._processors):
            self._tasks.append(
                asyncio.create_task(
                    self._pump(processor, self._queues[i], outputs[i + 1]), name=processor.name
                )
            )
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.cancel()

    async def _deliver(self, item: object) -> None:
        if item is not _DONE:
            await self._sink(item)  # type: ignore[arg-type]

    async def _pump_source(self, put: Callable[[object], Awaitable[None]]) -> None:
        async for frame in self._source:
            await put(frame)
        await put(_DONE)

    @staticmethod
    async def _pump(
        processor: Processor, inbox: asyncio.Queue[object], put: Callable[[object], Awaitable[None]]
    ) -> None:
        while True:
            item = await inbox.get()
            if item is _DONE:
                await put(_DONE)
                return
            async for out in processor.process(item):  # type: ignore[arg-type]
                await put(out)

    async def cancel(self) -> None:
        current = asyncio.current_task()
        pending = [t for t in self._tasks if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except (RuntimeError, Exception):
                pass
