"""Turn-taking on its own (pipeline/turn_taking.py): what the listener's events mean, with fake rooms.

The session end to end is in test_session_core.py; here each decision is checked against the calls it makes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline import events
from pipeline.agent_steps import AgentSteps
from pipeline.conversation import Conversation, TurnRecord
from pipeline.session_config import SessionConfig
from pipeline.turn_taking import TurnTaking


class _Answer:
    def __init__(self, turn: TurnRecord) -> None:
        self.turn = turn
        self.id = f"resp_{turn.turn_id}"


class _Answers:
    """Records what turn-taking asks of the answers."""

    def __init__(self) -> None:
        self.current: _Answer | None = None
        self.held: _Answer | None = None
        self.resumable: Any = None
        self.calls: list[tuple[str, Any]] = []

    def take_held(self) -> _Answer | None:
        held, self.held = self.held, None
        return held

    async def drop(self, answer: _Answer | None) -> None:
        self.calls.append(("drop", answer))

    async def interrupt(self, reason: str, resumable: bool) -> None:
        self.calls.append(("interrupt", reason))
        self.current = None

    async def resume(self) -> None:
        self.calls.append(("resume", None))

    async def start(self, turn: TurnRecord, messages: list[Any], *, held: bool = False, **_: Any) -> _Answer:
        answer = _Answer(turn)
        self.calls.append(("start_held" if held else "start", turn.user_text))
        if held:
            self.held = answer
        else:
            self.current = answer
        return answer

    async def commit(self, answer: _Answer) -> None:
        self.calls.append(("commit", answer))
        self.current = answer


class _Listener:
    def __init__(self, text: str) -> None:
        self.text = text
        self.language: str | None = None
        self.stt_ms: float | None = 12.0
        self.speech_end: float | None = 1.0
        self.rate = 16000
        self.alone = ""  # what the last utterance says on its own (transcribe)
        self.calls: list[str] = []

    def transcribe_early(self, audio: bytes) -> None:
        self.calls.append("transcribe_early")

    def cancel_early(self) -> None:
        self.calls.append("cancel_early")

    async def final_text(self, audio: bytes) -> str:
        self.calls.append("final_text")
        return self.text

    async def transcribe(self, pcm: bytes, stage: str = "stt") -> str:
        self.calls.append("transcribe")
        return self.alone

    def continue_after(self, audio: bytes) -> None:
        self.calls.append("continue_after")
        self.prefix = audio

    def joined(self, audio: bytes) -> bytes:
        return getattr(self, "prefix", b"") + audio


class _Pacer:
    def __init__(self) -> None:
        self.played_ms = 0.0

    def played_estimate_ms(self, response_id: str) -> float:
        return self.played_ms


class _Router:
    def would_switch(self, language: str | None, text: str) -> bool:
        return False

    async def follow(self, language: str | None, text: str) -> None:
        pass


class _Owner:
    """Just enough of a session for turn-taking."""

    def __init__(self, text: str = "what time is it") -> None:
        self.config = SessionConfig()
        self.agent = None
        self.auto_answer = True
        self.answer_options: dict[str, Any] = {}
        self.answers = _Answers()
        self.listener = _Listener(text)
        self.pacer = _Pacer()
        self.conversation = Conversation(self.config)
        self.language_router = _Router()
        self.turns: list[TurnRecord] = []
        self.closed = asyncio.Event()
        self.sent: list[events.ServerEvent] = []

    def record(self, turn: TurnRecord | None = None) -> None:
        pass

    async def emit(self, event: events.ServerEvent) -> None:
        self.sent.append(event)

    async def error(self, code: str, message: str) -> None:
        self.sent.append(events.ErrorEvent(code, message))


def _taking(owner: _Owner) -> TurnTaking:
    steps = AgentSteps(asyncio.create_task, owner.error)  # type: ignore[arg-type]
    return TurnTaking(owner, steps)  # type: ignore[arg-type]


async def test_short_speech_over_the_agent_is_no_turn() -> None:
    owner = _Owner()
    owner.answers.current = _Answer(TurnRecord("turn_0", "voice", "earlier"))
    taking = _taking(owner)
    await taking.on_speech_started()
    await taking.on_paused(b"")
    await taking.on_turn_end(b"")
    assert "transcribe_early" not in owner.listener.calls and "final_text" not in owner.listener.calls
    assert owner.turns == [] and ("interrupt", "barge_in") not in owner.answers.calls


async def test_a_held_answer_is_committed_when_the_turn_ends_as_guessed() -> None:
    owner = _Owner("what time is it")
    taking = _taking(owner)
    await taking.on_speech_started()
    await taking.on_paused(b"")
    assert owner.listener.calls[-1] == "transcribe_early"
    await taking.on_early_transcript("what time is it", 1.0)
    held = owner.answers.held
    assert held is not None and owner.answers.calls[-1] == ("start_held", "what time is it")
    await taking.on_turn_end(b"")
    assert owner.answers.calls[-1] == ("commit", held)
    assert owner.turns == [held.turn] and owner.conversation.history[-1]["content"] == "what time is it"
    final = owner.sent[-1]
    assert isinstance(final, events.TranscriptFinal) and final.turn_id == held.turn.turn_id


async def test_a_different_final_transcript_drops_the_guess_and_starts_anew() -> None:
    owner = _Owner("what time is it in Oslo")
    taking = _taking(owner)
    await taking.on_early_transcript("what time is it", 1.0)
    held = owner.answers.held
    await taking.on_turn_end(b"")
    assert ("drop", held) in owner.answers.calls
    assert owner.answers.calls[-1] == ("start", "what time is it in Oslo")
    assert [t.user_text for t in owner.turns] == ["what time is it in Oslo"]


async def test_a_wordless_utterance_resumes_the_cut_answer() -> None:
    owner = _Owner("Mm-hmm.")
    taking = _taking(owner)
    await taking.on_turn_end(b"")
    assert owner.answers.calls[-1] == ("resume", None) and owner.turns == []


async def _answered_turn(owner: _Owner, taking: TurnTaking, text: str) -> TurnRecord:
    """A spoken turn that ended and whose answer is now the current one (not heard yet)."""
    owner.listener.text = text
    await taking.on_speech_started()
    await taking.on_turn_end(b"first")
    assert owner.answers.current is not None and owner.answers.current.turn.user_text == text
    return owner.answers.current.turn


def _users(owner: _Owner) -> list[str]:
    """The caller's messages in the history the LLM reads."""
    return [m["content"] for m in owner.conversation.history if m["role"] == "user"]


