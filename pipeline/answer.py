"""One agent answer in flight: its chain, where its output goes, what was released, and how it ends.

An answer writes its events and wire frames to a *destination*. A live answer writes to the caller's
outbox and pacer. A speculative answer (started while the caller may still go on) writes to a
:class:`HoldBuffer`; when the turn really ends as guessed, :meth:`Answer.commit` replays the buffer
into the live destination and swaps it in. Nothing else needs to know whether an answer is on hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from engines.base import GenerationOptions
from engines.voice_map import voice_language
from pipeline.codec import WireEncoder
from pipeline.conversation import Conversation, Message, TurnRecord
from pipeline.events import (
    Metrics,
    ResponseAudioDone,
    ResponseInterrupted,
    ResponseStarted,
    ResponseTextDelta,
    ResponseTextDone,
    ServerEvent,
)
from pipeline.frames import EndOfResponse, Frame, TTSAudio
from pipeline.outbox import Outbox
from pipeline.pacer import OutputPacer
from pipeline.processor import Chain, Processor
from pipeline.response import ClauseAggregator, Response, TextNormalizer, TTSStage, llm_source
from pipeline.runtime import Runtime
from pipeline.session_config import SessionConfig
from pipeline.text import SentenceBudget

log = logging.getLogger("voxgate.session")

FRAME_MS = 20
# How many of the latest answers the embedded LLM may not copy runs of tokens from (its no_repeat_ngram ban).
EARLIER_ANSWERS_BANNED = 6


class AnswerOwner(Protocol):
    """What an answer needs from its session: the shared parts, and whom to tell how it went."""

    rt: Runtime
    config: SessionConfig
    conversation: Conversation
    pacer: OutputPacer

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def record(self, turn: TurnRecord) -> None:
        """The turn's record changed (storage listens)."""

    def answer_finished(self, answer: Answer) -> None:
        """The caller has heard the whole answer."""

    def guess_dropped(self, answer: Answer) -> None:
        """A held answer failed: it is dropped unseen, and the real end of turn tries again."""

    async def answer_failed(self, answer: Answer, exc: Exception) -> None:
        """A live answer failed: the caller must be told."""


class Destination(Protocol):
    """Where an answer's output goes: the caller, or a buffer while the answer is on hold."""

    async def event(self, event: ServerEvent) -> None: ...

    def audio(self, answer: Answer, frames: list[bytes], last: bool) -> None:
        """Wire frames; ``last`` when the answer's audio is complete."""

    async def text_done(self, answer: Answer) -> None:
        """The LLM finished writing the answer."""

    async def failed(self, answer: Answer, exc: Exception) -> None: ...


class LiveDestination:
    """The caller: events into the outbox, audio into the pacer. One per session, shared by its answers."""

    def __init__(self, outbox: Outbox, pacer: OutputPacer) -> None:
        self.outbox = outbox
        self.pacer = pacer

    async def event(self, event: ServerEvent) -> None:
        await self.outbox.put_event(event)

    def audio(self, answer: Answer, frames: list[bytes], last: bool) -> None:
        self.pacer.enqueue(answer.id, frames, FRAME_MS)
        if last:
            answer.check_audio_done()

    async def text_done(self, answer: Answer) -> None:
        await answer.finish_text()

    async def failed(self, answer: Answer, exc: Exception) -> None:
        await answer.owner.answer_failed(answer, exc)


class HoldBuffer:
    """Keeps what a held answer produces until it is committed (replayed in order) or dropped (never seen)."""

    def __init__(self) -> None:
        self.events: list[ServerEvent] = []
        self.frames: list[bytes] = []
        self.text_done_seen = False

    async def event(self, event: ServerEvent) -> None:
        self.events.append(event)

    def audio(self, answer: Answer, frames: list[bytes], last: bool) -> None:
        self.frames.extend(frames)

    async def text_done(self, answer: Answer) -> None:
        self.text_done_seen = True

    async def failed(self, answer: Answer, exc: Exception) -> None:
        answer.owner.guess_dropped(answer)


