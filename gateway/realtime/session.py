"""A voxgate session that speaks the Realtime API's turn model.

It is an ordinary :class:`~pipeline.session.Session` (stored turns, metrics, barge-in, recordings); this
subclass adds what the Realtime API has and ``/v1/voice`` does not: manual turns (an input buffer the client
commits), turns left unanswered until ``response.create``, speech cancelling a response only when
``interrupt_response`` says so, conversation items added by the client, and where in the caller's audio
speech started and stopped. It reports through :class:`Note` events that the translator
(:mod:`gateway.realtime.translate`) turns into the Realtime API's events, in order with everything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.realtime.formats import LISTEN_RATE
from gateway.realtime.schema import RealtimeError
from pipeline.conversation import TurnRecord
from pipeline.events import ServerEvent, SpeechStarted, SpeechStopped
from pipeline.response import new_id
from pipeline.session import Session
from pipeline.turns import CHUNK_MS, TurnDetector


@dataclass(frozen=True, slots=True)
class Note(ServerEvent):
    """Something only the Realtime translator reads (never on the wire as is): ``kind`` and its data."""

    type: ClassVar[str] = "realtime.note"
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


def _ms(pcm_bytes: int) -> float:
    return pcm_bytes / 2 / LISTEN_RATE * 1000


class RealtimeSession(Session):
    """A session driven by Realtime client events (see the module docstring)."""

    manual_turns = False  # turn_detection null: no VAD turns; the client commits the input buffer
    interrupt_response = True  # caller speech cancels the response (server_vad's interrupt_response)
    respond_with_tools = False  # a turn's response is started by ``responder`` (it may call a tool)
    idle_timeout_ms: int | None = None  # server_vad's idle_timeout_ms: silence after an answer prompts one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The Realtime API's conversation items are final once created: a turn is never continued (replaced).
        self.config.vad.continuation_ms = 0
        self.input_ms = 0.0  # caller audio received so far (the Realtime API's audio_start/end_ms clock)
        self.buffer = bytearray()  # manual turns: the input audio buffer, 16 kHz PCM16
        self.max_buffer_bytes = int(self.config.max_input_backlog_s * LISTEN_RATE) * 2
        self.responder: Callable[[], Awaitable[None]] | None = None  # the Realtime response.create path
        self.calls: dict[str, str] = {}  # call_id -> the function the LLM called
        self.on_idle: Callable[[int, int], Awaitable[None]] | None = None  # the idle timeout's response
        self._idle: asyncio.Task[None] | None = None

    # -- caller audio -----------------------------------------------------------------------------------------

    def push_audio(self, data: bytes) -> None:
        """16 kHz PCM16 (the transport converted it): to the VAD, or into the buffer for a manual commit."""
        self.input_ms += _ms(len(data))
        if not self.manual_turns:
            super().push_audio(data)
            return
        self.last_activity = time.monotonic()
        if len(self.buffer) + len(data) > self.max_buffer_bytes:
            raise RealtimeError(
                "input_audio_buffer_overflow",
                f"the input audio buffer holds at most {self.config.max_input_backlog_s:g} s; commit or clear it",
            )
        self.buffer += data

    def _vad_position_ms(self) -> float:
        """How far into the caller's audio the VAD has got (audio still waiting for it is not counted)."""
        return max(0.0, self.input_ms - self.input_backlog_s * 1000)

    async def emit(self, event: ServerEvent) -> None:
        # Speech events get their place in the caller's audio now, while the VAD is there.
        if isinstance(event, SpeechStarted):
            self.disarm_idle()
            start = self._vad_position_ms() - self.listener.detector.speech_ms
            event = Note("speech_started", {"audio_start_ms": round(max(0.0, start))})
        elif isinstance(event, SpeechStopped):
            end = self._vad_position_ms() - CHUNK_MS
            event = Note("speech_stopped", {"audio_end_ms": round(max(0.0, end))})
        await super().emit(event)

    async def on_interrupt(self) -> None:
        if self.interrupt_response:
            await super().on_interrupt()

    async def on_turn_end(self, audio: bytes) -> None:
        turns = len(self.turns)
        await super().on_turn_end(audio)
        if len(self.turns) == turns:
            # No turn came of it (no words, or speech too short over the agent): its item is dropped.
            await self.emit(Note("utterance_dropped"))
        elif self.respond_with_tools and self.responder is not None:
            self.spawn(self.responder())  # not awaited here: the VAD loop must go on (barge-in)

    # -- idle_timeout_ms ------------------------------------------------------------------------------------

    def arm_idle(self) -> None:
        """A response finished (its audio all sent, so played but for the client's short buffer): with
        ``idle_timeout_ms``, that much silence from now on triggers a response, as OpenAI's server_vad does."""
        self.disarm_idle()
        if self.idle_timeout_ms and not self.manual_turns and self.on_idle is not None:
            self._idle = self.spawn(self._idle_wait(self.idle_timeout_ms, round(self.input_ms)))

    def disarm_idle(self) -> None:
        if self._idle is not None and self._idle is not asyncio.current_task():
            self._idle.cancel()
        self._idle = None

    async def _idle_wait(self, timeout_ms: int, start_ms: int) -> None:
        await asyncio.sleep(timeout_ms / 1000)
        self._idle = None
        # Speech under way (its turn will be answered) or a response already going: not idle.
        if self.listener.detector.in_speech or self.answers.current is not None or self.on_idle is None:
            return
        await self.on_idle(start_ms, round(self.input_ms))

    # -- the input audio buffer (Realtime client events) ------------------------------------------------------

    async def commit_buffer(self) -> None:
        """``input_audio_buffer.commit``: the buffered (manual) or open (VAD) utterance becomes a user item."""
        self.last_activity = time.monotonic()
        self.disarm_idle()
        if not self.manual_turns:
            if not self.listener.detector.in_speech:
                raise RealtimeError(
                    "input_audio_buffer_commit_empty", "no speech is open in the input audio buffer"
                )
            await self.commit_input()
            return
        if len(self.buffer) < LISTEN_RATE * 2 // 10:  # OpenAI's floor: 100 ms
            raise RealtimeError(
                "input_audio_buffer_commit_empty",
                f"the input audio buffer holds {_ms(len(self.buffer)):.0f} ms; at least 100 ms is needed",
            )
        pcm, self.buffer = bytes(self.buffer), bytearray()
        item_id = new_id("item")
        end = round(self.input_ms)
        await self.emit(Note("committed", {"item_id": item_id, "audio_ms": _ms(len(pcm)), "end_ms": end}))
        try:
            text = await self.listener.transcribe(pcm)
        except Exception as exc:  # the engine failed: the item stays, without a transcript
            await self.emit(Note("transcription_failed", {"item_id": item_id, "message": str(exc)}))
            return
        turn = self.add_user_turn(text, "voice")
        await self.emit(Note("transcribed", {"item_id": item_id, "text": text, "turn": turn}))

    async def clear_buffer(self) -> None:
        """``input_audio_buffer.clear``: forget the caller audio not yet part of a turn."""
        self.last_activity = time.monotonic()
        self.buffer = bytearray()
        if not self.manual_turns and self.listener.detector.in_speech:
            await self._cancel_speculation()
            vad = self.config.vad
            self.listener.detector = TurnDetector(
                vad.threshold, vad.end_of_turn_ms, vad.min_interrupt_ms, vad.min_speech_ms
            )
            await self.emit(Note("utterance_dropped"))

    # -- items and responses the client asks for ----------------------------------------------------------------

    def add_user_turn(self, text: str, source: str) -> TurnRecord | None:
        """A user message the client added or committed: recorded and in the history, not answered (None
        when it holds no words: nothing for the LLM to read)."""
        if not text.strip():
            return None
        turn = TurnRecord(new_id("turn"), source, text)
        self.turns.append(turn)
        self.record(turn)
        self.conversation.add_user(text)
        return turn

    def pending_turn(self) -> TurnRecord:
        """The turn a ``response.create`` answers: the last one, if nothing answered it yet, else a new
        empty one (the agent speaks first, or again)."""
        if self.turns and self.turns[-1].response_id is None:
            return self.turns[-1]
        turn = TurnRecord(new_id("turn"), "text", "")
        self.turns.append(turn)
        self.record(turn)
        return turn
