"""Run blocking engine calls off the event loop through bounded work queues.

One ``EngineWorker`` per loaded engine: every session shares it, at most ``queue_size`` jobs wait, and callers
beyond that wait their turn (backpressure instead of unbounded growth). ``VadBatcher`` gathers the VAD chunks
that all sessions have ready and runs them as one batched inference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from pipeline.aio import cancel_and_wait

T = TypeVar("T")

_STREAM_POLL_S = 0.05  # how often a producer thread blocked on a full queue re-checks for cancellation


class PriorityGate:
    """Lets latency-critical engines (STT, TTS) pause background work (LLM tokens) on a small CPU.

    On 2 cores, Piper's first audio took twice as long while llama.cpp kept generating; the LLM runs far
    ahead of speech anyway, so it waits between tokens while a holder works.
    """

    def __init__(self) -> None:
        self._holders = 0
        self._lock = threading.Lock()
        self._clear = threading.Event()
        self._clear.set()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._lock:
            self._holders += 1
            self._clear.clear()
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._clear.set()

    def wait_clear(self, stop: threading.Event, max_wait_s: float = 2.0) -> None:
        """Block while held (bounded, so a stuck holder cannot starve the LLM forever)."""
        deadline = time.monotonic() + max_wait_s
        while not self._clear.wait(_STREAM_POLL_S):
            if stop.is_set() or time.monotonic() > deadline:
                return


class EngineWorker:
    """A bounded work queue in front of ``threads`` dedicated threads for one engine.

    ``holds`` marks this engine's work as latency-critical; ``yields_to`` makes a streaming engine pause
    between items while such work runs.
    """

    def __init__(
        self,
        name: str,
        threads: int = 1,
        queue_size: int = 64,
        holds: PriorityGate | None = None,
        yields_to: PriorityGate | Sequence[PriorityGate] | None = None,
    ) -> None:
        self.name = name
        self._holds = holds
        if isinstance(yields_to, PriorityGate):
            yields_to = (yields_to,)
        self._yields_to: tuple[PriorityGate, ...] = tuple(yields_to or ())
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"engine-{name}")
        self._slots = asyncio.Semaphore(threads + queue_size)
        self.pending = 0
        self.busy_s = 0.0
        self.started = 0  # jobs that reached a thread (a job cancelled while queued never does)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the engine's thread from non-async code (start-up, warm-up) and wait.

        Engines must always run on their own worker thread: llama.cpp and CTranslate2 start an OpenMP team
        per calling thread, and two teams on 2 cores throttle OpenMP to sleeping waits (measured: llama.cpp
        decoding at 13-17 ms a token instead of 8.5 after a warm-up on another thread).
        """
        return self._executor.submit(self._timed, fn, args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the engine's thread; waits for a slot when the queue is full."""
        async with self._slots:
            self.pending += 1
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, self._timed, fn, args)
            finally:
                self.pending -= 1

    def _timed(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self.started += 1
        start = time.perf_counter()
        try:
            if self._holds is None:
                return fn(*args)
            with self._holds.hold():
                return fn(*args)
        finally:
            self.busy_s += time.perf_counter() - start

    async def stream(self, make_iter: Callable[[], Iterator[T]], buffer: int = 8) -> AsyncIterator[T]:
        """Pull a blocking iterator on the engine's thread, handing items over through a bounded queue.

        Leaving the ``async for`` early (a barge-in cancels the consumer) stops the producer at its next
        item and closes the underlying generator, which is how LLM and TTS work is actually stopped.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=buffer)
        stop = threading.Event()

        def hand_over(kind: str, value: Any) -> bool:
            future = asyncio.run_coroutine_threadsafe(queue.put((kind, value)), loop)
            while not stop.is_set():
                try:
                    future.result(timeout=_STREAM_POLL_S)
                    return True
                except TimeoutError:
                    continue
            future.cancel()
            return False

        def produce() -> None:
            iterator = None
            if stop.is_set():  # cancelled while queued: a job nobody waits for never starts
                return
            try:
                iterator = make_iter()
                for item in iterator:
                    if stop.is_set() or not hand_over("item", item):
                        break
                    for gate in self._yields_to:
                        gate.wait_clear(stop)
                else:
                    hand_over("end", None)
            except BaseException as exc:  # handed to the consumer, which re-raises it on the loop
                hand_over("error", exc)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        async with self._slots:
            self.pending += 1
            task = loop.run_in_executor(self._executor, self._timed, produce, ())
            try:
                while True:
                    kind, value = await queue.get()
                    if kind == "item":
                        yield value
                    elif kind == "error":
                        raise value
                    else:
                        break
            finally:
                stop.set()
                self.pending -= 1
                # Do not await the thread here: a cancelled consumer must not wait for a slow engine step.
                # A job still in the executor's queue is cancelled outright; a running one stops at its
                # next item (the producer checks ``stop``).
                task.cancel()
                task.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class VadBatcher:
    """Coalesces concurrent VAD requests from many sessions into one batched call on a single thread."""

    def __init__(self, engine: Any, max_batch: int = 1024) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[Any, np.ndarray, asyncio.Future[float]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-vad")
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.chunks = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="vad-batcher")

    async def speech_prob(self, state: Any, chunk: np.ndarray) -> float:
        """Probability that ``chunk`` (float32, 32 ms at the state's rate) holds speech, for one stream."""
        self.start()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pending.append((state, chunk, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            # One extra turn of the loop lets every session that is ready this tick join the batch.
            await asyncio.sleep(0)
            self._wake.clear()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if self._pending:
                self._wake.set()
            batch = [item for item in batch if not item[2].done()]
            if not batch:
                continue
            # Streams at different rates (8 kHz phone calls, 16 kHz the rest) score in separate model calls.
            groups: dict[int, list[tuple[Any, np.ndarray, asyncio.Future[float]]]] = {}
            for item in batch:
                groups.setdefault(len(item[1]), []).append(item)
            results = await loop.run_in_executor(self._executor, self._score, list(groups.values()))
            for group, result in results:
                if isinstance(result, Exception):  # every waiting session learns of it; the batcher lives on
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(result)
                    continue
                self.batches += 1
                self.chunks += len(group)
                for (_, _, future), prob in zip(group, result, strict=True):
                    if not future.done():
                        future.set_result(float(prob))

    def _score(self, groups: list[list[Any]]) -> list[tuple[list[Any], np.ndarray | Exception]]:
        results: list[tuple[list[Any], np.ndarray | Exception]] = []
        for group in groups:
            try:
                states = [item[0] for item in group]
                results.append(
                    (group, self.engine.speech_probs(states, np.stack([item[1] for item in group])))
                )
            except Exception as exc:
                results.append((group, exc))
        return results

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)
