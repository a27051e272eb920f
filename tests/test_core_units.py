"""Unit tests of the pipeline core: outbox, pacer, chain, turn detector, workers, codec and response records.

The engines here are small honest fakes: a VAD whose speech probability follows the chunk's energy or
content, generators that really sleep between items, a TTS that returns a known number of milliseconds of
tone per word. Timing asserts use lower bounds where load can only make things later, and generous upper
bounds (the test machine is a loaded 2-core box).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from engines.base import Capabilities, Voice
from pipeline.audio import float_to_pcm16, mulaw_encode, pcm16_to_float
from pipeline.codec import InputBacklog, InputDecoder, WireEncoder
from pipeline.events import DtmfReceived, SpeechStarted
from pipeline.frames import EndOfResponse, Frame, LLMTextDelta, TTSAudio
from pipeline.outbox import OutAudio, Outbox
from pipeline.pacer import OutputPacer
from pipeline.processor import Chain, Processor
from pipeline.response import ClauseAggregator, Response, Segment, TextNormalizer, TTSStage
from pipeline.turns import CHUNK_MS, TurnDetector
from pipeline.workers import EngineWorker, VadBatcher

# -- helpers -------------------------------------------------------------------------------------------------


def tone(ms: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.3) -> bytes:
    t = np.arange(int(rate * ms / 1000)) / rate
    return float_to_pcm16(amp * np.sin(2 * np.pi * freq * t))


def audio(payload: bytes = b"\x00" * 640, rid: str = "r1", generation: int = 0) -> OutAudio:
    return OutAudio(payload, rid, 20.0, generation)


async def wait_until(predicate, timeout: float = 2.0, step: float = 0.005) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


async def is_blocked(aw: asyncio.Task, for_s: float = 0.05) -> bool:
    await asyncio.sleep(for_s)
    return not aw.done()


# == Outbox ==================================================================================================


async def test_outbox_put_audio_waits_when_audio_is_full() -> None:
    box = Outbox(max_events=8, max_audio=2)
    await box.put_audio(audio(b"a"))
    await box.put_audio(audio(b"b"))
    third = asyncio.create_task(box.put_audio(audio(b"c")))
    assert await is_blocked(third), "a third audio frame must wait while max_audio frames are queued"
    # Events do not count against the audio bound.
    await asyncio.wait_for(box.put_event(SpeechStarted()), 0.5)
    assert (await box.get()).payload == b"a"
    await asyncio.wait_for(third, 1.0)
    assert box.depth == 3
    assert [(await box.get()) for _ in range(3)] == [audio(b"b"), SpeechStarted(), audio(b"c")]


async def test_outbox_put_event_waits_when_event_limit_reached() -> None:
    box = Outbox(max_events=2, max_audio=8)
    await box.put_event(DtmfReceived("1"))
    await box.put_event(DtmfReceived("2"))
    third = asyncio.create_task(box.put_event(DtmfReceived("3")))
    assert await is_blocked(third), "a third event must wait while max_events events are queued"
    await asyncio.wait_for(box.put_audio(audio()), 0.5)  # audio has its own bound
    assert await box.get() == DtmfReceived("1")
    await asyncio.wait_for(third, 1.0)
    assert [await box.get() for _ in range(3)] == [DtmfReceived("2"), audio(), DtmfReceived("3")]


async def test_outbox_purge_drops_only_audio_and_bumps_generation() -> None:
    box = Outbox()
    await box.put_event(DtmfReceived("1"))
    await box.put_audio(audio(b"a1"))
    await box.put_event(DtmfReceived("2"))
    await box.put_audio(audio(b"a2"))
    assert box.generation == 0
    assert box.purge_audio() == 2
    assert box.generation == 1
    assert box.depth == 2
    # A frame made before the purge (stale generation) is never enqueued; a fresh one is.
    await box.put_audio(audio(b"stale", generation=0))
    assert box.depth == 2
    await box.put_audio(audio(b"fresh", generation=1))
    assert [await box.get() for _ in range(3)] == [
        DtmfReceived("1"),
        DtmfReceived("2"),
        audio(b"fresh", generation=1),
    ]


async def test_outbox_purge_releases_a_blocked_writer_and_drops_its_stale_frame() -> None:
    box = Outbox(max_audio=1)
    await box.put_audio(audio(b"a"))
    blocked = asyncio.create_task(box.put_audio(audio(b"late", generation=0)))
    assert await is_blocked(blocked)
    assert box.purge_audio() == 1
    await asyncio.wait_for(blocked, 1.0)
    assert box.depth == 0, "the frame that waited through the purge is stale and must not be enqueued"
    # The audio bound is free again for the new generation.
    await asyncio.wait_for(box.put_audio(audio(b"new", generation=1)), 0.5)
    assert box.depth == 1


async def test_outbox_close_drains_then_returns_none() -> None:
    box = Outbox()
    await box.put_event(DtmfReceived("1"))
    await box.put_audio(audio(b"a"))
    await box.close()
    await box.put_event(DtmfReceived("after close"))  # ignored, does not block
    await box.put_audio(audio(b"after"))
    assert await box.get() == DtmfReceived("1")
    assert await box.get() == audio(b"a")
    assert await asyncio.wait_for(box.get(), 0.5) is None
    assert await asyncio.wait_for(box.get(), 0.5) is None


async def test_outbox_close_wakes_a_waiting_reader() -> None:
    box = Outbox()
    reader = asyncio.create_task(box.get())
    assert await is_blocked(reader)
    await box.close()
    assert await asyncio.wait_for(reader, 1.0) is None


# == OutputPacer =============================================================================================


class Drain:
    """Drains an outbox, stamping each audio frame with its arrival time."""

    def __init__(self, box: Outbox) -> None:
        self.box = box
        self.frames: list[tuple[float, OutAudio]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (item := await self.box.get()) is not None:
            if isinstance(item, OutAudio):
                self.frames.append((time.monotonic(), item))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def running_pacer(lead_ms: int = 100, max_audio: int = 200):
    box = Outbox(max_audio=max_audio)
    pacer = OutputPacer(box, lead_ms=lead_ms)
    pacer.start()
    drain = Drain(box)
    try:
        yield pacer, drain
    finally:
        await pacer.close()
        await drain.stop()


async def test_pacer_releases_in_real_time_with_bounded_lead() -> None:
    lead_ms = 100
    async with running_pacer(lead_ms) as (pacer, drain):
        start = time.monotonic()
        pacer.enqueue("r1", [bytes([k]) * 640 for k in range(50)], 20)
        await wait_until(lambda: len(drain.frames) == 50, timeout=5.0)
    payloads = [f.payload[0] for _, f in drain.frames]
    assert payloads == list(range(50)), "frames must leave in order"
    for k, (sent, _) in enumerate(drain.frames):
        earliest = start + (k * 20 - lead_ms - 15) / 1000
        assert sent >= earliest, f"frame {k} left {1000 * (earliest - sent):.0f} ms too early"
    # ... and not much slower than real time either (50 frames = 1 s of audio, minus the lead).
    last = drain.frames[-1][0] - start
    assert 0.85 <= last < 1.6, f"last frame left after {last:.3f} s"
    assert pacer.released_ms["r1"] == pytest.approx(1000.0)


async def test_pacer_wait_for_room_blocks_while_ahead_of_lead() -> None:
    lead_ms = 100
    async with running_pacer(lead_ms) as (pacer, drain):
        await asyncio.wait_for(pacer.wait_for_room(), 0.05)  # empty: room at once
        pacer.enqueue("r1", [b"\x00" * 640] * 25, 20)  # 500 ms owed
        assert pacer.ahead_ms() > lead_ms
        start = time.monotonic()
        await asyncio.wait_for(pacer.wait_for_room(), 2.0)
        waited = time.monotonic() - start
        assert pacer.ahead_ms() <= lead_ms + 5
        # 500 ms owed must play down to 100 ms: about 400 ms of waiting.
        assert 0.33 <= waited < 1.2, f"waited {waited:.3f} s"


async def test_pacer_flush_drops_queued_frames_and_releases_nothing_more() -> None:
    async with running_pacer(100) as (pacer, drain):
        pacer.enqueue("r1", [b"\x00" * 640] * 50, 20)
        await wait_until(lambda: len(drain.frames) >= 10)
        dropped = pacer.flush()
        got = len(drain.frames)
        assert dropped >= 50 - got - 1  # one frame may have been on its way into the outbox
        assert pacer.buffered_ms == 0
        assert pacer.ahead_ms() == 0
        await asyncio.sleep(0.3)
        assert len(drain.frames) <= got, "no frame may leave after flush()"
        # The pacer still works for the next response.
        pacer.enqueue("r2", [b"\x01" * 640] * 3, 20)
        await wait_until(lambda: len(drain.frames) == got + 3)
        assert {f.response_id for _, f in drain.frames[got:]} == {"r2"}


async def test_pacer_flush_purges_frames_waiting_in_the_outbox() -> None:
    box = Outbox(max_audio=200)
    pacer = OutputPacer(box, lead_ms=200)
    pacer.start()
    try:
        pacer.enqueue("r1", [b"\x00" * 640] * 30, 20)
        await wait_until(lambda: box.depth >= 5)  # nobody drains: released frames wait in the outbox
        queued = box.depth
        dropped = pacer.flush()
        assert dropped == 30
        assert box.depth == 0
        assert queued >= 5
    finally:
        await pacer.close()


async def test_pacer_played_estimate_follows_elapsed_playback() -> None:
    async with running_pacer(200) as (pacer, drain):
        pacer.enqueue("r1", [b"\x00" * 640] * 100, 20)  # 2 s
        await wait_until(lambda: drain.frames)
        first = drain.frames[0][0]
        await asyncio.sleep(0.5)
        elapsed_ms = (time.monotonic() - first) * 1000
        estimate = pacer.played_estimate_ms("r1")
        assert abs(estimate - elapsed_ms) < 60, f"estimate {estimate:.0f} ms, elapsed {elapsed_ms:.0f} ms"
        assert pacer.released_ms["r1"] - estimate == pytest.approx(
            pacer.ahead_ms() - pacer.buffered_ms, abs=25
        )
        assert pacer.played_estimate_ms("unknown") == 0.0


async def test_pacer_flush_does_not_count_unplayed_audio_as_heard() -> None:
    async with running_pacer(200) as (pacer, drain):
        pacer.enqueue("r1", [b"\x00" * 640] * 100, 20)
        await wait_until(lambda: drain.frames)
        await asyncio.sleep(0.5)
        before = pacer.played_estimate_ms("r1")
        pacer.flush()
        after = pacer.played_estimate_ms("r1")
        # ~200 ms had been released but not yet played: flushing must not make them "heard".
        assert after <= before + 30, f"estimate jumped from {before:.0f} to {after:.0f} ms at flush"


# == Chain ===================================================================================================


@dataclass
class Item(Frame):
    value: int
    trail: tuple[str, ...] = ()


class Tag(Processor):
    """Adds its name to the frame's trail; ``copies`` outputs per input."""

    def __init__(self, name: str, copies: int = 1, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.name = name
        self.copies = copies
        self.delay = delay
        self.fail_at = fail_at

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, Item)
        if self.fail_at is not None and frame.value == self.fail_at:
            raise ValueError(f"{self.name} failed at {frame.value}")
        if self.delay:
            await asyncio.sleep(self.delay)
        for _ in range(self.copies):
            yield Item(frame.value, (*frame.trail, self.name))


