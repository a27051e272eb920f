"""A Session owns one conversation: turn-taking, responses, history, and the clock of what was heard.

Transports feed it (``push_audio``, ``submit_text``, ``dtmf``, ``ack_played``...) and drain its ``outbox``;
they know nothing of models. Engines are reached only through the shared ``Runtime`` workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from pipeline.answer import Answer, HoldBuffer, LiveDestination
from pipeline.conversation import Conversation, TurnRecord
from pipeline.listener import Listener, listening_rate
from pipeline.outbox import Outbox
from pipeline.pacer import OutputPacer
from pipeline.recording import SessionRecording
from pipeline.response import Response, new_id
from pipeline.runtime import Runtime
from pipeline.session_config import SessionConfig as SessionConfig
from pipeline.session_config import SessionError as SessionError
from pipeline.session_config import VadConfig as VadConfig
from pipeline.text import only_fillers

log = logging.getLogger("voxgate.session")


class TurnAgent(Protocol):
    """Decides what the agent says in place of the session's own LLM answer (a flow runner, for one).

    The session calls these from background tasks, in order; the agent answers through
    :meth:`Session.speak`, :meth:`Session.emit` and :meth:`Session.close`.
    """

    async def start(self) -> None: ...

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        """``text`` is what the caller said: ``turn``'s words, or several turns' that arrived while the
        agent was busy, joined (one answer, one LLM job, nothing the caller said lost)."""

    async def dtmf(self, digit: str) -> None: ...

    def caller_active(self) -> None: ...

    async def close(self) -> None: ...


class SessionRecorder(Protocol):
    """Told whenever a session or one of its turns changed (storage listens; it must not block)."""

    def changed(self, session: Session, turn: TurnRecord | None = None) -> None: ...


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
        self.flow_version: int | None = None
        self.outcome: str | None = None
        self.vad_rate = listening_rate(runtime.vad, config.input_rate)
        self.recording = (
            SessionRecording(
                Path(config.recording_dir) / self.id,
                config.output_rate,
                config.output_encoding,
                caller_rate=self.vad_rate,
            )
            if config.recording_dir
            else None
        )
        self.outbox = Outbox(max_bytes=config.max_outbox_bytes)
        self.pacer = OutputPacer(self.outbox, config.lead_ms, on_release=self._on_release)
        self.conversation = Conversation(config)
        self.turns: list[TurnRecord] = []
        self.dtmf_digits: list[str] = []
        self._live = LiveDestination(self.outbox, self.pacer)
        self._current: Answer | None = None  # the answer the caller hears (or is about to)
        self._held: Answer | None = None  # a speculative answer, held until the turn really ends
        self._answers: dict[str, Answer] = {}
        self.listener = Listener(runtime, config, self, self.vad_rate, self.recording)
        self._overlapped_agent = False  # the open utterance began while the agent spoke
        self._resume_candidate: tuple[Response, float] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._agent_chain: asyncio.Task[None] | None = None
        # Caller turns waiting for the agent's next step (a flood of typed turns makes one step, not one each).
        self._agent_inbox: list[TurnRecord] | None = None
        self._inbox_step: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self.last_activity = time.monotonic()
        self.closed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.recording is not None:
            await self.recording.start()
        self._record()
        self.pacer.start()
        self._loops = [
            asyncio.create_task(self.listener.run(), name=f"{self.id}-input"),
            asyncio.create_task(self._idle_watchdog(), name=f"{self.id}-idle"),
        ]
        await self.emit(
            "session.created",
            session_id=self.id,
            input_audio={"sample_rate": self.config.input_rate, "encoding": self.config.input_encoding},
            output_audio={"sample_rate": self.config.output_rate, "encoding": self.config.output_encoding},
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
        current = asyncio.current_task()
        if self.agent is not None:
            await self.agent.close()
        await self._cancel_speculation()
        await self._drop(self._current)
        for task in [*self._loops, *self._tasks]:
            if task is not current and not task.done():
                task.cancel()
        self.listener.close()
        await self.pacer.close()
        if self.recording is not None:
            await self.recording.close()
        for turn in self.turns:
            self._record(turn)
        self._record()
        await self.emit("session.closed", reason=reason)
        await self.outbox.close()

    async def emit(self, type_: str, **fields: Any) -> None:
        if type_ == "error":
            self.rt.metrics.errors.labels(fields.get("code", "unknown")).inc()
        await self.outbox.put_event({"type": type_, **fields})

    async def error(self, code: str, message: str) -> None:
        await self.emit("error", code=code, message=message)

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
        self.listener.push(data)

    async def submit_text(self, text: str) -> None:
        """A typed user turn: interrupts the agent if it is speaking, then gets an answer."""
        self.last_activity = time.monotonic()
        await self._cancel_speculation()
        await self._interrupt("typed", resumable=False)
        self._resume_candidate = None
        turn = TurnRecord(new_id("turn"), "text", text)
        await self.emit("transcript.final", turn_id=turn.turn_id, text=text, source="text")
        await self._begin_turn(turn)

    async def commit_input(self) -> None:
        """The client says the caller's turn is over now."""
        self.last_activity = time.monotonic()
        await self.listener.commit()

    async def dtmf(self, digit: str) -> None:
        self.last_activity = time.monotonic()
        self.dtmf_digits.append(digit)
        await self.emit("dtmf.received", digit=digit)
        if self.agent is not None:
            self.agent.caller_active()
            self.agent_step(self.agent.dtmf(digit))

    def ack_played(self, response_id: str, ms: float) -> None:
        """The client has played ``ms`` of a response: the most reliable measure of what was heard."""
        self.last_activity = time.monotonic()
        answer = self._answers.get(response_id)
        if answer is not None:
            response = answer.response
            response.acked_ms = max(response.acked_ms or 0.0, float(ms))

    async def cancel_response(self) -> None:
        self.last_activity = time.monotonic()
        await self._interrupt("cancelled", resumable=False)

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

    # -- caller speech --------------------------------------------------------------------------------------

    def _agent_speaking(self) -> bool:
        return self._current is not None

    # -- what the listener tells the session (ListenerHooks) ------------------------------------------------

    async def on_speech_started(self) -> None:
        self._overlapped_agent = self._agent_speaking()
        if self.agent is not None:
            self.agent.caller_active()
        await self.emit("speech.started")

    async def on_interrupt(self) -> None:
        if self._agent_speaking():
            self._overlapped_agent = False
            await self._interrupt("barge_in", resumable=True)

    async def on_paused(self, audio: bytes) -> None:
        await self.emit("speech.stopped")
        await self._cancel_speculation()
        if not (self._overlapped_agent and self._agent_speaking()):
            self.listener.transcribe_early(audio)

    async def on_speech_resumed(self) -> None:
        await self._cancel_speculation()  # the caller went on: that guess at the turn is stale
        await self.emit("speech.started")

    async def on_early_transcript(self, text: str, speech_end: float) -> None:
        """Start the answer on hold while the end-of-turn silence runs.

        The held answer's text and audio reach the caller only when the turn really ends; if the caller
        goes on speaking it is dropped unseen. On 2 cores this takes STT and the first LLM tokens off the
        critical path.
        """
        speculate = self.config.speculative_response and self.agent is None
        if speculate and self._current is None and not only_fillers(text):
            turn = TurnRecord(new_id("turn"), "voice", text)
            turn.timings["stt_ms"] = self.listener.stt_ms
            messages = [*self.conversation.context(), {"role": "user", "content": text}]
            await self._start_answer(turn, messages, speech_end=speech_end, held=True)

    async def on_turn_end(self, audio: bytes) -> None:
        overlapped, self._overlapped_agent = self._overlapped_agent, False
        if overlapped and self._agent_speaking():
            # Speech shorter than min_interrupt_ms over the agent: not a turn, not an interruption.
            await self._cancel_speculation()
            return
        try:
            text = await self.listener.final_text(audio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("transcription failed")
            await self._cancel_speculation()
            await self.error("stt_failed", f"transcription failed: {exc}")
            return
        held, self._held = self._held, None
        if only_fillers(text):
            # No words ("", "Hmm.", "Mm-hmm"): a cough or a backchannel is not a turn, and must not
            # leave the agent silent if it barged in.
            await self._drop(held)
            await self._resume_after_false_interruption()
            return
        self._resume_candidate = None
        if held is not None and held.turn.user_text == text:
            await self.emit("transcript.final", turn_id=held.turn.turn_id, text=text, source="voice")
            await self._commit_held(held)
            return
        await self._drop(held)
        turn = TurnRecord(new_id("turn"), "voice", text)
        turn.timings["stt_ms"] = self.listener.stt_ms
        await self.emit("transcript.final", turn_id=turn.turn_id, text=text, source="voice")
        await self._begin_turn(turn, speech_end=self.listener.speech_end)

    async def _cancel_speculation(self) -> None:
        self.listener.cancel_early()
        held, self._held = self._held, None
        await self._drop(held)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The full chat history, instructions first (the LLM sees a window of it)."""
        return self.conversation.history

    # -- responses ------------------------------------------------------------------------------------------

    @property
    def response(self) -> Response | None:
        """The response the caller is hearing (or about to), if any."""
        return self._current.response if self._current is not None else None

    async def _begin_turn(self, turn: TurnRecord, speech_end: float | None = None) -> None:
        self.turns.append(turn)
        self._record(turn)
        if self.agent is not None:
            self.agent.caller_active()
            self._give_agent_turn(turn)
            return
        self.conversation.add_user(turn.user_text)
        await self._start_answer(turn, self.conversation.context(), speech_end=speech_end)

    async def speak(self, turn: TurnRecord, text: str) -> Response:
        """Say ``text`` as the agent's answer to ``turn`` (no LLM): streamed, paced and interruptible like
        any answer. ``response.finished`` is set once the caller has heard it, or it was cut or dropped."""
        if not any(t is turn for t in self.turns):
            self.turns.append(turn)
            self._record(turn)
        answer = await self._start_answer(turn, [], spoken_prefix=text, fixed_text=True)
        return answer.response

    def _give_agent_turn(self, turn: TurnRecord) -> None:
        inbox = self._agent_inbox
        if inbox is not None and self._agent_chain is self._inbox_step:
            inbox.append(turn)  # the agent has not taken up the last turn yet: it gets both at once
            return
        inbox = self._agent_inbox = [turn]
        self.agent_step(self._agent_turns(inbox))
        self._inbox_step = self._agent_chain

    async def _agent_turns(self, turns: list[TurnRecord]) -> None:
        if self._agent_inbox is turns:
            self._agent_inbox = None  # taken up: a turn from now on waits for the next step
        assert self.agent is not None
        await self.agent.user_turn(turns[-1], " ".join(t.user_text for t in turns if t.user_text))

    def agent_step(self, coro: Coroutine[Any, Any, None]) -> None:
        # One agent step at a time, in arrival order: a DTMF key must not overtake the turn before it.
        previous = self._agent_chain

        async def step() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("agent step failed")
                await self.error("agent_failed", f"the agent could not go on: {exc}")

        self._agent_chain = asyncio.create_task(step())
        self._tasks.add(self._agent_chain)
        self._agent_chain.add_done_callback(self._tasks.discard)

    async def _start_answer(
        self,
        turn: TurnRecord,
        messages: list[dict[str, Any]],
        *,
        held: bool = False,
        speech_end: float | None = None,
        spoken_prefix: str = "",
        resumed: Response | None = None,
        fixed_text: bool = False,
    ) -> Answer:
        """A new answer to ``turn``: live (replacing the current one), or held (see :meth:`_commit_held`)."""
        if not held:
            await self._drop(self._current)
        answer = Answer(
            self,
            turn,
            messages,
            HoldBuffer() if held else self._live,
            speech_end=speech_end,
            spoken_prefix=spoken_prefix,
            resumed=resumed,
            fixed_text=fixed_text,
        )
        self._answers[answer.id] = answer
        if held:
            self._held = answer
        else:
            self._current = answer
            turn.response_id = answer.id
            await self.emit("response.started", **answer.started_event())
        answer.start()
        return answer

    async def _commit_held(self, answer: Answer) -> None:
        """The turn ended as guessed: the held answer becomes the real one, with everything it made so far."""
        await self._drop(self._current)
        self.turns.append(answer.turn)
        self._record(answer.turn)
        self.conversation.add_user(answer.turn.user_text)
        self._current = answer
        answer.turn.response_id = answer.id
        await self.emit("response.started", **answer.started_event())
        await answer.commit(self._live)

    async def _drop(self, answer: Answer | None) -> None:
        if answer is None:
            return
        if self._current is answer:
            self._current = None
        if self._held is answer:
            self._held = None
        await answer.cancel()

    # -- what answers tell the session (AnswerOwner) --------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def turn_changed(self, turn: TurnRecord) -> None:
        self._record(turn)

    def answer_finished(self, answer: Answer) -> None:
        if self._current is answer:
            self._current = None
            self._resume_candidate = None

    def guess_dropped(self, answer: Answer) -> None:
        if self._held is answer:
            self._held = None

    async def answer_failed(self, answer: Answer, exc: Exception) -> None:
        await self.error("response_failed", f"the agent could not answer: {exc}")
        if self._current is answer:
            self.pacer.flush()
            self._current = None

    def _on_release(self, response_id: str, ms: float, payload: bytes) -> None:
        if self.recording is not None:
            self.recording.agent(payload)
        answer = self._answers.get(response_id)
        if answer is not None:
            answer.released()

    async def _interrupt(self, reason: str, resumable: bool) -> None:
        """Barge-in: nothing more leaves, generation stops, and history keeps only what was heard."""
        answer = self._current
        if answer is None:
            return
        response, turn = answer.response, answer.turn
        # Estimate before flushing: the flush forgets how much released audio is still unplayed.
        played_estimate = self.pacer.played_estimate_ms(response.id)
        self.pacer.flush()  # synchronous: not one more agent frame is released after this line
        self._current = None
        played = response.acked_ms if response.acked_ms is not None else played_estimate
        played = min(played, response.audio_ms)
        response.acked_ms = played
        response.interrupted = True
        await self._drop(answer)
        heard = response.heard_text(played)
        turn.heard_text, turn.interrupted = heard, True
        turn.response_text = response.full_text()
        self._record(turn)
        self.conversation.record_heard(response, heard)
        self.rt.metrics.interruptions.labels(reason).inc()
        await self.emit(
            "response.interrupted",
            response_id=response.id,
            played_ms=round(played),
            heard_text=heard,
            reason=reason,
        )
        unfinished = bool(response.unheard_text(played)) or not response.llm_done
        self._resume_candidate = (response, played) if resumable and unfinished else None

    async def _resume_after_false_interruption(self) -> None:
        """The interruption had no words (a cough, a noise): say the cut clause again and go on."""
        candidate, self._resume_candidate = self._resume_candidate, None
        if candidate is None:
            return
        response, played = candidate
        cut = self._answers.get(response.id)
        if cut is None:
            return
        turn = cut.turn
        turn.resumed = True
        if response.history_entry is not None:
            self.conversation.drop(response.history_entry)
        messages = self.conversation.context()
        if not response.llm_done:
            messages.append({"role": "assistant", "content": response.generated, "prefix": True})
        self.rt.metrics.interruptions.labels("false").inc()
        await self._start_answer(
            turn, messages, spoken_prefix=response.unheard_text(played), resumed=response
        )

    # -- inspection -----------------------------------------------------------------------------------------

    def _record(self, turn: TurnRecord | None = None) -> None:
        if self.recorder is not None:
            try:
                self.recorder.changed(self, turn)
            except Exception:  # storage trouble must never break a conversation
                log.exception("session recorder failed")

    def queue_depths(self) -> dict[str, float]:
        """How full each of this session's bounded queues is (for /metrics and tests)."""
        answers = [answer for answer in (self._current, self._held) if answer is not None]
        return {
            "input_backlog_seconds": self.input_backlog_s,
            "outbox": self.outbox.depth,
            "pacer_ms": self.pacer.buffered_ms,
            "response_stage": max((answer.stage_depth() for answer in answers), default=0),
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
