"""The pacer is the only clock: a transport that hears what its far end played reports it into the pacer,
which holds releases while too much is unplayed, never stalls for good, and hands the writer a Flush on a
barge-in."""

from __future__ import annotations

import asyncio

from pipeline.outbox import FLUSH, OutAudio, Outbox
from pipeline.pacer import OutputPacer
from tests.test_core_units import Drain, wait_until


async def test_releases_wait_for_reported_playback_and_resume_when_it_comes() -> None:
    box = Outbox(max_audio=200)
    pacer = OutputPacer(box, lead_ms=10_000)  # real time never holds here: only playback reports do
    pacer.follow_playback(max_unplayed_ms=100, stall_s=5.0)
    drain = Drain(box)
    pacer.start()
    try:
        pacer.enqueue("r1", [b"\x00" * 640] * 20, 20)
        await wait_until(lambda: len(drain.frames) == 6)  # 120 ms out: more than 100 unconfirmed
        await asyncio.sleep(0.1)
        assert len(drain.frames) == 6, "the pacer released past the unplayed bound"
        pacer.played(40)
        await wait_until(lambda: len(drain.frames) == 8)
    finally:
        await pacer.close()
        await drain.stop()


async def test_a_far_end_that_stops_reporting_slows_the_call_but_does_not_stall_it() -> None:
    box = Outbox(max_audio=200)
    pacer = OutputPacer(box, lead_ms=10_000)
    pacer.follow_playback(max_unplayed_ms=20, stall_s=0.05)
    drain = Drain(box)
    pacer.start()
    try:
        pacer.enqueue("r1", [b"\x00" * 640] * 5, 20)
        await wait_until(lambda: len(drain.frames) == 5, timeout=2.0)
    finally:
        await pacer.close()
        await drain.stop()


async def test_flush_hands_the_writer_a_flush_first_and_forgets_unplayed_audio() -> None:
    box = Outbox(max_audio=200)
    pacer = OutputPacer(box, lead_ms=10_000)
    pacer.follow_playback(max_unplayed_ms=100, stall_s=5.0)
    pacer.start()
    try:
        pacer.enqueue("r1", [b"\x00" * 640] * 10, 20)
        await wait_until(lambda: box.depth == 6)
        pacer.flush()
        assert box.depth == 0 and await box.get() is FLUSH
        pacer.enqueue("r2", [b"\x01" * 640] * 3, 20)  # nothing unplayed is owed after the flush
        got = [await asyncio.wait_for(box.get(), 1.0) for _ in range(3)]
        assert all(isinstance(item, OutAudio) and item.response_id == "r2" for item in got)
    finally:
        await pacer.close()