class Source:
    """An async generator of Items that records how far it got and whether its ``finally`` ran."""

    def __init__(self, count: int | None, delay: float = 0.0, hang_at: int | None = None) -> None:
        self.count = count
        self.delay = delay
        self.hang_at = hang_at
        self.produced = 0
        self.closed = False
        self.closed_at: float | None = None

    async def gen(self) -> AsyncIterator[Frame]:
        try:
            i = 0
            while self.count is None or i < self.count:
                if self.hang_at is not None and i == self.hang_at:
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.produced += 1
                yield Item(i)
                i += 1
        finally:
            self.closed = True
            self.closed_at = time.monotonic()


async def test_chain_frames_flow_through_processors_in_order() -> None:
    out: list[Item] = []

    async def sink(frame: Frame) -> None:
        out.append(frame)  # type: ignore[arg-type]

    source = Source(20)
    chain = Chain(source.gen(), [Tag("a"), Tag("b", copies=2), Tag("c")], sink, maxsize=2)
    await asyncio.wait_for(chain.run(), 5.0)
    assert [f.value for f in out] == [v for v in range(20) for _ in range(2)]
    assert all(f.trail == ("a", "b", "c") for f in out)
    assert source.closed


async def test_chain_queues_stay_bounded_behind_a_slow_sink() -> None:
    maxsize = 2
    delivered = 0
    max_depths = [0, 0, 0]
    max_backlog = 0

    async def slow_sink(frame: Frame) -> None:
        nonlocal delivered
        await asyncio.sleep(0.01)
        delivered += 1

    source = Source(60)
    chain = Chain(source.gen(), [Tag("a"), Tag("b"), Tag("c")], slow_sink, maxsize=maxsize)
    run = asyncio.create_task(chain.run())
    while not run.done():
        max_depths = [max(m, d) for m, d in zip(max_depths, chain.depths(), strict=True)]
        max_backlog = max(max_backlog, source.produced - delivered)
        await asyncio.sleep(0.002)
    await run
    assert delivered == 60
    assert max(max_depths) <= maxsize, f"queue depths reached {max_depths}"
    assert max(max_depths) == maxsize, (
        "the slow sink should have filled the queues (else this test shows nothing)"
    )
    # Backpressure reaches the source: at most the queues plus one frame held by each stage are in flight.
    assert max_backlog <= 3 * maxsize + 3 + 2, f"source ran {max_backlog} frames ahead of the sink"


