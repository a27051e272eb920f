"""Session behaviour end to end over the pipeline core, with small honest fake engines.

Audio is pushed at real-time pace (20 ms chunks) by a "microphone" task: a 440 Hz tone is speech to the fake
VAD (its probability follows the chunk's energy) and digital silence is not. A recorder task drains the
session's outbox the way a transport's writer does, stamping every event and audio frame with its arrival
time. The fake TTS speaks ``ms_per_word`` of tone per word, so what the caller heard is predictable.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from engines.base import Capabilities, GenerationOptions, Transcript, Voice
from pipeline.audio import float_to_pcm16
from pipeline.events import ServerEvent
from pipeline.metrics import LoopLagMonitor
from pipeline.outbox import Flush, OutAudio
from pipeline.runtime import Runtime
from pipeline.session import Session, SessionConfig

# Four clauses of four words; the clause splitter cuts each at its full stop.
ANSWER = (
    "Alpha bravo charlie delta. Echo foxtrot golf hotel. India juliet kilo lima. "
    "Mike november oscar papa. Quebec romeo sierra tango."
)
SHORT_ANSWER = "Alpha bravo charlie delta. Echo foxtrot golf hotel."


# -- fake engines --------------------------------------------------------------------------------------------

ENGINE_THREADS: set[int] = set()  # every thread a fake engine was called on (never the event loop's)


class FakeVAD:
    """Speech probability from the chunk's energy: a tone is speech, silence is not. Can be slow."""

    sample_rate = 16000
    sample_rates = (16000,)
    capabilities = Capabilities(batched=True)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []

    def new_state(self, sample_rate: int = 16000) -> dict[str, int]:
        return {"chunks": 0}

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        ENGINE_THREADS.add(threading.get_ident())
        self.batch_sizes.append(len(states))
        if self.delay_s:
            time.sleep(self.delay_s)
        for state in states:
            state["chunks"] += 1
        rms = np.sqrt(np.mean(chunks.astype(np.float64) ** 2, axis=1))
        return np.clip(rms / 0.02, 0.0, 1.0)


class FakeSTT:
    """Returns the configured ``text`` (settable between turns); records the audio it was given."""

    capabilities = Capabilities()

    def __init__(self, text: str = "what is the weather", delay_s: float = 0.02) -> None:
        self.text = text
        self.delay_s = delay_s
        self.durations_s: list[float] = []

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        ENGINE_THREADS.add(threading.get_ident())
        time.sleep(self.delay_s)
        self.durations_s.append(len(audio) / 16000)
        return Transcript(self.text, duration_s=len(audio) / 16000)


class FakeLLM:
    """Yields the words of ``answer`` with a small sleep between them; records the messages it got.

    With ``continues=True`` it can continue an assistant prefix (``{"prefix": True}`` last message), the way
    llama.cpp does: it goes on after the words the prefix already holds.
    """

    def __init__(self, answer: str = ANSWER, delay_s: float = 0.01, continues: bool = False) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.capabilities = Capabilities(streaming=True, continues_assistant_prefix=continues)
        self.calls: list[list[dict[str, Any]]] = []

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        ENGINE_THREADS.add(threading.get_ident())
        self.calls.append([dict(m) for m in messages])
        words = self.answer.split(" ")
        skip = 0
        if messages[-1].get("prefix"):
            assert self.capabilities.continues_assistant_prefix
            skip = len(messages[-1]["content"].split())
            assert words[:skip] == messages[-1]["content"].split(), "the prefix is not this answer's start"
        for i, word in enumerate(words[skip:], start=skip):
            time.sleep(self.delay_s)
            yield word if i == 0 else " " + word


