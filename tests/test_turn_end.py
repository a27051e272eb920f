"""Semantic end of turn: a pause mid-sentence does not end the caller's turn; a finished sentence does.

The words check and the detector's decided waits are unit-tested; Smart Turn runs on real recordings; and a
sentence spoken with a 500 ms pause at its comma goes through the real server as one turn, answered once.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from gateway.client import VoiceClient
from pipeline.audio import load_audio
from pipeline.turn_judge import judge_pause
from pipeline.turn_words import unfinished_reason
from pipeline.turns import CHUNK_MS, TurnDetector
from tests.speech import piper_pcm, wer

UNFINISHED = [
    "When I get home from work tonight,",
    "When I get home from work tonight.",  # Whisper often writes a full stop at the pause
    "If the printer runs out of paper again",
    "I would like to order a pizza with",
    "My sister and",
    "Could you remind me to...",
    "I was wondering if you could",
    "Although the train was late.",
    "So I went to the",
    "Um, I think I'll have the, um",
]
FINISHED = [
    "When does the pharmacy close?",
    "Where are you from?",
    "Yes, I do.",
    "I think so.",
    "After lunch.",
    "Because I'm hungry.",
    "When I get home, I'll call you.",
    "Unless it rains this afternoon we will have lunch in the park.",
    "Turn on the lights in the kitchen.",
    "My order number is 4572.",
    "",
]


@pytest.mark.parametrize("text", UNFINISHED)
def test_words_that_cannot_end_a_sentence_mean_unfinished(text: str) -> None:
    assert unfinished_reason(text) is not None


@pytest.mark.parametrize("text", FINISHED)
def test_whole_sentences_and_short_answers_can_end_the_turn(text: str) -> None:
    assert unfinished_reason(text) is None


def test_the_sound_can_hold_a_statement_but_never_a_question() -> None:
    assert judge_pause("And so my fellow Americans ask", 0.01, 0.1) == (False, "sounds unfinished (0.01)")
    assert judge_pause("What time is it?", 0.01, 0.1) == (True, "finished")
    assert judge_pause("Thanks, that helps.", 0.9, 0.1) == (True, "finished")
    assert judge_pause("I need a taxi to the", 0.99, 0.1)[0] is False  # the words win
    assert judge_pause("Thanks, that helps.", None, 0.1) == (True, "finished")  # no sound model


def _feed(detector: TurnDetector, speech_chunks: int, silence_chunks: int) -> list[str]:
    chunk = b"\x01\x00" * 512
    kinds = []
    for prob in [0.9] * speech_chunks + [0.0] * silence_chunks:
        kinds += [e.kind for e in detector.feed(chunk, prob)]
    return kinds


def test_detector_waits_as_long_as_the_pause_was_judged() -> None:
    detector = TurnDetector(end_of_turn_ms=1500)
    assert _feed(detector, 10, 10) == ["started", "interrupt", "paused"]  # 320 ms of silence: undecided
    pause = detector.pause
    assert detector.decide(pause, 300)  # judged finished: 300 ms already passed
    ended = detector.end_if_due()
    assert ended is not None and ended.kind == "ended" and ended.speech_ms == 320

    # Judged unfinished: the caller goes on after 800 ms, and the same utterance continues.
    kinds = _feed(detector, 10, 1)
    assert detector.decide(detector.pause, 1500)
    kinds += _feed(detector, 0, 24) + _feed(detector, 10, 0)
    assert kinds == ["started", "interrupt", "paused", "resumed"]
    assert not detector.decide(pause, 300)  # a stale verdict changes nothing
    # The new pause is undecided: it ends at the detector's own wait (1500 ms, 47 chunks), not sooner.
    assert _feed(detector, 0, 46) == ["paused"]
    assert _feed(detector, 0, 1) == ["ended"]
    assert 47 * CHUNK_MS >= 1500


@pytest.fixture(scope="module")
def smart_turn():  # type: ignore[no-untyped-def]
    from engines.turn_smart import SmartTurn

    return SmartTurn()


def test_smart_turn_hears_a_finished_sentence_and_a_cut_one(smart_turn, shared_audio) -> None:  # type: ignore[no-untyped-def]
    """Real recordings: whole read sentences sound finished; Kennedy stopped at "ask" does not."""
    for name in ("fleurs-en-003.ogg", "fleurs-en-006.ogg", "fleurs-en-007.ogg"):
        audio = load_audio(str(shared_audio / name), 16000)
        assert smart_turn.complete_prob(audio) > 0.8, name
    jfk = load_audio(str(shared_audio / "jfk.flac"), 16000)
    # "And so my fellow Americans, ask" and the first 64 ms of the pause that follows.
    cut = jfk[: int(3.81 * 16000) + 1024]
    assert smart_turn.complete_prob(cut) < 0.1
    assert smart_turn.features(np.zeros(16000, np.float32)).shape == (1, 80, 800)


SPLIT = [
    ("When I get home from work tonight,", "I want to cook something simple."),
    ("If the weather stays nice this weekend,", "we should go hiking by the lake."),
]


@pytest.mark.slow
async def test_a_pause_at_a_comma_is_one_turn_answered_once(server) -> None:  # type: ignore[no-untyped-def]
    """Each sentence is spoken with 500 ms of silence at its comma, like a caller taking a breath."""
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        for n, (first, second) in enumerate(SPLIT, start=1):
            await client.stream(piper_pcm(first))
            await client.silence(0.5)
            await client.stream(piper_pcm(second))
            silence = asyncio.create_task(client.silence(2.5))
            final = await client.wait_for("transcript.final", timeout=30, count=n)
            await client.wait_for("response.audio.done", timeout=60, count=n)
            await silence
            finals = client.received.of("transcript.final")
            assert len(finals) == n, [f["text"] for f in finals]
            assert wer(f"{first} {second}", final["text"]) <= 0.25, final["text"]
            assert len(client.received.of("response.started")) == n
            assert not client.received.of("response.interrupted")


def _turns(finals: list[dict]) -> dict[str, str]:
    """The caller's turns as a client keeps them: a final for a turn already sent replaces its text."""
    return {final["turn_id"]: final["text"] for final in finals}


@pytest.mark.slow
async def test_a_caller_who_goes_on_after_a_long_pause_is_one_turn(server, shared_audio) -> None:  # type: ignore[no-untyped-def]
    """Kennedy pauses about a second after "Americans" and again after "not", and the words before each pause
    look whole. However soon the verdict comes at those pauses, the caller ends with one turn: either the
    pause never ended it, or his next words continued it (``transcript.final`` with ``continues``), before he
    had heard a second of the answer to the first part."""
    audio = load_audio(str(shared_audio / "jfk.flac"), 16000)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    reference = (shared_audio / "jfk.txt").read_text().strip()
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        await client.stream(pcm)
        deadline = time.monotonic() + 90
        # Until the last turn is being answered and the caller has been silent for 2 s: no later speech can
        # still continue it (the answer itself need not be heard out).
        while True:
            finals = client.received.of("transcript.final")
            last = finals[-1]["turn_id"] if finals else None
            answered = any(e["turn_id"] == last for e in client.received.of("response.started"))
            spoke = [
                t for t, e in client.received.events if e["type"] in ("speech.started", "speech.stopped")
            ]
            if answered and client.received.events and time.monotonic() - max(spoke, default=0.0) >= 2.0:
                break
            assert time.monotonic() < deadline, [f["text"] for f in finals]
            await client.silence(0.2)
    turns = _turns(finals)
    assert len(turns) == 1, [(f["text"], f.get("continues")) for f in finals]
    (text,) = turns.values()
    assert wer(reference, text) <= 0.25, text