class Answer:
    """One response: LLM source -> clause aggregator -> normalizer -> TTS -> wire frames -> destination.

    ``spoken_prefix`` is said first (a resumed answer, or fixed text with ``fixed_text``); ``resumed`` is
    the interrupted response this one picks up. With ``speak`` false the answer is text only (no TTS, no
    audio frames): it ends when the LLM does (the OpenAI Realtime API's ``output_modalities: ["text"]``).
    With ``keep`` false it never enters the history (the Realtime API's out-of-band responses).
    """

    def __init__(
        self,
        owner: AnswerOwner,
        turn: TurnRecord,
        messages: list[Message],
        destination: Destination,
        *,
        speech_end: float | None = None,
        spoken_prefix: str = "",
        resumed: Response | None = None,
        fixed_text: bool = False,
        speak: bool = True,
        keep: bool = True,
    ) -> None:
        rt, config = owner.rt, owner.config
        self.owner = owner
        self.turn = turn
        self.messages = messages  # what the LLM reads (the Realtime API counts them as input tokens)
        self.speak = speak
        self.keep = keep
        self.fixed_text = fixed_text
        self.destination = destination
        self.speech_end = speech_end
        self.task: asyncio.Task[None] | None = None
        self.response = response = Response(turn.turn_id)
        if resumed is not None:
            response.resumed_from = resumed.id
            response.heard_prefix = resumed.heard_before(resumed.acked_ms or 0.0)
        response.llm_done = fixed_text or (
            resumed is not None and (resumed.llm_done or not rt.llm.capabilities.continues_assistant_prefix)
        )
        self._wire = WireEncoder(rt.tts.sample_rate, config.output_rate, config.output_encoding)
        # On hold only the first clause is synthesized ahead; the rest waits for the commit.
        self._live = asyncio.Event()
        if not isinstance(destination, HoldBuffer):
            self._live.set()
        extra = config.sampling()
        if extra.get("no_repeat_ngram"):
            # The ban also covers answers the window no longer shows: a small model that opened three answers
            # with "The answer to this question is" had copied it from one only the full history held.
            extra["earlier_answers"] = owner.conversation.recent_answers(EARLIER_ANSWERS_BANNED)
        options = GenerationOptions(max_tokens=config.max_tokens, temperature=config.temperature, extra=extra)
        # An LLM answer ends at a sentence end within the answer budget; fixed text is said as given.
        budget = None
        if not fixed_text and config.answer_shaped():
            budget = SentenceBudget(config.answer_max_sentences, config.answer_max_words)
        source = llm_source(
            response,
            rt.llm_worker,
            rt.llm,
            messages,
            options,
            self._on_delta,
            self._on_llm_done,
            spoken_prefix,
            budget,
        )
        spoken_in = voice_language(rt.tts, config.voice)  # numbers are said in the voice's language
        stages: list[Processor] = [
            ClauseAggregator(response, config.eager_first_words),
            TextNormalizer(spoken_in),
        ]
        if speak:
            tts = TTSStage(response, rt.tts_worker, rt.tts, self._tts_gate, config.voice, config.speed)
            stages.append(tts)
        self.chain = Chain(source, stages, self._sink)

    @property
    def id(self) -> str:
        return self.response.id

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    def started_event(self) -> ResponseStarted:
        return ResponseStarted(self.id, self.turn.turn_id, self.response.resumed_from)

    def ack(self, played_ms: float) -> None:
        """The client says it has played ``played_ms`` of this answer."""
        self.response.acked_ms = max(self.response.acked_ms or 0.0, float(played_ms))

    def stage_depth(self) -> int:
        return max(self.chain.depths(), default=0)

    async def commit(self, live: Destination) -> None:
        """The turn ended as guessed: everything made on hold reaches the caller, in order, and the rest follows."""
        hold = self.destination
        assert isinstance(hold, HoldBuffer)
        while hold.events:  # more may arrive while we replay; they join this same queue
            await live.event(hold.events.pop(0))
        self.destination = live
        frames, hold.frames = hold.frames, []
        live.audio(self, frames, last=False)
        self._live.set()
        if hold.text_done_seen:
            await live.text_done(self)
        self.check_audio_done()

    async def cancel(self) -> None:
        """Stop generating and synthesizing; the answer counts as finished."""
        self.response.finished.set()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.chain.cancel()

    async def _run(self) -> None:
        try:
            await self.chain.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("response %s failed", self.id)
            await self.destination.failed(self, exc)
        finally:  # what was generated and synthesized counts, cut or not
            usage, response = getattr(self.owner, "usage", None), self.response
            if usage is not None:
                usage.llm_tokens += response.llm_tokens
                usage.tts_chars += response.tts_chars

    # -- the chain's ends -----------------------------------------------------------------------------------

    async def _on_delta(self, delta: str) -> None:
        await self.destination.event(ResponseTextDelta(self.id, delta))

    async def _on_llm_done(self) -> None:
        await self.destination.text_done(self)

    async def _tts_gate(self, clause_index: int) -> None:
        if clause_index > 0:
            await self._live.wait()
        await self.owner.pacer.wait_for_room()

    async def _sink(self, frame: Frame) -> None:
        response = self.response
        if response.finished.is_set():
            return  # cut or dropped: stages still winding down must not add one more frame
        if isinstance(frame, TTSAudio):
            response.add_audio(
                frame.clause_index, frame.display, len(frame.pcm) / 2 / frame.sample_rate * 1000
            )
            frames = self._wire.encode(frame.pcm)
        elif isinstance(frame, EndOfResponse):
            frames = self._wire.flush()
            response.tts_done = True
        else:
            return
        response.wire_ms += len(frames) * FRAME_MS
        self.destination.audio(self, frames, last=isinstance(frame, EndOfResponse))

    async def finish_text(self) -> None:
        """The LLM finished: the whole answer goes into history now (cut later if the caller barges in)."""
        response = self.response
        text = response.full_text()
        self.turn.response_text = text
        if text and self.keep:
            self.owner.conversation.add_answer(response, text)
        self.owner.record(self.turn)
        await self.destination.event(ResponseTextDone(self.id, text))

    # -- a barge-in -----------------------------------------------------------------------------------------

    def stop_at(self, played_estimate_ms: float) -> float:
        """Cut off: how much the caller heard (the client's ack when it sent one, else ``played_estimate_ms``)."""
        response = self.response
        played = response.acked_ms if response.acked_ms is not None else played_estimate_ms
        response.acked_ms = played = min(played, response.audio_ms)
        response.interrupted = True
        return played

    async def report_cut(self, reason: str, played_ms: float) -> None:
        """After :meth:`stop_at` and :meth:`cancel`: the turn's record and the history keep what was heard."""
        response, turn, owner = self.response, self.turn, self.owner
        heard = response.heard_text(played_ms)
        turn.heard_text, turn.interrupted = heard, True
        turn.response_text = response.full_text()
        owner.record(turn)
        if self.keep:
            owner.conversation.record_heard(response, heard)
        owner.rt.metrics.interruptions.labels(reason).inc()
        await self.destination.event(ResponseInterrupted(self.id, round(played_ms), heard, reason))

    # -- release accounting ---------------------------------------------------------------------------------

    def released(self) -> None:
        """The pacer let one of this answer's frames go to the caller."""
        response, turn = self.response, self.turn
        if response.t_first_release is None:
            response.t_first_release = time.monotonic()
            timings = self._timings()
            timings["stt_ms"] = turn.timings.get("stt_ms")
            turn.timings.update(timings)
            for stage, value in timings.items():
                if stage != "stt_ms":  # already observed when the transcription finished
                    self.owner.rt.metrics.observe_ms(stage.removesuffix("_ms"), value)
            event = Metrics(turn.turn_id, self.id, **timings)
            self.owner.spawn(self.destination.event(event))
        self.check_audio_done()

    def _timings(self) -> dict[str, float | None]:
        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 1) if a is not None and b is not None else None

        r = self.response
        return {
            "llm_ttft_ms": ms(r.t_llm_start, r.t_first_token),
            "first_clause_ms": ms(r.t_llm_start, r.t_first_clause),
            "tts_ttfb_ms": ms(r.t_first_tts_request, r.t_first_tts_audio),
            "voice_to_voice_ms": ms(self.speech_end or r.t_created, r.t_first_release),
        }

    def check_audio_done(self) -> None:
        """Once all of a finished answer's audio has left, the caller has heard all of its text."""
        response = self.response
        released = self.owner.pacer.released_ms.get(response.id, 0.0)
        if response.audio_done_sent or not response.tts_done or not response.llm_done:
            return
        if released < response.wire_ms:
            return
        response.audio_done_sent = True
        self.turn.heard_text = response.full_text()
        self.owner.record(self.turn)
        self.owner.spawn(self._finish_audio())

    async def _finish_audio(self) -> None:
        # The last frame left; the caller finishes hearing it lead_ms later, and only then may speak freely.
        response = self.response
        await self.destination.event(ResponseAudioDone(self.id, round(response.audio_ms)))
        await asyncio.sleep(self.owner.pacer.ahead_ms() / 1000)
        self.owner.answer_finished(self)
        response.finished.set()
