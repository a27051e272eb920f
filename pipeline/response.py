"""One agent response: its record, and the stages that turn LLM text into paced speech.

LLM source -> ClauseAggregator -> TextNormalizer -> TTSStage -> (session sink: wire encoding + pacer).
Aggregation runs before normalization so that "$3.50" or "3:30 pm" split across LLM tokens is normalized
whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engines.base import GenerationOptions, LLMEngine, TTSEngine
from pipeline.audio import trim_leading_silence
from pipeline.frames import EndOfResponse, Frame, LLMTextDelta, SpeakText, TTSAudio
from pipeline.normalize import normalize_for_speech
from pipeline.processor import Processor
from pipeline.text import ClauseSplitter, SentenceBudget, cut_at_heard
from pipeline.workers import EngineWorker


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass
class Segment:
    """A clause as the caller receives it: where it starts in the response's audio and how long it is."""

    display: str
    start_ms: float
    ms: float = 0.0


@dataclass
class Response:
    """What the agent said (or was saying) in one response, and when each part happened."""

    turn_id: str
    id: str = field(default_factory=lambda: new_id("resp"))
    generated: str = ""  # what the LLM wrote and the answer says (trimmed to a sentence end)
    dropped_text: str = ""  # what the LLM wrote after the last sentence said (not said, shown or kept)
    heard_prefix: str = ""  # what an interrupted earlier part of this answer already said (resumed answers)
    llm_done: bool = False
    tts_done: bool = False
    clauses: list[str] = field(default_factory=list)
    segments: dict[int, Segment] = field(default_factory=dict)
    audio_ms: float = 0.0
    wire_ms: float = 0.0  # audio handed to the pacer, in whole wire frames
    llm_tokens: int = 0  # deltas the LLM streamed (usage)
    tts_chars: int = 0  # characters sent to TTS (usage)
    acked_ms: float | None = None
    interrupted: bool = False
    audio_done_sent: bool = False
    resumed_from: str | None = None
    history_entry: dict[str, Any] | None = None  # the assistant message this response put in the history
    t_created: float = field(default_factory=time.monotonic)
    t_llm_start: float | None = None
    t_first_token: float | None = None
    t_first_clause: float | None = None
    t_first_tts_request: float | None = None
    t_first_tts_audio: float | None = None
    t_first_release: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # heard to the end, cut, or dropped

    def add_audio(self, clause_index: int, display: str, ms: float) -> None:
        segment = self.segments.get(clause_index)
        if segment is None:
            segment = self.segments[clause_index] = Segment(display, self.audio_ms)
        segment.ms += ms
        self.audio_ms += ms

    def heard_text(self, played_ms: float) -> str:
        """The text the caller heard after ``played_ms`` of this response's audio, cut at a word."""
        parts: list[str] = []
        for index in sorted(self.segments):
            segment = self.segments[index]
            if played_ms >= segment.start_ms + segment.ms:
                parts.append(segment.display)
                continue
            if played_ms > segment.start_ms and segment.ms > 0:
                partial = cut_at_heard(segment.display, (played_ms - segment.start_ms) / segment.ms)
                if partial:
                    parts.append(partial)
            break
        return " ".join([self.heard_prefix, *parts]).strip()

    def unheard_text(self, played_ms: float) -> str:
        """From the clause the caller was cut off in, to the end of what the LLM wrote (for resuming)."""
        cut = len(self.clauses)
        for index in sorted(self.segments):
            segment = self.segments[index]
            if played_ms < segment.start_ms + segment.ms:
                cut = index
                break
        heard_prefix = " ".join(self.clauses[:cut])
        everything = " ".join(self.generated.split())
        return everything[len(heard_prefix) :].strip()

    def heard_before(self, played_ms: float) -> str:
        """Whole clauses heard before the one the caller was cut off in (a resumed answer starts after them)."""
        done = [s.display for _, s in sorted(self.segments.items()) if played_ms >= s.start_ms + s.ms]
        return " ".join([self.heard_prefix, *done]).strip()

    def full_text(self) -> str:
        return " ".join([self.heard_prefix, *self.generated.split()]).strip()