async def test_chain_cancel_stops_every_stage_and_closes_the_source() -> None:
    async def slow_sink(frame: Frame) -> None:
        await asyncio.sleep(0.05)

    source = Source(None)  # endless
    stages = [Tag("cancel-a"), Tag("cancel-b", delay=0.02)]
    chain = Chain(source.gen(), stages, slow_sink, maxsize=2)
    run = asyncio.create_task(chain.run())
    await asyncio.sleep(0.15)
    assert not run.done()
    start = time.monotonic()
    await asyncio.wait_for(chain.cancel(), 1.0)
    took = time.monotonic() - start
    assert took < 0.3, f"cancel took {took:.3f} s"
    assert source.closed, "the source generator's finally must have run"
    names = {"chain-source", "cancel-a", "cancel-b"}
    assert not [t for t in asyncio.all_tasks() if t.get_name() in names and not t.done()]
    assert chain.depths() == [0, 0]
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 1.0)
    produced = source.produced
    await asyncio.sleep(0.05)
    assert source.produced == produced


async def test_chain_cancel_closes_a_source_blocked_inside_an_await() -> None:
    async def sink(frame: Frame) -> None:
        pass

    source = Source(None, hang_at=3)
    chain = Chain(source.gen(), [Tag("hang-a")], sink)
    run = asyncio.create_task(chain.run())
    await wait_until(lambda: source.produced == 3)
    await asyncio.sleep(0.02)
    await asyncio.wait_for(chain.cancel(), 1.0)
    assert source.closed
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 1.0)


async def test_chain_stage_exception_propagates_from_run_and_stops_the_rest() -> None:
    out: list[int] = []

    async def sink(frame: Frame) -> None:
        out.append(frame.value)  # type: ignore[attr-defined]

    source = Source(None, delay=0.001)
    chain = Chain(source.gen(), [Tag("ok"), Tag("bad", fail_at=5)], sink)
    with pytest.raises(ValueError, match="bad failed at 5"):
        await asyncio.wait_for(chain.run(), 5.0)
    assert out == [0, 1, 2, 3, 4]
    assert source.closed
    assert not [
        t for t in asyncio.all_tasks() if t.get_name() in {"chain-source", "ok", "bad"} and not t.done()
    ]