class FakeTTS:
    """``ms_per_word`` of a sine tone per word, one chunk per word, with a little synthesis time."""

    capabilities = Capabilities(streaming=True)

    def __init__(self, ms_per_word: int = 150, sample_rate: int = 16000, delay_s: float = 0.003) -> None:
        self.ms_per_word = ms_per_word
        self.sample_rate = sample_rate
        self.delay_s = delay_s
        self.texts: list[str] = []

    def voices(self) -> list[Voice]:
        return [Voice("fake", "fake", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        ENGINE_THREADS.add(threading.get_ident())
        self.texts.append(text)
        n = self.sample_rate * self.ms_per_word // 1000
        t = np.arange(n) / self.sample_rate
        word = np.rint(0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
        for _ in text.split():
            time.sleep(self.delay_s)
            yield word


# -- harness -------------------------------------------------------------------------------------------------

CHUNK_S = 0.02
SILENCE = b"\x00" * 640  # 20 ms at 16 kHz
TONE = float_to_pcm16(0.3 * np.sin(2 * np.pi * 440 * np.arange(320) / 16000))  # 20 ms, whole periods


@dataclass
class Rec:
    t: float
    item: dict[str, Any] | OutAudio | Flush  # an event as the client receives it (its wire form)

    @property
    def type(self) -> str:
        if isinstance(self.item, OutAudio | Flush):
            return "audio" if isinstance(self.item, OutAudio) else "flush"
        return self.item["type"]


class Recorder:
    """Drains the outbox like a transport's writer, keeping everything with its arrival time."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.log: list[Rec] = []
        self.ended = False
        self.task = asyncio.create_task(self._run(), name="test-recorder")

    async def _run(self) -> None:
        while (item := await self.session.outbox.get()) is not None:
            self.log.append(Rec(time.monotonic(), item.to_wire() if isinstance(item, ServerEvent) else item))
        self.ended = True

    def events(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [
            r.item
            for r in self.log
            if r.type == type_ and all(r.item.get(k) == v for k, v in match.items())  # type: ignore[union-attr]
        ]

    def index(self, type_: str, **match: Any) -> int:
        for i, r in enumerate(self.log):
            if r.type == type_ and all(r.item.get(k) == v for k, v in match.items()):  # type: ignore[union-attr]
                return i
        raise AssertionError(f"no {type_} {match} in {self.types()}")

    def audio(self, response_id: str | None = None) -> list[Rec]:
        return [r for r in self.log if r.type == "audio" and response_id in (None, r.item.response_id)]

    def audio_ms(self, response_id: str) -> float:
        return sum(r.item.ms for r in self.audio(response_id))  # type: ignore[union-attr]

    def types(self) -> list[str]:
        out: list[str] = []
        for r in self.log:
            if not (r.type == "audio" and out and out[-1] == "audio"):
                out.append(r.type)
        return out

    async def wait(self, type_: str, timeout: float = 8.0, **match: Any) -> dict[str, Any]:
        await wait_until(lambda: self.events(type_, **match), timeout, f"{type_} {match}: {self.types()}")
        return self.events(type_, **match)[0]

    async def wait_audio(self, response_id: str, ms: float, timeout: float = 8.0) -> None:
        await wait_until(lambda: self.audio_ms(response_id) >= ms, timeout, f"{ms} ms of audio")


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


class Mic:
    """Pushes 20 ms chunks at real-time pace: silence, or tone while ``say`` asks for it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._tone_chunks = 0
        self._done = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="test-mic")

    async def _run(self) -> None:
        start, n = time.monotonic(), 0
        while True:
            if self._tone_chunks > 0:
                self.session.push_audio(TONE)
                self._tone_chunks -= 1
                if self._tone_chunks == 0:
                    self._done.set()
            else:
                self.session.push_audio(SILENCE)
            n += 1
            await asyncio.sleep(max(0.0, start + n * CHUNK_S - time.monotonic()))

    async def say(self, ms: int) -> None:
        """Speak (tone) for ``ms`` milliseconds; returns when the last chunk was pushed."""
        self._done.clear()
        self._tone_chunks = ms // 20
        await self._done.wait()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass
class Harness:
    rt: Runtime
    session: Session
    rec: Recorder
    mic: Mic | None

    @property
    def stt(self) -> FakeSTT:
        return self.rt.stt  # type: ignore[return-value]

    @property
    def llm(self) -> FakeLLM:
        return self.rt.llm  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def harness(
    *,
    vad: FakeVAD | None = None,
    stt: FakeSTT | None = None,
    llm: FakeLLM | None = None,
    tts: FakeTTS | None = None,
    mic: bool = True,
    **config: Any,
) -> AsyncIterator[Harness]:
    rt = Runtime(vad=vad or FakeVAD(), stt=stt or FakeSTT(), llm=llm or FakeLLM(), tts=tts or FakeTTS())
    session = Session(rt, SessionConfig(**config))
    await session.start()
    h = Harness(rt, session, Recorder(session), Mic(session) if mic else None)
    try:
        yield h
    finally:
        if h.mic is not None:
            await h.mic.stop()
        await session.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(h.rec.task, 2.0)
        h.rec.task.cancel()
        await rt.close()


def is_word_prefix(prefix: str, text: str) -> bool:
    return text.startswith(prefix) and (len(prefix) == len(text) or text[len(prefix)] == " ")


# -- typed and voice turns -----------------------------------------------------------------------------------


async def test_typed_turn_streams_text_then_paced_audio() -> None:
    async with harness(llm=FakeLLM(SHORT_ANSWER), tts=FakeTTS(ms_per_word=100), mic=False) as h:
        await h.session.submit_text("Say the alphabet")
        started = await h.rec.wait("response.started")
        rid = started["response_id"]
        done = await h.rec.wait("response.audio.done")
        assert done["response_id"] == rid
        assert done["audio_ms"] == 800  # 8 words x 100 ms

        log, idx = h.rec, h.rec.index
        assert log.log[0].type == "session.created"
        final = h.rec.events("transcript.final")[0]
        assert final["text"] == "Say the alphabet" and final["source"] == "text"
        assert started["turn_id"] == final["turn_id"]
        deltas = h.rec.events("response.text.delta", response_id=rid)
        assert "".join(d["delta"] for d in deltas) == SHORT_ANSWER
        assert h.rec.events("response.text.done")[0]["text"] == SHORT_ANSWER
        assert idx("transcript.final") < idx("response.started") < idx("response.text.delta")
        assert idx("response.text.delta") < idx("response.text.done")

        frames = h.rec.audio(rid)
        assert len(frames) == 40 and all(len(r.item.payload) == 640 for r in frames)  # 20 ms at 16 kHz
        assert idx("response.started") < idx("audio")
        assert max(i for i, r in enumerate(log.log) if r.type == "audio") < idx("response.audio.done")
        # Paced: 800 ms of audio takes about 800 ms minus the 200 ms lead to leave.
        spread = frames[-1].t - frames[0].t
        assert 0.5 <= spread < 2.0, f"audio left over {spread:.3f} s"

        metrics = h.rec.events("metrics")[0]
        assert metrics["response_id"] == rid and metrics["turn_id"] == final["turn_id"]
        for key in ("llm_ttft_ms", "tts_ttfb_ms", "voice_to_voice_ms"):
            assert metrics[key] is not None and metrics[key] >= 0, key

        turns = h.session.snapshot()["turns"]
        assert len(turns) == 1
        assert turns[0]["user_text"] == "Say the alphabet" and turns[0]["source"] == "text"
        assert turns[0]["response_id"] == rid
        assert turns[0]["response_text"] == SHORT_ANSWER
        assert turns[0]["heard_text"] == SHORT_ANSWER
        assert not turns[0]["interrupted"]
        assert h.session.history[1:] == [
            {"role": "user", "content": "Say the alphabet"},
            {"role": "assistant", "content": SHORT_ANSWER},
        ]
        assert h.llm.calls[0][-1] == {"role": "user", "content": "Say the alphabet"}


async def test_voice_turn_tone_then_silence() -> None:
    async with harness(stt=FakeSTT("what time is it"), llm=FakeLLM(SHORT_ANSWER), tts=FakeTTS(100)) as h:
        await asyncio.sleep(0.2)
        await h.mic.say(1000)
        final = await h.rec.wait("transcript.final")
        assert final["text"] == "what time is it" and final["source"] == "voice"
        started = await h.rec.wait("response.started")
        await h.rec.wait("response.audio.done", response_id=started["response_id"])

        idx = h.rec.index
        assert (
            idx("speech.started") < idx("speech.stopped") < idx("transcript.final") < idx("response.started")
        )
        assert len(h.rec.events("speech.started")) == 1, "one unbroken tone is one utterance"
        assert not h.rec.events("response.interrupted")
        # The final transcript saw the whole second of speech (plus pre-roll and trailing silence).
        assert 1.0 <= h.stt.durations_s[-1] <= 1.0 + 0.32 + 0.4
        metrics = h.rec.events("metrics")[0]
        assert metrics["voice_to_voice_ms"] is not None and metrics["stt_ms"] is not None
        turns = h.session.snapshot()["turns"]
        assert [t["source"] for t in turns] == ["voice"]
        assert turns[0]["user_text"] == "what time is it" and turns[0]["heard_text"] == SHORT_ANSWER


# -- barge-in ------------------------------------------------------------------------------------------------


async def speak_over_agent(h: Harness, after_ms: float, speech_ms: int) -> str:
    """Start a typed turn, wait until ``after_ms`` of its audio arrived, then speak over it."""
    await h.session.submit_text("Read me the list")
    rid = (await h.rec.wait("response.started"))["response_id"]
    await h.rec.wait_audio(rid, after_ms)
    await h.mic.say(speech_ms)
    return rid


async def test_barge_in_stops_audio_and_keeps_only_what_was_heard() -> None:
    async with harness(stt=FakeSTT("stop please")) as h:
        rid = await speak_over_agent(h, after_ms=1000, speech_ms=500)
        interrupted = await h.rec.wait("response.interrupted")
        await wait_until(lambda: len(h.rec.events("response.started")) == 2, 5, "the next response")
        nxt = h.rec.events("response.started")[1]
        assert len(h.session.turns) == 2 and nxt["turn_id"] == h.session.turns[1].turn_id

        assert interrupted["response_id"] == rid and interrupted["reason"] == "barge_in"
        heard = interrupted["heard_text"]
        assert 1000 <= interrupted["played_ms"] < 3000
        assert heard and heard != ANSWER and is_word_prefix(heard, ANSWER), heard

        # Not one agent audio frame between the interrupt and the next response.
        i_int = h.rec.index("response.interrupted")
        i_next = h.rec.index("response.started", response_id=nxt["response_id"])
        assert [r for r in h.rec.log[i_int:i_next] if r.type == "audio"] == []
        last_old_frame = max(
            i for i, r in enumerate(h.rec.log) if r.type == "audio" and r.item.response_id == rid
        )
        assert last_old_frame < i_int
        # The caller did not hear the rest of the answer: only what was sent counts (with the pacer's lead).
        assert h.rec.audio_ms(rid) < interrupted["played_ms"] + 200 + 40

        assert h.session.history[1:4] == [
            {"role": "user", "content": "Read me the list"},
            {"role": "assistant", "content": heard},
            {"role": "user", "content": "stop please"},
        ]
        turn = h.session.snapshot()["turns"][0]
        assert turn["interrupted"] and turn["heard_text"] == heard and turn["response_text"] == ANSWER
        assert h.rec.events("transcript.final")[-1]["text"] == "stop please"
        await h.rec.wait("response.audio.done", response_id=nxt["response_id"])


async def test_barge_in_played_ms_matches_elapsed_playback() -> None:
    async with harness(stt=FakeSTT("stop please")) as h:
        flushed_at: list[float] = []
        flush = h.session.pacer.flush

        def timed_flush() -> int:
            flushed_at.append(time.monotonic())
            return flush()

        h.session.pacer.flush = timed_flush  # type: ignore[method-assign]
        rid = await speak_over_agent(h, after_ms=1000, speech_ms=500)
        interrupted = await h.rec.wait("response.interrupted")
        first_audio = h.rec.audio(rid)[0].t
        playing_ms = (flushed_at[0] - first_audio) * 1000  # the recorder plays audio the moment it arrives
        assert abs(interrupted["played_ms"] - playing_ms) < 80, (interrupted["played_ms"], round(playing_ms))


async def test_short_burst_over_agent_does_not_interrupt() -> None:
    async with harness(stt=FakeSTT("uh huh")) as h:
        rid = await speak_over_agent(h, after_ms=500, speech_ms=100)
        done = await h.rec.wait("response.audio.done", response_id=rid)
        await asyncio.sleep(0.4)  # time for a (wrong) late turn to show
        assert not h.rec.events("response.interrupted")
        assert len(h.rec.events("response.started")) == 1
        assert len(h.session.turns) == 1
        assert done["audio_ms"] == 20 * 150
        assert h.rec.audio_ms(rid) >= 20 * 150
        assert h.session.history[-1] == {"role": "assistant", "content": ANSWER}


async def test_false_interruption_resumes_from_the_cut_clause() -> None:
    async with harness(stt=FakeSTT("")) as h:  # the interrupting "speech" holds no words
        rid = await speak_over_agent(h, after_ms=1000, speech_ms=500)
        interrupted = await h.rec.wait("response.interrupted")
        resumed = await h.rec.wait("response.started", resumed_from=rid, timeout=5)
        new_id = resumed["response_id"]
        assert new_id != rid and resumed["turn_id"] == h.rec.events("response.started")[0]["turn_id"]
        text_done = await h.rec.wait("response.text.done", response_id=new_id)
        await h.rec.wait("response.audio.done", response_id=new_id)

        heard = interrupted["heard_text"]
        spoken = h.rec.events("response.text.delta", response_id=new_id)[0]["delta"]
        # The resumed answer says again the clause that was cut, and everything after it.
        assert ANSWER.endswith(spoken) and spoken != ANSWER
        before = ANSWER[: len(ANSWER) - len(spoken)].strip()
        assert before == "" or before.endswith("."), "the resumed text starts at a clause boundary"
        assert heard.startswith(before)
        cut_part = heard[len(before) :].strip()
        assert spoken.startswith(cut_part), (heard, spoken)
        assert text_done["text"] == ANSWER
        assert h.rec.audio_ms(new_id) >= len(spoken.split()) * 150

        assert len(h.llm.calls) == 1, "the whole answer was generated: nothing more to ask the LLM"
        assert len(h.session.turns) == 1 and h.session.turns[0].resumed
        assert h.session.history[1:] == [
            {"role": "user", "content": "Read me the list"},
            {"role": "assistant", "content": ANSWER},
        ]


async def test_false_interruption_mid_generation_continues_the_llm_after_its_prefix() -> None:
    llm = FakeLLM(delay_s=0.2, continues=True)  # 4 s to write the answer: still going at the barge-in
    async with harness(stt=FakeSTT(""), llm=llm) as h:
        rid = await speak_over_agent(h, after_ms=800, speech_ms=400)
        interrupted = await h.rec.wait("response.interrupted")
        resumed = await h.rec.wait("response.started", resumed_from=rid, timeout=5)
        text_done = await h.rec.wait("response.text.done", response_id=resumed["response_id"], timeout=8)

        assert not h.rec.events("response.text.done", response_id=rid), (
            "the first answer was cut mid-generation"
        )
        assert len(llm.calls) == 2
        prefix = llm.calls[1][-1]
        assert prefix["role"] == "assistant" and prefix["prefix"] is True
        assert is_word_prefix(prefix["content"], ANSWER) and prefix["content"] != ANSWER
        assert is_word_prefix(interrupted["heard_text"], prefix["content"])
        # Heard part + re-said cut clause + continuation: the whole answer once, nothing lost or repeated.
        assert text_done["text"] == ANSWER
        await h.rec.wait("response.audio.done", response_id=resumed["response_id"], timeout=8)
        assert [m for m in h.session.history if m["role"] == "assistant"] == [
            {"role": "assistant", "content": ANSWER}
        ]


async def test_ack_played_overrides_the_pacer_estimate() -> None:
    async with harness(stt=FakeSTT("stop")) as h:
        await h.session.submit_text("Read me the list")
        rid = (await h.rec.wait("response.started"))["response_id"]
        await h.rec.wait_audio(rid, 1000)
        h.session.ack_played(rid, 700)
        h.session.ack_played(rid, 300)  # acks only move forward
        h.session.ack_played("resp_unknown", 5000)  # ignored
        await h.mic.say(400)
        interrupted = await h.rec.wait("response.interrupted")
        assert interrupted["played_ms"] == 700
        # 'Alpha bravo charlie delta.' played over 0-600 ms; 100 ms into the 600 ms of the next clause.
        assert interrupted["heard_text"] == "Alpha bravo charlie delta. Echo"
        assert h.session.history[2] == {"role": "assistant", "content": "Alpha bravo charlie delta. Echo"}
        await wait_until(lambda: len(h.rec.events("response.started")) == 2, 5, "the next response")


# -- input overrun -------------------------------------------------------------------------------------------


async def test_input_overrun_reports_and_counts_dropped_audio() -> None:
    async with harness(vad=FakeVAD(delay_s=0.3), mic=False, max_input_backlog_s=0.5) as h:
        tone_2s = TONE * 100
        h.session.push_audio(tone_2s)
        error = await h.rec.wait("error", timeout=3)
        assert error["code"] == "input_overrun"
        assert h.session.dropped_input_s == pytest.approx(1.5)
        assert h.session.snapshot()["dropped_input_ms"] == 1500
        assert h.rt.metrics.dropped_input._value.get() == pytest.approx(1.5)
        h.session.push_audio(TONE * 50)  # still overrun: counted, but reported once
        await asyncio.sleep(0.1)
        # Meanwhile the slow VAD may have taken a 32 ms chunk or two, making that much room.
        assert 2.4 <= h.session.dropped_input_s <= 2.5
        assert len(h.rec.events("error")) == 1


# -- close ---------------------------------------------------------------------------------------------------


async def test_close_emits_closed_then_outbox_ends_and_no_task_is_left() -> None:
    before = asyncio.all_tasks()
    async with harness() as h:
        await h.session.submit_text("Read me the list")
        rid = (await h.rec.wait("response.started"))["response_id"]
        await h.rec.wait_audio(rid, 300)  # close in the middle of speaking and listening
        session_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith(h.session.id)]
        assert len(session_tasks) >= 2
        await h.session.close("test_done")
        await asyncio.wait_for(h.rec.task, 2.0)
        assert h.rec.ended
        assert h.rec.log[-1].type == "session.closed" and h.rec.log[-1].item["reason"] == "test_done"
        assert await asyncio.wait_for(h.session.outbox.get(), 0.5) is None
        assert [
            t for t in asyncio.all_tasks() if t.get_name().startswith(h.session.id) and not t.done()
        ] == []
        await asyncio.sleep(0.05)
        mine = {h.rec.task, h.mic.task, asyncio.current_task()}
        leftover = [t for t in asyncio.all_tasks() - before if t not in mine and not t.done()]
        assert [t for t in leftover if t.get_name() != "vad-batcher"] == []
        snap = h.session.snapshot()
        assert not snap["live"] and snap["close_reason"] == "test_done"


# -- event-loop lag ------------------------------------------------------------------------------------------


class LoopCPU:
    """Per 20 ms tick: how late the loop woke (lag) and how much CPU the loop thread itself spent (cpu).

    A late tick with a busy loop thread means work on the loop blocked it; a late tick with an idle loop
    thread means the OS did not schedule the process (a saturated machine), which no code here can fix.
    """

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []
        self.task = asyncio.create_task(self._run(), name="test-loop-cpu")

    async def _run(self) -> None:
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()  # thread_time: the loop thread's CPU
            await asyncio.sleep(0.02)
            self.ticks.append((time.perf_counter() - t0 - 0.02, time.thread_time() - c0))

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_event_loop_lag_stays_low_with_four_sessions_talking() -> None:
    monitor = LoopLagMonitor(interval_s=0.02)
    vad, stt, llm = FakeVAD(), FakeSTT("hello there"), FakeLLM(SHORT_ANSWER)
    tts = FakeTTS(ms_per_word=100, sample_rate=24000)  # the wire encoder resamples on the loop
    rt = Runtime(vad=vad, stt=stt, llm=llm, tts=tts)
    sessions = [Session(rt, SessionConfig()) for _ in range(4)]
    recs: list[Recorder] = []
    mics: list[Mic] = []
    cpu: LoopCPU | None = None
    try:
        for s in sessions:
            await s.start()
            recs.append(Recorder(s))
            mics.append(Mic(s))
        monitor.start()
        await asyncio.sleep(0.1)
        monitor.reset()
        cpu = LoopCPU()
        await asyncio.gather(*(m.say(600) for m in mics))
        for rec in recs:
            rid = (await rec.wait("response.started"))["response_id"]
            await rec.wait("response.audio.done", response_id=rid)
        assert all(abs(len(r.audio()) - 40) <= 1 for r in recs)  # 800 ms in 20 ms frames
        assert max(vad.batch_sizes) > 1, "the four sessions' VAD chunks were batched"
        assert len(stt.durations_s) >= 4 and len(llm.calls) == 4
        assert threading.get_ident() not in ENGINE_THREADS, "an engine ran on the event loop thread"
        worst_cpu = max(c for _, c in cpu.ticks)
        assert worst_cpu < 0.025, f"the loop thread was busy {1000 * worst_cpu:.1f} ms in one 20 ms tick"
        late = [(round(1000 * lag), round(1000 * c, 1)) for lag, c in cpu.ticks if lag >= 0.025]
        descheduled = bool(late) and all(cpu_ms < 10 for _, cpu_ms in late)
        assert monitor.max_lag_s < 0.05 or descheduled, (
            f"event loop lagged {1000 * monitor.max_lag_s:.1f} ms; late ticks (lag ms, loop cpu ms): {late}"
        )
    finally:
        if cpu is not None:
            await cpu.stop()
        await monitor.stop()
        for m in mics:
            await m.stop()
        for s in sessions:
            await s.close()
        await rt.close()


async def _ask_in_turn(h: Any, questions: int) -> None:
    """Type ``question 0``.. ``question N-1``, each after the previous answer has been heard in full."""
    for n in range(questions):
        await h.session.submit_text(f"question {n}")
        done = n + 1
        await wait_until(lambda: len(h.rec.events("response.audio.done")) >= done, 8.0, "answer {n}")  # noqa: B023
        await asyncio.sleep(0.4)  # let the answer finish playing, or the next turn interrupts it


async def test_llm_sees_a_bounded_window_of_history() -> None:
    llm = FakeLLM("Fine.", delay_s=0.0)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=4) as h:
        await _ask_in_turn(h, 5)
        last_call = llm.calls[-1]
    assert last_call[0]["role"] == "system"
    # The 4 most recent messages, less a leading assistant message: a window opens with the user.
    assert [m["content"] for m in last_call[1:]] == ["question 3", "Fine.", "question 4"]
    assert len(h.session.history) == 1 + 2 * 5  # the full history is kept for the record
    # The embedded LLM's copy ban is given the answers the window no longer shows, too.
    assert h.session.conversation.recent_answers(3) == ["Fine."] * 3
    assert h.session.conversation.recent_answers(0) == []


async def test_history_window_slides_in_steps_so_the_prompt_prefix_holds() -> None:
    llm = FakeLLM("Fine.", delay_s=0.0)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=8) as h:
        await _ask_in_turn(h, 8)
    windows = [call[1:] for call in llm.calls]
    assert all(len(w) <= 8 for w in windows)
    # The first message after the instructions (the cached prefix) changes every other turn, not every turn.
    firsts = [w[0]["content"] for w in windows]
    assert firsts == ["question 0"] * 4 + ["question 2"] * 2 + ["question 4"] * 2, firsts
    assert all(w[-1]["content"] == f"question {n}" for n, w in enumerate(windows))


async def test_vad_update_during_an_utterance_applies_to_the_next_one() -> None:
    async with harness(mic=False) as h:
        h.session.update(vad={"semantic_turns": False})  # no utterance is open: applies at once
        h.session.listener.detector.in_speech = True  # an utterance is open
        h.session.update(vad={"end_of_turn_ms": 900})
        assert h.session.listener.detector.end_of_turn_ms == 300
        h.session.listener.detector.in_speech = False
        h.session.listener.apply_vad_change()
        assert h.session.listener.detector.end_of_turn_ms == 900
