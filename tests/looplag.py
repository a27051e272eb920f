"""Measure how long an event loop was held: per tick, how late it woke and how much CPU its thread spent.

A late tick with a busy loop thread means code on the loop blocked it (what the hardening tests forbid);
a late tick with an idle loop thread means the OS did not schedule the process, which no code here can fix.
Works on the test's own loop or, through ``start_on``, on a LiveServer's loop in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from typing import Any


class LoopWatch:
    """Ticks every ``interval_s`` on one loop and records ``(lag_s, loop_thread_cpu_s)`` per tick."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.ticks: list[tuple[float, float]] = []
        # CPU the garbage collector spent on the loop thread in each tick: a collection runs on whichever
        # thread allocated last and scans the whole process's heap (in a test process, the suite's too).
        self.gc_ticks: list[float] = []
        self._gc_cpu = 0.0
        self._gc_started: float | None = None
        self._thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._gc_started = time.thread_time()
        elif self._gc_started is not None:
            self._gc_cpu += time.thread_time() - self._gc_started
            self._gc_started = None

    async def _run(self) -> None:
        while True:
            t0, c0, g0 = time.perf_counter(), time.thread_time(), self._gc_cpu
            await asyncio.sleep(self.interval_s)
            self.ticks.append((time.perf_counter() - t0 - self.interval_s, time.thread_time() - c0))
            self.gc_ticks.append(self._gc_cpu - g0)

    def _begin(self) -> None:
        self._thread = threading.get_ident()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="test-loop-watch")

    async def start(self) -> LoopWatch:
        """Watch the running loop."""
        self._loop = asyncio.get_running_loop()
        self._begin()
        await asyncio.sleep(0)
        return self

    def start_on(self, loop: asyncio.AbstractEventLoop) -> LoopWatch:
        """Watch another thread's loop (a LiveServer's: ``server.app.state.voxgate.loop``)."""
        self._loop = loop

        async def begin() -> None:
            self._begin()

        asyncio.run_coroutine_threadsafe(begin(), loop).result(timeout=5)
        return self

    async def _cancel(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def stop(self) -> None:
        assert self._loop is not None
        if self._loop is asyncio.get_running_loop():
            await self._cancel()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._cancel(), self._loop))

    @property
    def max_busy_ms(self) -> float:
        """The most CPU code on the loop thread spent in one tick: time the loop could not serve anyone else.

        The garbage collector's share is left out (and reported by ``max_gc_ms``): a collection holds the GIL,
        so it stalls the loop just as much when another thread triggers it, and its length is set by the whole
        process's heap (in a test process, the test suite's own objects), not by the code on the loop."""
        return 1000 * max(
            (cpu - gc_cpu for (_, cpu), gc_cpu in zip(self.ticks, self.gc_ticks, strict=False)), default=0.0
        )

    @property
    def max_lag_ms(self) -> float:
        return 1000 * max((lag for lag, _ in self.ticks), default=0.0)

    def lag_percentile_ms(self, q: float) -> float:
        lags = sorted(lag for lag, _ in self.ticks)
        if not lags:
            return 0.0
        return 1000 * lags[min(len(lags) - 1, int(q * len(lags)))]

    def describe(self) -> str:
        late = [
            (round(1000 * lag), round(1000 * cpu, 1), round(1000 * g, 1))
            for (lag, cpu), g in zip(self.ticks, self.gc_ticks, strict=False)
            if lag >= 0.05 or cpu >= 0.02
        ]
        return (
            f"{len(self.ticks)} ticks, max lag {self.max_lag_ms:.0f} ms, max loop CPU (code) in a tick "
            f"{self.max_busy_ms:.0f} ms, the garbage collector at most {self.max_gc_ms:.0f} ms; "
            f"late or busy ticks (lag ms, loop cpu ms, gc cpu ms): {late[:20]}"
        )

    @property
    def max_gc_ms(self) -> float:
        """The most CPU the garbage collector spent on the loop thread in one tick."""
        return 1000 * max(self.gc_ticks, default=0.0)