async def llm_source(
    response: Response,
    worker: EngineWorker,
    llm: LLMEngine,
    messages: list[dict[str, Any]],
    options: GenerationOptions,
    on_delta: Callable[[str], Awaitable[None]],
    on_done: Callable[[], Awaitable[None]],
    spoken_prefix: str = "",
    budget: SentenceBudget | None = None,
) -> AsyncIterator[Frame]:
    """Text deltas for a response: ``spoken_prefix`` first (a resumed answer), then the LLM's stream.

    With a prefix and an engine that can continue an assistant message, the LLM picks up where the
    prefix ends; ``response.llm_done`` set beforehand means nothing more is to be generated.

    With a ``budget`` only what it lets through is said, shown and kept (``response.generated``): the
    answer ends at a sentence end, and generation stops once the budget is spent. What it held back and
    dropped (an unfinished last sentence) is in ``response.dropped_text``.
    """
    if spoken_prefix:
        response.generated = spoken_prefix
        await on_delta(spoken_prefix)
        yield LLMTextDelta(response.id, spoken_prefix)
    if budget is not None:
        budget.seed(" ".join([response.heard_prefix, spoken_prefix]).strip())
        if spoken_prefix and budget.at_sentence_end:
            yield LLMTextDelta(response.id, " ")  # the prefix's last sentence is complete: say it now
    if not response.llm_done and not (budget is not None and budget.done):
        response.t_llm_start = time.monotonic()
        iterator = lambda: llm.stream_chat(messages, options)  # noqa: E731
        async with contextlib.aclosing(worker.stream(iterator)) as stream:
            async for delta in stream:
                if not delta:
                    continue
                response.llm_tokens += 1
                if response.t_first_token is None:
                    response.t_first_token = time.monotonic()
                said = budget.push(delta) if budget is not None else delta
                if said:
                    response.generated += said
                    await on_delta(said)
                    yield LLMTextDelta(response.id, said)
                if budget is not None and budget.at_sentence_end:
                    # The whitespace after a sentence is held with the next one; the clause aggregator needs
                    # it to cut the sentence now, not once the next one is let through. (A frame only:
                    # ``generated`` and the caller's deltas stay exactly what was let through.)
                    yield LLMTextDelta(response.id, " ")
                if budget is not None and budget.done:
                    break  # leaving the stream stops the engine
        if budget is not None:
            rest = budget.finish()
            response.dropped_text = budget.dropped
            if rest:
                response.generated += rest
                await on_delta(rest)
                yield LLMTextDelta(response.id, rest)
    response.llm_done = True
    await on_done()
    yield EndOfResponse(response.id)


class ClauseAggregator(Processor):
    """Collects LLM deltas into speakable clauses (the first one early, so speech starts soon)."""

    name = "clause-aggregator"

    def __init__(self, response: Response, eager_first_words: int | None = None) -> None:
        self.response = response
        self.splitter = ClauseSplitter(eager_first_words=eager_first_words)

    def _emit(self, clause: str) -> SpeakText:
        if self.response.t_first_clause is None:
            self.response.t_first_clause = time.monotonic()
        self.response.clauses.append(clause)
        return SpeakText(self.response.id, clause, clause, len(self.response.clauses) - 1)

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, LLMTextDelta):
            for clause in self.splitter.push(frame.text):
                yield self._emit(clause)
        elif isinstance(frame, EndOfResponse):
            rest = self.splitter.flush()
            if rest:
                yield self._emit(rest)
            yield frame
        else:
            yield frame


class TextNormalizer(Processor):
    """Rewrites a clause as it should be spoken (numbers, currencies, times, markdown, emoji) by a voice of
    ``language`` (numbers become English words only for an English voice)."""

    name = "text-normalizer"

    def __init__(self, language: str = "en") -> None:
        self.language = language

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, SpeakText):
            spoken = normalize_for_speech(frame.display, self.language)
            if spoken:
                yield SpeakText(frame.response_id, spoken, frame.display, frame.clause_index)
        else:
            yield frame


class TTSStage(Processor):
    """Synthesizes clause after clause, each only once ``gate`` allows (the caller's buffer has room)."""

    name = "tts"

    def __init__(
        self,
        response: Response,
        worker: EngineWorker,
        tts: TTSEngine,
        gate: Callable[[int], Awaitable[None]],
        voice: str | None,
        speed: float = 1.0,
    ):
        self.response = response
        self.worker = worker
        self.tts = tts
        self.gate = gate  # waits until this clause may be synthesized (pacer room, hold released)
        self.voice = voice
        self.speed = speed

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if not isinstance(frame, SpeakText):
            yield frame
            return
        await self.gate(frame.clause_index)
        if self.response.t_first_tts_request is None:
            self.response.t_first_tts_request = time.monotonic()
        index = (
            frame.clause_index
        )  # the aggregator's numbering: skipped (unspeakable) clauses keep their place
        # The speed only when one is set: stand-in engines (tests, benches) take (text, voice).
        args = (frame.text, self.voice) if self.speed == 1.0 else (frame.text, self.voice, self.speed)
        self.response.tts_chars += len(frame.text)
        iterator = lambda: self.tts.synthesize(*args)  # noqa: E731
        async for chunk in self.worker.stream(iterator, buffer=2):
            if self.response.t_first_tts_audio is None:
                self.response.t_first_tts_audio = time.monotonic()
                # The voice's lead-in silence (Piper: 30-50 ms) would be dead air the caller waits through
                # before the answer; later sentences keep theirs, it is the pause between them.
                chunk = trim_leading_silence(chunk, self.tts.sample_rate)
            yield TTSAudio(self.response.id, chunk.tobytes(), self.tts.sample_rate, index, frame.display)
