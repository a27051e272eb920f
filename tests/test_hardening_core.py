"""Issue 9, pipeline core: cancelled engine jobs never run, a turn flood makes one agent step, outboxes are
bounded in bytes, and ended sessions keep no buffers. Fake engines: these are unit tests of the core."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.events import ErrorEvent
from pipeline.outbox import OutAudio, Outbox
from pipeline.session import TurnRecord
from pipeline.workers import EngineWorker, PriorityGate
from tests.test_session_core import FakeLLM, harness, wait_until


@contextlib.contextmanager
def worker(name: str, **kw: Any) -> Iterator[EngineWorker]:
    w = EngineWorker(name, **kw)
    try:
        yield w
    finally:
        w.shutdown()


async def test_a_stream_cancelled_while_queued_never_starts() -> None:
    with worker("queued", threads=1, queue_size=8) as w:
        release = threading.Event()
        made: list[str] = []

        def blocker() -> Iterator[str]:
            made.append("blocker")
            release.wait(5)
            yield "done"

        def later(tag: str):  # noqa: ANN202
            def make() -> Iterator[str]:
                made.append(tag)  # building the prompt: a cancelled job must not even get here
                yield tag

            return make

        async def consume(make) -> list[str]:  # noqa: ANN001
            return [x async for x in w.stream(make)]

        first = asyncio.create_task(consume(blocker))
        await wait_until(lambda: made == ["blocker"], 2.0)
        queued = [asyncio.create_task(consume(later(f"job{i}"))) for i in range(5)]
        await asyncio.sleep(0.05)
        for task in queued[:-1]:
            task.cancel()
        await asyncio.gather(*queued[:-1], return_exceptions=True)
        release.set()
        assert await asyncio.wait_for(first, 2.0) == ["done"]
        assert await asyncio.wait_for(queued[-1], 2.0) == ["job4"]
        assert made == ["blocker", "job4"], "a job whose consumer left ran anyway"
        assert w.started == 2


async def test_a_running_stream_stops_at_its_next_item_when_cancelled() -> None:
    with worker("running") as w:
        produced: list[int] = []

        def endless() -> Iterator[int]:
            i = 0
            while True:
                time.sleep(0.01)
                i += 1
                produced.append(i)
                yield i

        async def consume() -> None:
            async for _ in w.stream(endless, buffer=1):
                await asyncio.sleep(1)  # a slow consumer

        task = asyncio.create_task(consume())
        await wait_until(lambda: len(produced) >= 1, 2.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        count = len(produced)
        await asyncio.sleep(0.1)
        assert len(produced) == count <= 3, "the producer kept making items after its consumer left"


async def test_background_work_waits_while_a_callers_llm_generates() -> None:
    caller_gate = PriorityGate()
    with (
        worker("caller-llm", holds=caller_gate) as caller,
        worker("background", yields_to=[caller_gate]) as bg,
    ):
        log: list[tuple[str, float]] = []

        def tokens(tag: str, n: int, step: float) -> Iterator[str]:
            for _ in range(n):
                time.sleep(step)
                log.append((tag, time.monotonic()))
                yield tag

        async def drain(w: EngineWorker, tag: str, n: int, step: float) -> None:
            async for _ in w.stream(lambda: tokens(tag, n, step)):
                pass

        background = asyncio.create_task(drain(bg, "bg", 200, 0.005))
        await wait_until(lambda: len(log) >= 3, 2.0)
        await drain(caller, "caller", 20, 0.01)
        first = next(t for tag, t in log if tag == "caller")
        last = max(t for tag, t in log if tag == "caller")
        overlapping = [t for tag, t in log if tag == "bg" and first + 0.02 < t < last]
        assert len(overlapping) <= 1, f"background made {len(overlapping)} tokens while the caller's LLM ran"
        await asyncio.wait_for(background, 5.0)


class SlowAgent:
    """A flow-like agent whose every step takes a while (an LLM call); records what each step got."""

    def __init__(self, session: Any, step_s: float = 0.2) -> None:
        self.session = session
        self.step_s = step_s
        self.steps: list[str] = []
        self.digits: list[str] = []

    async def start(self) -> None:
        pass

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        self.steps.append(text)
        await asyncio.sleep(self.step_s)

    async def dtmf(self, digit: str) -> None:
        self.steps.append(f"#{digit}")

    def caller_active(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_flood_of_typed_turns_makes_few_agent_steps_and_loses_no_words() -> None:
    async with harness(mic=False) as h:
        agent = SlowAgent(h.session)
        h.session.agent = agent
        words = [f"w{i}" for i in range(60)]
        for word in words:
            await h.session.submit_text(word)
            await asyncio.sleep(0.005)
        await wait_until(lambda: " ".join(agent.steps).split() == words, 5.0, f"all words: {agent.steps}")
        assert len(agent.steps) <= 4, f"{len(agent.steps)} agent steps for one burst of turns"
        assert len(h.session.turns) == 60, "every turn is still recorded on its own"


async def test_a_key_between_turns_keeps_its_place() -> None:
    async with harness(mic=False) as h:
        agent = SlowAgent(h.session)
        h.session.agent = agent
        await h.session.submit_text("one")  # starts a step at once
        await asyncio.sleep(0.02)
        await h.session.submit_text("two")
        await h.session.dtmf("5")
        await h.session.submit_text("three")
        await h.session.submit_text("four")
        await wait_until(lambda: len(agent.steps) == 4, 5.0, f"steps: {agent.steps}")
        assert agent.steps == ["one", "two", "#5", "three four"]


async def test_typed_turn_flood_leaves_at_most_one_llm_job_running() -> None:
    llm = FakeLLM("word " * 50, delay_s=0.02)
    async with harness(mic=False, llm=llm) as h:
        for i in range(40):
            await h.session.submit_text(f"question {i}")
            await asyncio.sleep(0.01)
        await h.rec.wait("response.text.done")
        # Every superseded answer was cancelled: they never queue up behind each other.
        assert h.rt.llm_worker.started <= 40
        assert h.rt.llm_worker.pending <= 1
        assert len(llm.calls) < 40, f"{len(llm.calls)} generations ran for 40 superseded turns"


def _event(n: int) -> ErrorEvent:
    return ErrorEvent("x", "y" * n)


async def test_outbox_is_bounded_in_bytes() -> None:
    box = Outbox(max_events=512, max_audio=64, max_bytes=10_000)
    await box.put_event(_event(4000))
    await box.put_event(_event(4000))
    blocked = asyncio.create_task(box.put_event(_event(4000)))
    await asyncio.sleep(0.05)
    assert not blocked.done(), "a third 4 KB event went past a 10 KB budget"
    assert box.bytes <= 10_000
    assert (await box.get()).type == "error"  # type: ignore[union-attr]
    await asyncio.wait_for(blocked, 1.0)
    assert box.depth == 2 and box.bytes <= 10_000


async def test_outbox_admits_an_oversized_item_when_empty_and_counts_audio_bytes() -> None:
    box = Outbox(max_bytes=1500)
    await asyncio.wait_for(box.put_event(_event(5000)), 1.0)  # alone it may pass, or nothing could
    assert (await box.get()).message == "y" * 5000  # type: ignore[union-attr]
    await box.put_audio(OutAudio(b"\x00" * 640, "r", 20))
    await box.put_audio(OutAudio(b"\x00" * 640, "r", 20))
    third = asyncio.create_task(box.put_audio(OutAudio(b"\x00" * 640, "r", 20)))
    await asyncio.sleep(0.05)
    assert not third.done() and box.bytes == 1280
    assert box.purge_audio() == 2 and box.bytes == 0
    await asyncio.wait_for(third, 1.0)  # purged frames made room (the stale frame itself is dropped)
    assert box.depth == 0


async def test_discard_drops_what_was_never_read() -> None:
    box = Outbox()
    for _ in range(10):
        await box.put_event(_event(100))
    box.discard()
    assert box.depth == 0 and box.bytes == 0
    assert await box.get() is None
    await box.put_event(_event(10))
    assert box.depth == 0


@pytest.mark.parametrize("keep_recent_s", [30.0, 0.0])
async def test_session_manager_keeps_only_a_summary_of_ended_sessions(keep_recent_s: float) -> None:
    import gc
    import weakref

    from gateway.sessions import EndedSession, SessionManager

    manager = SessionManager(max_sessions=4, keep_recent_s=keep_recent_s)
    async with harness(mic=False) as h:
        session = h.session
        assert manager.try_reserve()
        manager.add(session)
        await session.submit_text("hello")
        await h.rec.wait("response.text.done")
        await session.close("test_done")
        manager.remove(session)
        ref = weakref.ref(session)
        sid = session.id
    del session, h
    gc.collect()
    assert ref() is None, f"an ended session is still alive: {[type(r) for r in gc.get_referrers(ref())]}"
    kept = manager.get(sid)
    if keep_recent_s:
        assert isinstance(kept, EndedSession) and kept.snapshot["close_reason"] == "test_done"
        assert kept.snapshot["turn_count"] == 1
    else:
        assert kept is None
