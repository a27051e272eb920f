"""Turn-taking: what the caller's speech events mean for the conversation.

The listener reports what it heard (speech started, a pause, a resumption, the end of an utterance) and the
session passes each report here. This room decides what it means: an interruption of the agent, speech over
the agent that is no turn, an answer started on hold while the end-of-turn silence runs (and released or
dropped when the turn really ends), a new turn for the session's LLM or for its agent, or the fallback reply
when nothing could be heard. It owns no audio, no answer and no history: it acts through its session.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from pipeline import events
from pipeline.agent_steps import AgentSteps, TurnAgent
from pipeline.answer import Answer
from pipeline.answers import Answers
from pipeline.conversation import Conversation, TurnRecord
from pipeline.language import LanguageRouter
from pipeline.listener import Listener
from pipeline.response import Response, new_id
from pipeline.session_config import SessionConfig
from pipeline.text import only_fillers

log = logging.getLogger("voxgate.session")


class TurnOwner(Protocol):
    """What turn-taking needs from its session: the rooms it steers, and whom to tell."""

    config: SessionConfig
    agent: TurnAgent | None
    auto_answer: bool
    answer_options: dict[str, Any]
    answers: Answers
    listener: Listener
    conversation: Conversation
    language_router: LanguageRouter
    turns: list[TurnRecord]
    closed: asyncio.Event

    def record(self, turn: TurnRecord | None = None) -> None: ...

    async def emit(self, event: events.ServerEvent) -> None: ...

    async def error(self, code: str, message: str) -> None: ...

    async def speak(self, turn: TurnRecord, text: str) -> Response: ...


class TurnTaking:
    """The session's turn policy: overlap, interruption, speculative (held) answers, and new turns.

    Each ``on_*`` method answers the :class:`~pipeline.listener.ListenerHooks` callback of the same name;
    the session delegates to it (so that a session subclass may still override a hook).
    """

    def __init__(self, owner: TurnOwner, agent_steps: AgentSteps) -> None:
        self.owner = owner
        self._agent_steps = agent_steps
        self._overlapped_agent = False  # the open utterance began while the agent spoke

    def _agent_speaking(self) -> bool:
        return self.owner.answers.current is not None

    # -- the listener's events ------------------------------------------------------------------------------

    async def on_speech_started(self) -> None:
        owner = self.owner
        self._overlapped_agent = self._agent_speaking()
        if owner.agent is not None:
            owner.agent.caller_active()
        await owner.emit(events.SpeechStarted())

    async def on_interrupt(self) -> None:
        if self._agent_speaking():
            self._overlapped_agent = False
            await self.owner.answers.interrupt("barge_in", resumable=True)

    async def on_paused(self, audio: bytes) -> None:
        await self.owner.emit(events.SpeechStopped())
        await self.cancel_speculation()
        if not (self._overlapped_agent and self._agent_speaking()):
            self.owner.listener.transcribe_early(audio)

    async def on_speech_resumed(self) -> None:
        await self.cancel_speculation()  # the caller went on: that guess at the turn is stale
        await self.owner.emit(events.SpeechStarted())

    async def on_early_transcript(self, text: str, speech_end: float) -> None:
        """Start the answer on hold while the end-of-turn silence runs.

        The held answer's text and audio reach the caller only when the turn really ends; if the caller
        goes on speaking it is dropped unseen. On 2 cores this takes STT and the first LLM tokens off the
        critical path.
        """
        owner = self.owner
        speculate = owner.config.speculative_response and owner.agent is None and owner.auto_answer
        # A turn in another language is answered after the switch (voice, instructions), never on a guess.
        speculate = speculate and not owner.language_router.would_switch(owner.listener.language, text)
        if speculate and owner.answers.current is None and not only_fillers(text):
            turn = TurnRecord(new_id("turn"), "voice", text)
            turn.timings["stt_ms"] = owner.listener.stt_ms
            messages = owner.conversation.context(next_user=text)
            await owner.answers.start(
                turn, messages, speech_end=speech_end, held=True, **owner.answer_options
            )

    async def on_turn_end(self, audio: bytes) -> None:
        owner, answers, listener = self.owner, self.owner.answers, self.owner.listener
        overlapped, self._overlapped_agent = self._overlapped_agent, False
        if overlapped and self._agent_speaking():
            # Speech shorter than min_interrupt_ms over the agent: not a turn, not an interruption.
            await self.cancel_speculation()
            return
        try:
            text = await listener.final_text(audio)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("transcription failed")
            await self.cancel_speculation()
            await owner.error("stt_failed", f"transcription failed: {exc}")
            await self.say_fallback(owner.config.unheard_reply)
            return
        held = answers.take_held()
        if only_fillers(text):
            # No words ("", "Hmm.", "Mm-hmm"): a cough or a backchannel is not a turn, and must not
            # leave the agent silent if it barged in.
            await answers.drop(held)
            await answers.resume()
            return
        answers.resumable = None
        if held is not None and held.turn.user_text == text:
            await owner.emit(events.TranscriptFinal(held.turn.turn_id, text, "voice"))
            await self._commit_held(held)
            return
        await answers.drop(held)
        turn = TurnRecord(new_id("turn"), "voice", text)
        turn.timings["stt_ms"] = listener.stt_ms
        await owner.emit(events.TranscriptFinal(turn.turn_id, text, "voice"))
        await owner.language_router.follow(listener.language, text)
        await self.begin_turn(turn, speech_end=listener.speech_end)

    # -- turns ----------------------------------------------------------------------------------------------

    async def typed_turn(self, text: str) -> None:
        """A typed user turn: interrupts the agent if it is speaking, then gets an answer."""
        answers = self.owner.answers
        await self.cancel_speculation()
        await answers.interrupt("typed", resumable=False)
        answers.resumable = None
        turn = TurnRecord(new_id("turn"), "text", text)
        await self.owner.emit(events.TranscriptFinal(turn.turn_id, text, "text"))
        await self.begin_turn(turn)

    async def cancel_speculation(self) -> None:
        """Drop the early transcription and the answer on hold: the guess at the turn is stale."""
        self.owner.listener.cancel_early()
        await self.owner.answers.drop(self.owner.answers.take_held())

    async def begin_turn(self, turn: TurnRecord, speech_end: float | None = None) -> None:
        """Record ``turn`` and hand it to the agent, or answer it with the session's LLM (if it answers)."""
        owner = self.owner
        owner.turns.append(turn)
        owner.record(turn)
        if owner.agent is not None:
            owner.agent.caller_active()
            self._agent_steps.give_turn(owner.agent, turn)
            return
        owner.conversation.add_user(turn.user_text)
        if owner.auto_answer:
            options = owner.answer_options
            await owner.answers.start(turn, owner.conversation.context(), speech_end=speech_end, **options)

    async def _commit_held(self, answer: Answer) -> None:
        """The turn ended as guessed: the held answer becomes the real one, with everything it made so far."""
        owner = self.owner
        await owner.answers.drop(owner.answers.current)
        owner.turns.append(answer.turn)
        owner.record(answer.turn)
        owner.conversation.add_user(answer.turn.user_text)
        await owner.answers.commit(answer)

    async def say_fallback(self, text: str) -> None:
        """An engine failed (the error event told the client): tell the caller too, rather than leave them in
        silence, and go on listening. Only where the session answers by itself."""
        owner = self.owner
        if text and owner.auto_answer and not owner.closed.is_set():
            await owner.speak(TurnRecord(new_id("turn"), "voice", ""), text)
