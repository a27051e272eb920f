"""Turn-taking: what the caller's speech events mean for the conversation.

The listener reports what it heard (speech started, a pause, a resumption, the end of an utterance) and the
session passes each report here. This room decides what it means: an interruption of the agent, speech over
the agent that is no turn, an answer started on hold while the end-of-turn silence runs (and released or
dropped when the turn really ends), a new turn for the session's LLM or for its agent, the last turn continued
(the caller went on after a pause that looked final, before hearing its answer), or the fallback reply when
nothing could be heard. It owns no audio, no answer and no history: it acts through its session.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline import events
from pipeline.agent_steps import AgentSteps, TurnAgent
from pipeline.answer import Answer
from pipeline.answers import Answers
from pipeline.conversation import Conversation, Message, TurnRecord
from pipeline.language import LanguageRouter
from pipeline.listener import Listener
from pipeline.pacer import OutputPacer
from pipeline.response import Response, new_id
from pipeline.session_config import SessionConfig
from pipeline.text import only_fillers

log = logging.getLogger("voxgate.session")
_WORD = re.compile(r"[a-z0-9']+")
_MAX_CONTINUED_S = 20  # a turn this long is not continued: both parts must fit one Whisper window


@dataclass
class _SpokenTurn:
    """The last voice turn the session's LLM answered: what a caller's next words may continue."""

    turn: TurnRecord
    audio: bytes
    ended_at: float
    message: Message  # its user message in the history


def _says_more(before: str, joined: str) -> bool:
    """Whether ``joined`` (a continued turn transcribed whole) has words beyond the ``before`` it began with
    (the turn as it ended), fillers aside: a cough or an "mm" after the pause is not a continuation."""
    extra = _WORD.findall(joined.lower())[len(_WORD.findall(before.lower())) :]
    return bool(extra) and not only_fillers(" ".join(extra))


class TurnOwner(Protocol):
    """What turn-taking needs from its session: the rooms it steers, and whom to tell."""

    config: SessionConfig
    agent: TurnAgent | None
    auto_answer: bool
    answer_options: dict[str, Any]
    answers: Answers
    listener: Listener
    pacer: OutputPacer
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
        self._last: _SpokenTurn | None = None
        self._continuing: _SpokenTurn | None = None  # the turn the open utterance continues

    def _agent_speaking(self) -> bool:
        return self.owner.answers.current is not None

    # -- the listener's events ------------------------------------------------------------------------------

    async def on_speech_started(self) -> None:
        owner = self.owner
        self._overlapped_agent = self._agent_speaking()
        self._continuing = self._continuable()
        if self._continuing is not None:
            owner.listener.continue_after(self._continuing.audio)
        if owner.agent is not None:
            owner.agent.caller_active()
        await owner.emit(events.SpeechStarted())

    def _continuable(self) -> _SpokenTurn | None:
        """The last turn, if the caller is going on with it: they start again within ``continuation_ms`` of
        its end, while its answer is the current one and has played at most ``continuation_heard_ms``.
        Flows are never continued (an agent has taken the turn)."""
        owner, last = self.owner, self._last
        vad = owner.config.vad
        current = owner.answers.current
        if last is None or not vad.continuation_ms or owner.agent is not None or current is None:
            return None
        if current.turn is not last.turn or time.monotonic() - last.ended_at > vad.continuation_ms / 1000:
            return None
        if len(last.audio) > _MAX_CONTINUED_S * owner.listener.rate * 2:
            return None  # the joined audio must fit Whisper's 30 s window with the next words
        return last if owner.pacer.played_estimate_ms(current.id) <= vad.continuation_heard_ms else None

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
        # A continued turn replaces one already in the history: it is answered when it ends, never guessed at.
        speculate = speculate and self._continuing is None
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
        continuing, self._continuing = self._continuing, None
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
        if continuing is not None:
            if _says_more(continuing.turn.user_text, text):
                await answers.drop(held)
                await self._continue(continuing, text, audio)
                return
            text = await self._alone(audio)  # nothing new in the joined words: hear the new part by itself
        if only_fillers(text):
            # No words ("", "Hmm.", "Mm-hmm"): a cough or a backchannel is not a turn, and must not
            # leave the agent silent if it barged in.
            await answers.drop(held)
            await answers.resume()
            return
        answers.resumable = None
        if held is not None and held.turn.user_text == text:
            await owner.emit(events.TranscriptFinal(held.turn.turn_id, text, "voice"))
            self._remember(held.turn, audio, await self._commit_held(held))
            return
        await answers.drop(held)
        turn = TurnRecord(new_id("turn"), "voice", text)
        turn.timings["stt_ms"] = listener.stt_ms
        await owner.emit(events.TranscriptFinal(turn.turn_id, text, "voice"))
        await owner.language_router.follow(listener.language, text)
        self._remember(turn, audio, await self.begin_turn(turn, speech_end=listener.speech_end))

    async def _alone(self, audio: bytes) -> str:
        """The utterance's own words, without the turn it was taken to continue ("" if STT fails: logged)."""
        try:
            return await self.owner.listener.transcribe(audio)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("transcribing the words after a turn failed")
            return ""

    async def _continue(self, last: _SpokenTurn, text: str, audio: bytes) -> None:
        """The caller went on with ``last`` after a pause taken for its end: its user message and its answer
        (cut by the barge-in, or not yet heard) leave the history, and the same turn, now ``text`` (both parts
        transcribed together), is answered once. Clients get its final again, marked ``continues``."""
        owner, listener = self.owner, self.owner.listener
        owner.answers.resumable = None
        owner.conversation.retract(last.message)
        turn = last.turn
        turn.user_text, turn.timings = text, {"stt_ms": listener.stt_ms}
        turn.response_id, turn.response_text, turn.heard_text = None, "", ""
        turn.interrupted = turn.resumed = False
        await owner.emit(events.TranscriptFinal(turn.turn_id, text, "voice", continues=turn.turn_id))
        message = await self.begin_turn(turn, speech_end=listener.speech_end, new=False)
        self._remember(turn, listener.joined(audio), message)

    def _remember(self, turn: TurnRecord, audio: bytes, message: Message | None) -> None:
        """The caller's next words may continue ``turn`` if the session's LLM has it (``message``: its user
        message in the history; None when an agent took the turn)."""
        self._last = _SpokenTurn(turn, audio, time.monotonic(), message) if message is not None else None

    # -- turns ----------------------------------------------------------------------------------------------

    async def typed_turn(self, text: str) -> None:
        """A typed user turn: interrupts the agent if it is speaking, then gets an answer."""
        answers = self.owner.answers
        self._last = None  # a typed turn comes between: spoken words after it start a new turn
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

    async def begin_turn(
        self, turn: TurnRecord, speech_end: float | None = None, new: bool = True
    ) -> Message | None:
        """Record ``turn`` and hand it to the agent, or answer it with the session's LLM (if it answers); the
        user message it added to the history (None: the agent has it). ``new`` False: the turn is already the
        session's (a continued one), and only changed."""
        owner = self.owner
        if new:
            owner.turns.append(turn)
        owner.record(turn)
        if owner.agent is not None:
            owner.agent.caller_active()
            self._agent_steps.give_turn(owner.agent, turn)
            return None
        message = owner.conversation.add_user(turn.user_text)
        if owner.auto_answer:
            options = owner.answer_options
            await owner.answers.start(turn, owner.conversation.context(), speech_end=speech_end, **options)
        return message

    async def _commit_held(self, answer: Answer) -> Message:
        """The turn ended as guessed: the held answer becomes the real one, with everything it made so far.
        The user message it added to the history."""
        owner = self.owner
        await owner.answers.drop(owner.answers.current)
        owner.turns.append(answer.turn)
        owner.record(answer.turn)
        message = owner.conversation.add_user(answer.turn.user_text)
        await owner.answers.commit(answer)
        return message

    async def say_fallback(self, text: str) -> None:
        """An engine failed (the error event told the client): tell the caller too, rather than leave them in
        silence, and go on listening. Only where the session answers by itself."""
        owner = self.owner
        if text and owner.auto_answer and not owner.closed.is_set():
            await owner.speak(TurnRecord(new_id("turn"), "voice", ""), text)