async def test_chain_sink_and_source_exceptions_propagate() -> None:
    async def bad_sink(frame: Frame) -> None:
        raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        await asyncio.wait_for(Chain(Source(5).gen(), [Tag("x")], bad_sink).run(), 5.0)

    async def bad_source() -> AsyncIterator[Frame]:
        yield Item(0)
        raise KeyError("source broke")

    async def sink(frame: Frame) -> None:
        pass

    with pytest.raises(KeyError, match="source broke"):
        await asyncio.wait_for(Chain(bad_source(), [Tag("y")], sink).run(), 5.0)


# == TurnDetector ============================================================================================

SPEECH, QUIET = 0.9, 0.0


def chunk(i: int) -> bytes:
    """A 32 ms chunk whose bytes say which chunk it was."""
    return bytes([i % 256]) * 1024


class Feeder:
    def __init__(self, detector: TurnDetector) -> None:
        self.detector = detector
        self.i = 0
        self.events: list[tuple[int, str, object]] = []

    def feed(self, probs: list[float]) -> list[str]:
        kinds = []
        for p in probs:
            for event in self.detector.feed(chunk(self.i), p):
                self.events.append((self.i, event.kind, event))
                kinds.append(event.kind)
            self.i += 1
        return kinds

    def at(self, kind: str) -> list[int]:
        return [i for i, k, _ in self.events if k == kind]