async def _speaks_over_the_answer(taking: TurnTaking, audio: bytes) -> None:
    """The caller speaks again, long enough to cut the answer, and stops."""
    await taking.on_speech_started()
    await taking.on_interrupt()
    await taking.on_turn_end(audio)


async def test_words_soon_after_a_turn_before_its_answer_is_heard_continue_it() -> None:
    owner = _Owner()
    taking = _taking(owner)
    first = await _answered_turn(owner, taking, "And so my fellow Americans.")
    owner.pacer.played_ms = 120  # the caller heard the first syllable of the answer at most

    owner.listener.text = "And so my fellow Americans, ask not what your country can do for you."
    await taking.on_speech_started()
    assert owner.listener.calls[-1] == "continue_after" and owner.listener.prefix == b"first"
    await taking.on_interrupt()
    await taking.on_paused(b"second")
    await taking.on_early_transcript(owner.listener.text, 2.0)
    assert owner.answers.held is None, "a continued turn is never answered on a guess"
    await taking.on_turn_end(b"second")

    final = owner.sent[-1]
    assert isinstance(final, events.TranscriptFinal) and final.continues == first.turn_id
    assert final.to_wire()["continues"] == first.turn_id and final.text == owner.listener.text
    assert _users(owner) == [owner.listener.text], (
        "the first part leaves the history: one turn, answered once"
    )
    assert owner.answers.calls[-1] == ("start", owner.listener.text)
    assert owner.turns == [first] and first.user_text == owner.listener.text and not first.interrupted
    # The joined turn may itself be continued, with all its audio.
    assert taking._last is not None and taking._last.audio == b"firstsecond"


async def test_a_cough_after_the_pause_resumes_the_answer_instead() -> None:
    owner = _Owner()
    taking = _taking(owner)
    await _answered_turn(owner, taking, "What time is it?")
    owner.listener.text, owner.listener.alone = "What time is it? Hmm.", "Hmm."
    await _speaks_over_the_answer(taking, b"cough")
    assert owner.answers.calls[-1] == ("resume", None)
    assert _users(owner) == ["What time is it?"]
    assert not any(isinstance(e, events.TranscriptFinal) and e.continues for e in owner.sent)


async def test_an_answer_already_heard_or_a_late_start_is_a_new_turn() -> None:
    for heard_ms, late_s in ((1500.0, 0.0), (0.0, 2.0)):
        owner = _Owner()
        taking = _taking(owner)
        await _answered_turn(owner, taking, "What time is it?")
        owner.pacer.played_ms = heard_ms
        assert taking._last is not None
        taking._last.ended_at -= late_s
        owner.listener.text = "And in Oslo?"
        await taking.on_speech_started()
        assert "continue_after" not in owner.listener.calls
        await taking.on_interrupt()
        await taking.on_turn_end(b"next")
        assert _users(owner) == ["What time is it?", "And in Oslo?"]


async def test_continuation_off_never_continues() -> None:
    owner = _Owner()
    owner.config.vad.continuation_ms = 0
    taking = _taking(owner)
    await _answered_turn(owner, taking, "What time is it?")
    await taking.on_speech_started()
    assert "continue_after" not in owner.listener.calls


async def test_a_long_turn_is_not_continued() -> None:
    owner = _Owner()
    taking = _taking(owner)
    owner.listener.text = "A long story."
    await taking.on_speech_started()
    await taking.on_turn_end(bytes(21 * 16000 * 2))  # 21 s: with more words it would not fit Whisper's window
    await taking.on_speech_started()
    assert "continue_after" not in owner.listener.calls


async def test_words_the_joined_transcript_lost_are_a_new_turn() -> None:
    # Whisper wrote nothing more for both parts together than for the first: the new part is heard alone, and
    # its words are a turn of their own rather than lost.
    owner = _Owner()
    taking = _taking(owner)
    await _answered_turn(owner, taking, "What time is it in Oslo?")
    owner.listener.text, owner.listener.alone = "What time is it in Oslo?", "And in Rome?"
    await _speaks_over_the_answer(taking, b"next")
    assert _users(owner) == ["What time is it in Oslo?", "And in Rome?"]
    assert owner.answers.calls[-1] == ("start", "And in Rome?")
