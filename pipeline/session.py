"""A Session owns one conversation: turn-taking, responses, history, and the clock of what was heard.

Transports feed it (``push_audio``, ``submit_text``, ``dtmf``, ``ack_played``...) and drain its ``outbox``;
they know nothing of models. Engines are reached only through the shared ``Runtime`` workers.

The session itself holds the lifecycle (start, the idle watchdog, the close sequence), the public API and
inspection; the work is done by its rooms: the listener (caller side), turn-taking (what the caller's speech
events mean, :mod:`pipeline.turn_taking`), the answers, the conversation and the output clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline import events
from pipeline.agent_steps import AgentSteps, TurnAgent
from pipeline.answer import Answer
from pipeline.answers import Answers
from pipeline.conversation import Conversation, TurnRecord
from pipeline.language import LanguageRouter
from pipeline.listener import Listener, listening_rate
from pipeline.outbox import Outbox
from pipeline.pacer import OutputPacer
from pipeline.prefill import ContextPrefill
from pipeline.recording import SessionRecording
from pipeline.response import Response, new_id
from pipeline.runtime import Runtime
from pipeline.session_config import SessionConfig as SessionConfig
from pipeline.session_config import SessionError as SessionError
from pipeline.session_config import SessionRecorder
from pipeline.session_config import VadConfig as VadConfig
from pipeline.turn_taking import TurnTaking
from pipeline.usage import UsageCounters

log = logging.getLogger("voxgate.session")


class Session:
    """One caller's conversation over any transport."""

    def __init__(
        self, runtime: Runtime, config: SessionConfig, recorder: SessionRecorder | None = None
    ) -> None:
        self.id = new_id("sess")
        self.rt = runtime
        self.config = config
        self.recorder = recorder
        self.agent: TurnAgent | None = None
        self.created_at = time.time()
        self.closed_at: float | None = None
        self.close_reason: str | None = None
        self.caller: str | None = None  # who: remote address, phone number or SIP URI
        self.flow_id: str | None = None
        self._close_done = asyncio.Event()
        self.owner_key: str | None = None  # an opaque owner label (the platform's API key id), stored as is
        self.flow_version: int | None = None
        self.outcome: str | None = None
        self.vad_rate = listening_rate(runtime.vad, config.input_rate)
        self.recording: SessionRecording | None = None
        if config.recording_dir:
            directory, rate = Path(config.recording_dir) / self.id, config.output_rate
            self.recording = SessionRecording(
                directory, rate, config.output_encoding, caller_rate=self.vad_rate
            )
        self.outbox = Outbox(max_bytes=config.max_outbox_bytes)
        self.pacer = OutputPacer(self.outbox, config.lead_ms, on_release=self._on_release)
        self.conversation = Conversation(config)
        # Reads the next turn's prompt ahead after an answer when the history window moves; building a
        # turn's context stops it (see pipeline/prefill.py).
        self.prefill = ContextPrefill(runtime, self.conversation, self.spawn)
        self.turns: list[TurnRecord] = []
        self.dtmf_digits: list[str] = []
        self.answers = Answers(self, self.outbox)
        self.listener = Listener(runtime, config, self, self.vad_rate, self.recording)
        self.usage: UsageCounters = self.listener.usage  # audio, STT, LLM and TTS counts, for usage per key
        self._in_bytes_per_s = config.input_rate * (1 if config.input_encoding == "mulaw" else 2)
        # The caller's language picks the voice and the answer's language (multilingual STT only).
        self.language_router = LanguageRouter(runtime.stt, runtime.tts, config, self.conversation, self.emit)
        self.auto_answer = True  # False: turns are recorded and kept, answered when asked (Realtime)
        self.answer_options: dict[str, Any] = {}  # Answer keywords for its own answers (speak=False)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._agent_steps = AgentSteps(self.spawn, self.error)
        self.turn_taking = TurnTaking(self, self._agent_steps)  # what the listener's events mean
        self._loops: list[asyncio.Task[None]] = []
        self.last_activity = time.monotonic()
        self.closed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.recording is not None:
            await self.recording.start()
        self.record()
        self.pacer.start()
        self._loops = [
            asyncio.create_task(self.listener.run(), name=f"{self.id}-input"),
            asyncio.create_task(self._idle_watchdog(), name=f"{self.id}-idle"),
        ]
        config = self.config
        await self.emit(
            events.SessionCreated(
                self.id,
                events.AudioFormat(config.input_rate, config.input_encoding),
                events.AudioFormat(config.output_rate, config.output_encoding),
            )
        )
        if self.agent is not None:
            self.agent_step(self.agent.start())

    async def close(self, reason: str = "client_closed") -> None:
        """End the session: stop work, tell the client why, and let the outbox drain."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        self.closed_at = time.time()
        self.record()  # the end is queued for storage before any await: a cancelled close still stores it
        try:
            await self._close(reason)
        finally:
            self._close_done.set()

    async def wait_closed(self) -> None:
        """Until whoever is closing the session has finished (its end is then queued for storage)."""
        await self._close_done.wait()

    async def _close(self, reason: str) -> None:
        current = asyncio.current_task()
        if self.agent is not None:
            await self.agent.close()
        await self._cancel_speculation()
        await self.answers.drop(self.answers.current)
        for task in [*self._loops, *self._tasks]:
            if task is not current and not task.done():
                task.cancel()
        self.listener.close()
        await self.pacer.close()
        if self.recording is not None:
            await self.recording.close()
        for turn in self.turns:
            self.record(turn)
        self.record()
        await self.emit(events.SessionClosed(reason))
        await self.outbox.close()

    async def emit(self, event: events.ServerEvent) -> None:
        """Send ``event`` to the client, after whatever was sent before it."""
        if isinstance(event, events.ErrorEvent):
            self.rt.metrics.errors.labels(event.code).inc()
        await self.outbox.put_event(event)

    async def error(self, code: str, message: str) -> None:
        await self.emit(events.ErrorEvent(code, message))

    async def _idle_watchdog(self) -> None:
        while True:
            idle = time.monotonic() - self.last_activity
            if idle >= self.config.idle_timeout_s:
                await self.close("idle_timeout")
                return
            await asyncio.sleep(min(self.config.idle_timeout_s - idle + 0.01, 5.0))

    # -- input from the transport ---------------------------------------------------------------------------

    @property
    def input_backlog_s(self) -> float:
        return self.listener.backlog_s

    @property
    def dropped_input_s(self) -> float:
        return self.listener.dropped_s

    def push_audio(self, data: bytes) -> None:
        """Caller audio in the session's wire format. Never blocks; overflow is reported, not hidden."""
        self.last_activity = time.monotonic()
        self.usage.audio_in_s += len(data) / self._in_bytes_per_s
        self.listener.push(data)

    async def submit_text(self, text: str) -> None:
        """A typed user turn: interrupts the agent if it is speaking, then gets an answer."""
        self.last_activity = time.monotonic()
        await self.turn_taking.typed_turn(text)

    async def commit_input(self) -> None:
        """The client says the caller's turn is over now."""
        self.last_activity = time.monotonic()
        await self.listener.commit()

    async def dtmf(self, digit: str) -> None:
        self.last_activity = time.monotonic()
        self.dtmf_digits.append(digit)
        await self.emit(events.DtmfReceived(digit))
        if self.agent is not None:
            self.agent.caller_active()
            self.agent_step(self.agent.dtmf(digit))

    def ack_played(self, response_id: str, ms: float) -> None:
        """The client has played ``ms`` of a response: the most reliable measure of what was heard."""
        self.last_activity = time.monotonic()
        answer = self.answers.get(response_id)
        if answer is not None:
            answer.ack(ms)

    async def cancel_response(self) -> None:
        self.last_activity = time.monotonic()
        await self.answers.interrupt("cancelled", resumable=False)

    def update(
        self,
        *,
        instructions: str | None = None,
        voice: str | None = None,
        output_rate: int | None = None,
        vad: dict[str, Any] | None = None,
    ) -> None:
        """Apply a validated ``session.update``; takes effect from the next response."""
        self.last_activity = time.monotonic()
        if instructions is not None:
            self.config.instructions = instructions
            self.conversation.set_instructions(instructions)
        if voice is not None:
            self.config.voice = voice
        if output_rate is not None:
            self.config.output_rate = output_rate
        if vad:
            for key, value in vad.items():
                setattr(self.config.vad, key, value)
            self.listener.vad_changed()

    # -- what the listener tells the session (ListenerHooks): the turn policy decides ------------------------
    # The listener's hooks are the session's, so that a subclass may override one (gateway/realtime does).

    async def on_speech_started(self) -> None:
        await self.turn_taking.on_speech_started()

    async def on_interrupt(self) -> None:
        await self.turn_taking.on_interrupt()

    async def on_paused(self, audio: bytes) -> None:
        await self.turn_taking.on_paused(audio)

    async def on_speech_resumed(self) -> None:
        await self.turn_taking.on_speech_resumed()

    async def on_early_transcript(self, text: str, speech_end: float) -> None:
        await self.turn_taking.on_early_transcript(text, speech_end)

    async def on_turn_end(self, audio: bytes) -> None:
        await self.turn_taking.on_turn_end(audio)

    async def _cancel_speculation(self) -> None:
        # Kept for subclasses: the Realtime session clears an open utterance with it.
        await self.turn_taking.cancel_speculation()

    @property
    def history(self) -> list[dict[str, Any]]:
        """The full chat history, instructions first (the LLM sees a window of it)."""
        return self.conversation.history

    # -- responses ------------------------------------------------------------------------------------------

    @property
    def response(self) -> Response | None:
        """The response the caller is hearing (or about to), if any."""
        return self.answers.current.response if self.answers.current is not None else None

    async def speak(self, turn: TurnRecord, text: str) -> Response:
        """Say ``text`` as the agent's answer to ``turn`` (no LLM): streamed, paced and interruptible like
        any answer. ``response.finished`` is set once the caller has heard it, or it was cut or dropped."""
        if not any(t is turn for t in self.turns):
            self.turns.append(turn)
            self.record(turn)
        answer = await self.answers.start(turn, [], spoken_prefix=text, fixed_text=True)
        return answer.response

    def agent_step(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run one agent step after the ones before it (see :class:`AgentSteps`)."""
        self._agent_steps.run(coro)

    # -- what answers tell the session (AnswerOwner) --------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task of this session's, cancelled when it closes."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def answer_finished(self, answer: Answer) -> None:
        self.answers.finished(answer)

    def guess_dropped(self, answer: Answer) -> None:
        if self.answers.held is answer:
            self.answers.held = None

    async def answer_failed(self, answer: Answer, exc: Exception) -> None:
        await self.error("response_failed", f"the agent could not answer: {exc}")
        if self.answers.current is answer:
            self.pacer.flush()
            self.answers.current = None
        if not answer.fixed_text and self.agent is None:  # a failed fallback is not followed by another
            await self.turn_taking.say_fallback(self.config.failed_reply)

    def _on_release(self, response_id: str, ms: float, payload: bytes) -> None:
        self.usage.audio_out_s += ms / 1000
        if self.recording is not None:
            self.recording.agent(payload)
        self.answers.released(response_id)

    # -- inspection -----------------------------------------------------------------------------------------

    def record(self, turn: TurnRecord | None = None) -> None:
        """Tell storage the session (or ``turn``) changed."""
        if self.recorder is not None:
            try:
                self.recorder.changed(self, turn)
            except Exception:  # storage trouble must never break a conversation
                log.exception("session recorder failed")

    def queue_depths(self) -> dict[str, float]:
        """How full each of this session's bounded queues is (for /metrics and tests)."""
        return {
            "input_backlog_seconds": self.input_backlog_s,
            "outbox": self.outbox.depth,
            "pacer_ms": self.pacer.buffered_ms,
            "response_stage": self.answers.stage_depth(),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "transport": self.config.transport,
            "created_at": self.created_at,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
            "live": not self.closed.is_set(),
            "caller": self.caller,
            "flow_id": self.flow_id,
            "flow_version": self.flow_version,
            "outcome": self.outcome,
            "turn_count": len(self.turns),
            "dropped_input_ms": round(self.dropped_input_s * 1000),
            "turns": [asdict(t) for t in self.turns],
            "dtmf": list(self.dtmf_digits),
        }