def test_turns_full_utterance_lifecycle() -> None:
    d = Feeder(TurnDetector(threshold=0.5, end_of_turn_ms=300, min_interrupt_ms=250, min_speech_ms=90))
    assert d.feed([QUIET] * 12) == []  # chunks 0..11; pre-roll keeps 2..11
    d.feed([SPEECH] * 10)  # chunks 12..21
    assert d.at("started") == [14], "started once min_speech_ms (3 chunks = 96 ms) of speech is heard"
    assert d.at("interrupt") == [19], "interrupt once speech lasted min_interrupt_ms (8 chunks = 256 ms)"
    assert d.events[1][2].speech_ms == 256
    assert d.feed([QUIET]) == ["paused"]  # chunk 22: the first silent chunk
    assert d.events[-1][2].audio == b"".join(chunk(i) for i in range(2, 23))
    assert d.feed([SPEECH, SPEECH]) == ["resumed"]  # chunks 23, 24
    kinds = d.feed([QUIET] * 10)  # chunks 25..34
    assert kinds == ["paused", "ended"]
    assert d.at("ended") == [25 + 300 // CHUNK_MS]  # after end_of_turn_ms (10 chunks = 320 ms) of silence
    ended = d.events[-1][2]
    # The utterance audio: 10 pre-roll chunks, the speech, the pause and the trailing silence.
    assert ended.audio == b"".join(chunk(i) for i in range(2, 35))
    assert ended.speech_ms == 10 * 32 + 32 + 2 * 32  # speech run spans the inner pause
    assert d.at("interrupt") == [19], "interrupt fires once per utterance"
    assert not d.detector.in_speech


def test_turns_hysteresis_keeps_soft_speech_inside_the_utterance() -> None:
    d = Feeder(TurnDetector(threshold=0.5, min_interrupt_ms=10_000))
    d.feed([SPEECH] * 4)
    assert d.feed([0.4] * 3) == [], "after speech, prob above release (0.35) still counts as speech"
    assert d.feed([0.3]) == ["paused"]
    assert d.feed([0.4]) == [], "but resuming needs the full threshold"
    assert d.feed([0.6]) == ["resumed"]


def test_turns_onset_counts_the_rising_chunks_before_the_threshold() -> None:
    # Silero at a clipped word onset: 0.46 on the first 32 ms, then above 0.9 (bench: a 300 ms burst).
    d = Feeder(TurnDetector(threshold=0.5, min_interrupt_ms=250))
    d.feed([QUIET] * 5 + [0.46] + [SPEECH] * 7)
    assert d.at("interrupt") == [12], "the 0.46 chunk counts: 8 chunks = 256 ms reach min_interrupt_ms"
    # Only the last couple of chunks before onset count, and only when above the release level.
    d = Feeder(TurnDetector(threshold=0.5, min_interrupt_ms=250))
    d.feed([0.4] * 6 + [SPEECH] * 5)
    assert d.at("interrupt") == [], "at most two rising chunks: 2 + 5 chunks = 224 ms"
    assert d.feed([SPEECH]) == ["interrupt"]
    d = Feeder(TurnDetector(threshold=0.5, min_interrupt_ms=250))
    d.feed([0.2] * 3 + [SPEECH] * 7)
    assert d.at("interrupt") == [], "chunks below the release level are not speech"


def test_turns_interrupt_only_once_across_pauses() -> None:
    d = Feeder(TurnDetector(min_interrupt_ms=250, end_of_turn_ms=500))
    for _ in range(4):
        d.feed([SPEECH] * 9 + [QUIET] * 3)
    assert len(d.at("interrupt")) == 1
    assert len(d.at("started")) == 1
    assert len(d.at("resumed")) == 3
    assert len(d.at("paused")) == 4


def test_turns_short_blip_is_discarded() -> None:
    d = Feeder(TurnDetector(min_speech_ms=90, end_of_turn_ms=300))
    d.feed([QUIET] * 3 + [SPEECH] * 2)
    assert d.feed([QUIET] * 10) == ["discarded"]
    assert d.events[-1][2].speech_ms == 64
    assert d.events[-1][2].audio == b""
    assert d.at("started") == [] and d.at("paused") == []
    # The detector is ready for the next utterance.
    assert d.feed([SPEECH] * 3) == ["started"]


def test_turns_commit_ends_an_open_utterance() -> None:
    det = TurnDetector()
    assert det.commit() is None, "nothing open: nothing to commit"
    d = Feeder(det)
    d.feed([QUIET] * 2 + [SPEECH] * 5)
    assert det.in_speech
    event = det.commit()
    assert event is not None and event.kind == "ended"
    assert event.audio == b"".join(chunk(i) for i in range(7))
    assert event.speech_ms == 5 * 32
    assert not det.in_speech and det.commit() is None
    # A commit during a too-short blip discards it.
    d.feed([SPEECH])
    assert det.commit().kind == "discarded"


def test_turns_a_very_long_utterance_is_ended_at_28_s() -> None:
    d = Feeder(TurnDetector())
    d.feed([SPEECH] * 880)
    assert d.at("ended") == [28_000 // CHUNK_MS - 1], "Whisper sees 30 s at most: end at 28 s"
    ended = [e for _, k, e in d.events if k == "ended"][0]
    assert len(ended.audio) == 875 * 1024
    assert d.at("started") == [2, 877], "speech that goes on opens a new utterance"


def test_turns_pre_roll_is_limited_and_not_reused() -> None:
    d = Feeder(TurnDetector())
    d.feed([QUIET] * 30 + [SPEECH] * 3)
    event = d.detector.commit()
    assert event.audio == b"".join(chunk(i) for i in range(20, 33)), "320 ms (10 chunks) of pre-roll"
    d.feed([SPEECH] * 3)
    assert d.detector.commit().audio == b"".join(chunk(i) for i in range(33, 36)), "no stale pre-roll"


# == EngineWorker ============================================================================================


@contextlib.contextmanager
def worker(name: str, threads: int = 1, queue_size: int = 4) -> Iterator[EngineWorker]:
    w = EngineWorker(name, threads, queue_size)
    try:
        yield w
    finally:
        w.shutdown()


async def test_worker_run_executes_off_the_event_loop_thread() -> None:
    with worker("offloop") as w:
        loop_thread = threading.get_ident()
        ident, name = await w.run(lambda: (threading.get_ident(), threading.current_thread().name))
        assert ident != loop_thread
        assert name.startswith("engine-offloop")
        assert await w.run(pow, 2, 10) == 1024
        with pytest.raises(ZeroDivisionError):
            await w.run(lambda: 1 / 0)
        assert w.pending == 0


async def test_worker_run_is_bounded_by_threads_plus_queue_size() -> None:
    with worker("bounded", threads=1, queue_size=1) as w:
        gates = [threading.Event() for _ in range(3)]
        entered: list[int] = []

        def job(i: int) -> int:
            entered.append(i)
            gates[i].wait(5)
            return i

        tasks = [asyncio.create_task(w.run(job, i)) for i in range(3)]
        await wait_until(lambda: entered == [0])
        await asyncio.sleep(0.05)
        assert w.pending == 2, "one job runs, one waits in the queue, the third waits for a slot"
        assert entered == [0]
        gates[0].set()
        await asyncio.wait_for(tasks[0], 1.0)
        await wait_until(lambda: entered == [0, 1])
        await asyncio.sleep(0.02)
        assert w.pending == 2, "the third call took the freed slot"
        gates[1].set()
        gates[2].set()
        assert await asyncio.wait_for(asyncio.gather(*tasks), 2.0) == [0, 1, 2]
        assert w.pending == 0


async def test_worker_stream_hands_items_over_in_order() -> None:
    with worker("stream") as w:
        threads: set[int] = set()

        def gen() -> Iterator[int]:
            for i in range(25):
                threads.add(threading.get_ident())
                yield i

        got = [x async for x in w.stream(gen, buffer=2)]
        assert got == list(range(25))
        assert threading.get_ident() not in threads
        assert w.pending == 0


class SlowEndless:
    """An endless blocking generator (like an LLM or TTS) that records when its ``finally`` ran."""

    def __init__(self, step_s: float = 0.02) -> None:
        self.step_s = step_s
        self.closed_at: float | None = None
        self.made = 0

    def __call__(self) -> Iterator[int]:
        try:
            while True:
                time.sleep(self.step_s)
                self.made += 1
                yield self.made
        finally:
            self.closed_at = time.monotonic()


async def test_worker_stream_break_closes_the_producer_promptly() -> None:
    with worker("early-break") as w:
        gen = SlowEndless()
        async for item in w.stream(gen, buffer=2):
            if item == 3:
                break
        left = time.monotonic()
        await wait_until(lambda: gen.closed_at is not None, timeout=2.0)
        assert gen.closed_at - left < 0.2, f"producer closed {gen.closed_at - left:.3f} s after the break"
        made = gen.made
        await asyncio.sleep(0.1)
        assert gen.made == made, "the producer kept working after it was closed"
        # The engine thread is free again.
        assert await asyncio.wait_for(w.run(lambda: "free"), 1.0) == "free"
        assert w.pending == 0


async def test_worker_stream_cancelled_consumer_closes_the_producer_promptly() -> None:
    with worker("cancelled") as w:
        gen = SlowEndless()
        seen: list[int] = []

        async def consume() -> None:
            async for item in w.stream(gen, buffer=1):
                seen.append(item)
                await asyncio.sleep(0.05)  # a slow consumer: the producer blocks on the full buffer

        task = asyncio.create_task(consume())
        await wait_until(lambda: len(seen) >= 2)
        task.cancel()
        cancelled = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: gen.closed_at is not None, timeout=2.0)
        assert gen.closed_at - cancelled < 0.2
        assert w.pending == 0


async def test_worker_stream_errors_reach_the_consumer() -> None:
    with worker("errors") as w:

        def gen() -> Iterator[int]:
            yield 1
            yield 2
            raise ValueError("engine exploded")

        got: list[int] = []
        with pytest.raises(ValueError, match="engine exploded"):
            async for x in w.stream(gen):
                got.append(x)
        assert got == [1, 2]

        def broken_factory() -> Iterator[int]:
            raise OSError("could not start")

        with pytest.raises(OSError, match="could not start"):
            async for _ in w.stream(broken_factory):
                pass
        assert w.pending == 0


# == VadBatcher ==============================================================================================


class ContentVAD:
    """Fake VAD: a row's probability is its first sample; records batch sizes and counts per stream."""

    sample_rate = 16000
    sample_rates = (16000,)
    chunk_samples = 512
    capabilities = Capabilities(batched=True)

    def __init__(self, delay_s: float = 0.005, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.batch_sizes: list[int] = []
        self.threads: set[int] = set()

    def new_state(self, sample_rate: int = 16000) -> dict[str, int]:
        return {"chunks": 0}

    def speech_probs(self, states: list[dict[str, int]], chunks: np.ndarray) -> np.ndarray:
        assert chunks.shape == (len(states), self.chunk_samples or chunks.shape[1])
        assert chunks.dtype == np.float32
        self.threads.add(threading.get_ident())
        self.batch_sizes.append(len(states))
        time.sleep(self.delay_s)  # inference takes time: later requests pile up into the next batch
        if self.fail:
            raise RuntimeError("vad failed")
        for state in states:
            state["chunks"] += 1
        return chunks[:, 0].astype(np.float64)


async def test_vad_batcher_coalesces_concurrent_sessions() -> None:
    vad = ContentVAD()
    batcher = VadBatcher(vad)
    sessions, steps = 12, 6
    states = [vad.new_state() for _ in range(sessions)]

    async def session(i: int) -> list[float]:
        probs = []
        for j in range(steps):
            value = (i * steps + j) / 1000
            probs.append(await batcher.speech_prob(states[i], np.full(512, value, dtype=np.float32)))
            await asyncio.sleep(0.001 * (i % 3))  # sessions are not in lockstep
        return probs

    try:
        results = await asyncio.wait_for(asyncio.gather(*(session(i) for i in range(sessions))), 10.0)
    finally:
        await batcher.close()
    calls = sessions * steps
    for i, probs in enumerate(results):
        expected = [float(np.float32((i * steps + j) / 1000)) for j in range(steps)]
        assert probs == pytest.approx(expected), f"session {i} got another stream's result"
    assert sum(vad.batch_sizes) == calls == batcher.chunks
    assert batcher.batches == len(vad.batch_sizes) < calls
    assert max(vad.batch_sizes) > 1
    assert all(s["chunks"] == steps for s in states), "each stream's state is updated once per chunk"
    assert threading.get_ident() not in vad.threads


async def test_vad_batcher_scores_each_rate_in_its_own_model_call() -> None:
    vad = ContentVAD()
    vad.chunk_samples = None  # rows of 256 (8 kHz) and 512 (16 kHz) samples both arrive
    seen: list[tuple[int, int]] = []
    score = vad.speech_probs

    def speech_probs(states: list[dict[str, int]], chunks: np.ndarray) -> np.ndarray:
        seen.append(chunks.shape)
        return score(states, chunks)

    vad.speech_probs = speech_probs  # type: ignore[method-assign]
    batcher = VadBatcher(vad)
    try:
        calls = [
            batcher.speech_prob(vad.new_state(), np.full(256 * (1 + i % 2), i / 10, np.float32))
            for i in range(6)
        ]
        probs = await asyncio.wait_for(asyncio.gather(*calls), 5.0)
    finally:
        await batcher.close()
    assert probs == pytest.approx([i / 10 for i in range(6)])
    assert sorted(seen) == [(3, 256), (3, 512)], "one call per rate, each with its three streams"


async def test_vad_batcher_failure_reaches_every_waiter_and_batcher_lives_on() -> None:
    vad = ContentVAD(fail=True)
    batcher = VadBatcher(vad)
    try:
        calls = [batcher.speech_prob(vad.new_state(), np.zeros(512, np.float32)) for _ in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)
        assert all(isinstance(r, RuntimeError) for r in results)
        vad.fail = False
        prob = await asyncio.wait_for(
            batcher.speech_prob(vad.new_state(), np.full(512, 0.5, np.float32)), 5.0
        )
        assert prob == pytest.approx(0.5)
    finally:
        await batcher.close()


# == InputBacklog, InputDecoder, WireEncoder =================================================================


def test_input_backlog_is_bounded_and_counts_what_it_drops() -> None:
    backlog = InputBacklog(max_seconds=0.5)  # 16 kHz PCM16: 16000 bytes
    assert backlog.max_bytes == 16000
    assert backlog.write(b"\x01" * 10000) == 0
    assert backlog.seconds == pytest.approx(10000 / 32000)
    assert backlog.write(b"\x02" * 10000) == 4000
    assert backlog.seconds == pytest.approx(0.5)
    assert backlog.write(b"\x03" * 3200) == 3200
    assert backlog.dropped_bytes == 7200
    assert backlog.dropped_seconds == pytest.approx(7200 / 32000)
    assert backlog.read(1024) == b"\x01" * 1024
    assert backlog.write(b"\x04" * 2000) == 2000 - 1024
    assert backlog.dropped_seconds == pytest.approx((7200 + 976) / 32000)
    data = backlog.read(16000)
    assert data == b"\x01" * (10000 - 1024) + b"\x02" * 6000 + b"\x04" * 1024
    assert backlog.read(2) is None and backlog.seconds == 0


def test_input_backlog_read_waits_for_a_whole_chunk() -> None:
    backlog = InputBacklog(max_seconds=1.0)
    backlog.write(b"\x00" * 1000)
    assert backlog.read(1024) is None
    backlog.write(b"\x00" * 24)
    assert backlog.read(1024) == b"\x00" * 1024


def _peak_hz(pcm: bytes, rate: int) -> float:
    x = pcm16_to_float(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_input_decoder_mulaw_8k_to_pcm_16k() -> None:
    mulaw = mulaw_encode(tone(2000, rate=8000, freq=440))  # 2 s, 16000 bytes
    decoder = InputDecoder(8000, "mulaw")
    outputs = [decoder.decode(mulaw[i : i + 160]) for i in range(0, len(mulaw), 160)]  # 20 ms packets
    out = b"".join(outputs)
    assert all(len(o) % 2 == 0 for o in outputs)
    expected = 2 * 16000 * 2  # 2 s of 16 kHz PCM16
    # Streaming resampling holds back only the filter's delay (no flush on a live input) ...
    assert expected - 100 * 32 <= len(out) <= expected
    # ... and that delay stays bounded: the output never lags the input by more than ~150 ms.
    lag_ms = max(4 * 160 * (k + 1) - sum(map(len, outputs[: k + 1])) for k in range(len(outputs))) / 32
    assert lag_ms < 150
    assert abs(_peak_hz(out[3200:], 16000) - 440) < 5


def test_input_decoder_pcm_16k_passes_through() -> None:
    pcm = tone(100)
    assert InputDecoder(16000, "pcm_s16le").decode(pcm) == pcm


@pytest.mark.parametrize("encoding,frame_len", [("pcm_s16le", 320), ("mulaw", 160)])
def test_wire_encoder_emits_whole_20ms_frames_at_8k(encoding: str, frame_len: int) -> None:
    enc = WireEncoder(16000, 8000, encoding)
    pcm = tone(1010, rate=16000)  # 1.01 s: the last frame is partial
    frames: list[bytes] = []
    for i in range(0, len(pcm), 1234):  # odd-sized chunks, splitting samples
        frames += enc.encode(pcm[i : i + 1234])
    tail = enc.flush()
    assert all(len(f) == frame_len for f in frames + tail)
    assert len(frames + tail) == 51  # 1010 ms -> 50.5 frames, the last padded
    assert len(tail) >= 1


def test_wire_encoder_flush_pads_the_last_frame_with_silence() -> None:
    enc = WireEncoder(8000, 8000, "pcm_s16le")
    pcm = tone(20, rate=8000) * 2 + tone(5, rate=8000)  # 2 frames + 40 samples
    frames = enc.encode(pcm)
    assert frames == [pcm[:320], pcm[320:640]]
    tail = enc.flush()
    assert tail == [pcm[640:] + b"\x00" * (320 - 80)]
    assert enc.flush() == []
    mu = WireEncoder(8000, 8000, "mulaw")
    assert mu.encode(pcm[:320]) == [mulaw_encode(pcm[:320])]
    last = mu.flush()
    assert last == [] and mu.encode(tone(5, rate=8000)) == []
    padded = mu.flush()[0]
    assert len(padded) == 160 and padded[40:] == mulaw_encode(b"\x00" * 240)


# == Response ================================================================================================


def hand_built_response() -> Response:
    """Two clauses: 'Hello there,' over 0-1000 ms and 'how are you today?' over 1000-3000 ms."""
    r = Response("turn_1")
    r.generated = "Hello there, how are you today?"
    r.clauses = ["Hello there,", "how are you today?"]
    r.segments = {0: Segment("Hello there,", 0.0, 1000.0), 1: Segment("how are you today?", 1000.0, 2000.0)}
    r.audio_ms = 3000.0
    return r


@pytest.mark.parametrize(
    "played,heard",
    [
        (0, ""),
        (200, ""),  # 'Hello' is 5 of 12 characters: not finished at 1/5
        (500, "Hello"),
        (999, "Hello"),
        (1000, "Hello there,"),
        (2000, "Hello there, how are"),  # half of 18 characters: 'how are' finished, 'you' did not
        (2999, "Hello there, how are you"),
        (3000, "Hello there, how are you today?"),
        (10_000, "Hello there, how are you today?"),
    ],
)
def test_response_heard_text(played: float, heard: str) -> None:
    assert hand_built_response().heard_text(played) == heard


@pytest.mark.parametrize(
    "played,unheard,before",
    [
        (0, "Hello there, how are you today?", ""),
        (500, "Hello there, how are you today?", ""),
        (1000, "how are you today?", "Hello there,"),
        (2500, "how are you today?", "Hello there,"),
        (3000, "", "Hello there, how are you today?"),
    ],
)
def test_response_unheard_text_and_heard_before(played: float, unheard: str, before: str) -> None:
    r = hand_built_response()
    assert r.unheard_text(played) == unheard
    assert r.heard_before(played) == before


def test_response_unheard_text_includes_text_not_yet_synthesized() -> None:
    r = hand_built_response()
    r.generated += " I hope well."  # the LLM ran ahead of TTS: no clause or segment for it yet
    assert r.unheard_text(1500) == "how are you today? I hope well."
    assert r.unheard_text(3000) == "I hope well."


def test_response_heard_prefix_of_a_resumed_answer() -> None:
    r = hand_built_response()
    r.heard_prefix = "Well."
    assert r.heard_text(0) == "Well."
    assert r.heard_text(1000) == "Well. Hello there,"
    assert r.heard_before(1500) == "Well. Hello there,"
    assert r.full_text() == "Well. Hello there, how are you today?"


def test_response_add_audio_builds_contiguous_segments() -> None:
    r = Response("t")
    r.add_audio(0, "One two.", 300)
    r.add_audio(0, "One two.", 200)
    r.add_audio(1, "Three.", 250)
    assert r.segments[0] == Segment("One two.", 0.0, 500.0)
    assert r.segments[1] == Segment("Three.", 500.0, 250.0)
    assert r.audio_ms == 750.0


# -- the response stages with a fake TTS ----------------------------------------------------------------------


class WordTTS:
    """Fake TTS: ``ms_per_word`` of a sine tone for each word, one chunk per word."""

    capabilities = Capabilities(streaming=True)
    sample_rate = 16000

    def __init__(self, ms_per_word: int = 100) -> None:
        self.ms_per_word = ms_per_word
        self.texts: list[str] = []

    def voices(self) -> list[Voice]:
        return [Voice("fake", "fake", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        self.texts.append(text)
        for _ in text.split():
            yield np.frombuffer(tone(self.ms_per_word), dtype=np.int16)


async def run_response_stages(text: str) -> tuple[Response, WordTTS]:
    """LLM deltas -> ClauseAggregator -> TextNormalizer -> TTSStage, the sink recording audio as the session does."""
    response = Response("turn")
    tts = WordTTS()
    box = Outbox()
    pacer = OutputPacer(box, lead_ms=10_000)  # never holds TTS back; never started, so releases nothing
    tts_worker = EngineWorker("resp-tts")

    async def source() -> AsyncIterator[Frame]:
        for word in text.split(" "):
            delta = word if not response.generated else " " + word
            response.generated += delta
            yield LLMTextDelta(response.id, delta)
        response.llm_done = True
        yield EndOfResponse(response.id)

    async def sink(frame: Frame) -> None:
        if isinstance(frame, TTSAudio):
            response.add_audio(
                frame.clause_index, frame.display, len(frame.pcm) / 2 / frame.sample_rate * 1000
            )

    stages = [
        ClauseAggregator(response, eager_first_words=6),
        TextNormalizer(),
        TTSStage(response, tts_worker, tts, lambda _index: pacer.wait_for_room(), None),
    ]
    try:
        await asyncio.wait_for(Chain(source(), stages, sink).run(), 5.0)
    finally:
        tts_worker.shutdown()
    return response, tts


async def test_response_stages_record_segments_per_clause() -> None:
    response, tts = await run_response_stages("Sure thing. It costs $5 today, and more tomorrow.")
    assert response.clauses == ["Sure thing.", "It costs $5 today,", "and more tomorrow."]
    assert tts.texts == ["Sure thing.", "It costs five dollars today,", "and more tomorrow."]
    assert [s.display for _, s in sorted(response.segments.items())] == response.clauses
    # Durations follow the spoken words (5 words for "It costs five dollars today,").
    assert [s.ms for _, s in sorted(response.segments.items())] == [200.0, 500.0, 300.0]
    assert response.heard_text(450) == "Sure thing. It costs"  # 9 of 18 characters
    assert response.unheard_text(450) == "It costs $5 today, and more tomorrow."


async def test_response_unheard_text_with_a_clause_that_speaks_as_nothing() -> None:
    response, tts = await run_response_stages("Sure!\n\n---\nFirst item here, then more.")
    assert response.clauses == ["Sure!", "---", "First item here,", "then more."]
    assert tts.texts == ["Sure!", "First item here,", "then more."]  # '---' has nothing to say
    segments = [s.display for _, s in sorted(response.segments.items())]
    assert segments == ["Sure!", "First item here,", "then more."]
    # Cut off during 'then more.' (audio 0-100 'Sure!', 100-400 'First item here,', 400-600 'then more.').
    assert response.heard_before(450) == "Sure! First item here,"
    assert response.unheard_text(450) == "then more.", "a resumed answer would repeat a heard clause"
