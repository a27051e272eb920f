"""The rooms the session is split into, each on its own: the conversation window and heard-text edits,
the hold buffer swapped on commit, and the agent's step queue."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.agent_steps import AgentSteps
from pipeline.answer import Answer, HoldBuffer, LiveDestination
from pipeline.conversation import Conversation, TurnRecord
from pipeline.events import ServerEvent
from pipeline.outbox import OutAudio, Outbox
from pipeline.pacer import OutputPacer
from pipeline.response import Response
from pipeline.session_config import SessionConfig

# -- conversation ---------------------------------------------------------------------------------------------


def _talk(conversation: Conversation, turns: int) -> None:
    for n in range(turns):
        conversation.add_user(f"q{n}")
        conversation.add_answer(Response("t"), f"a{n}")


def test_context_window_slides_in_half_window_steps() -> None:
    conversation = Conversation(SessionConfig(instructions="be brief", history_messages=8))
    firsts = []
    for n in range(8):
        conversation.add_user(f"q{n}")
        window = conversation.context()
        assert window[0] == {"role": "system", "content": "be brief"}
        assert len(window) - 1 <= 8 and window[-1]["content"] == f"q{n}"
        firsts.append(window[1]["content"])
        conversation.add_answer(Response("t"), f"a{n}")
    # The cached prefix (first message after the instructions) changes every other turn, not every turn.
    assert firsts == ["q0"] * 4 + ["q2"] * 2 + ["q4"] * 2


def test_context_never_opens_with_the_assistant_and_keeps_nothing_at_zero() -> None:
    conversation = Conversation(SessionConfig(history_messages=3))
    _talk(conversation, 3)
    window = conversation.context()
    assert window[1]["role"] == "user" and len(window) - 1 <= 3
    conversation.config.history_messages = 0
    assert conversation.context() == conversation.history[:1]
    assert len(conversation.history) == 1 + 2 * 3  # the full history stays for the record


def test_heard_text_edits_cut_drop_or_add_the_answer() -> None:
    conversation = Conversation(SessionConfig())
    cut, dropped, unseen = Response("t"), Response("t"), Response("t")
    conversation.add_answer(cut, "Alpha bravo charlie.")
    conversation.add_answer(dropped, "Delta echo.")
    conversation.record_heard(cut, "Alpha bravo")
    conversation.record_heard(dropped, "")
    conversation.record_heard(unseen, "Foxtrot")  # cut before its text was done: it enters the history now
    assert [m["content"] for m in conversation.history[1:]] == ["Alpha bravo", "Foxtrot"]
    assert unseen.history_entry is conversation.history[-1]


def test_resume_context_drops_the_cut_answer_and_continues_an_unfinished_one() -> None:
    conversation = Conversation(SessionConfig())
    conversation.add_user("hi")
    response = Response("t")
    response.generated = "Alpha bravo"
    conversation.add_answer(response, "Alpha bravo")
    messages = conversation.resume_context(response)
    assert messages[1:] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Alpha bravo", "prefix": True},
    ]
    assert conversation.history[1:] == [{"role": "user", "content": "hi"}]


# -- the hold buffer, swapped on commit -----------------------------------------------------------------------


class _Owner:
    """Just enough of a session for Answer's ends (no chain is run here)."""

    def __init__(self, pacer: OutputPacer) -> None:
        self.pacer = pacer
        self.recorded: list[TurnRecord] = []
        self.conversation = Conversation(SessionConfig())
        self.dropped: list[Answer] = []

    def record(self, turn: TurnRecord) -> None:
        self.recorded.append(turn)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return asyncio.create_task(coro)

    def guess_dropped(self, answer: Answer) -> None:
        self.dropped.append(answer)


def _answer(owner: _Owner, destination: Any) -> Answer:
    """An Answer with its parts set by hand: the hold/commit logic never touches the chain."""
    answer = Answer.__new__(Answer)
    answer.owner = owner  # type: ignore[assignment]
    answer.turn = TurnRecord("turn_1", "voice", "hello")
    answer.destination = destination
    answer.response = Response("turn_1")
    answer._live = asyncio.Event()
    answer.speak = answer.keep = True
    return answer


async def _next_on_wire(outbox: Outbox) -> object:
    """The next outbox item as a transport puts it on the wire (an event as its JSON object)."""
    item = await outbox.get()
    return item.to_wire() if isinstance(item, ServerEvent) else item


async def test_a_held_answer_reaches_the_caller_only_on_commit_in_order() -> None:
    outbox = Outbox()
    pacer = OutputPacer(outbox, lead_ms=10_000)
    owner = _Owner(pacer)
    hold = HoldBuffer()
    answer = _answer(owner, hold)
    answer.response.generated = "Hi there."
    await answer._on_delta("Hi there.")
    answer.destination.audio(answer, [b"\x00" * 640] * 3, last=False)
    await answer._on_llm_done()
    assert outbox.depth == 0 and pacer.buffered_ms == 0  # nothing left while held
    assert owner.conversation.history[1:] == []  # nor did the text reach the history

    live = LiveDestination(outbox, pacer)
    await answer.commit(live)
    assert answer.destination is live and answer._live.is_set()
    assert pacer.buffered_ms == 60  # the held frames, handed to the pacer at once
    first, second = await _next_on_wire(outbox), await _next_on_wire(outbox)
    assert isinstance(first, dict) and first["type"] == "response.text.delta"
    assert isinstance(second, dict) and second["type"] == "response.text.done"
    assert second["text"] == "Hi there."
    assert owner.conversation.history[-1] == {"role": "assistant", "content": "Hi there."}
    # From now on, output goes straight to the caller.
    await answer._on_delta(" More.")
    assert (await _next_on_wire(outbox))["delta"] == " More."  # type: ignore[index]


async def test_a_failed_guess_is_dropped_unseen() -> None:
    outbox = Outbox()
    owner = _Owner(OutputPacer(outbox))
    answer = _answer(owner, HoldBuffer())
    await answer.destination.failed(answer, RuntimeError("boom"))
    assert owner.dropped == [answer] and outbox.depth == 0


async def test_live_audio_goes_to_the_pacer() -> None:
    outbox = Outbox()
    pacer = OutputPacer(outbox, lead_ms=10_000)
    answer = _answer(_Owner(pacer), None)
    live = LiveDestination(outbox, pacer)
    answer.destination = live
    live.audio(answer, [b"\x00" * 640] * 2, last=False)
    assert pacer.buffered_ms == 40
    pacer.start()
    item = await asyncio.wait_for(outbox.get(), 1)
    assert isinstance(item, OutAudio) and item.response_id == answer.id
    await pacer.close()


# -- agent steps ----------------------------------------------------------------------------------------------


class _Agent:
    def __init__(self) -> None:
        self.turns: list[tuple[str, str]] = []
        self.gate = asyncio.Event()

    async def user_turn(self, turn: TurnRecord, text: str) -> None:
        await self.gate.wait()
        self.turns.append((turn.turn_id, text))


async def test_agent_steps_run_in_order_and_join_turns_not_yet_taken_up() -> None:
    errors: list[tuple[str, str]] = []

    async def report(code: str, message: str) -> None:
        errors.append((code, message))

    agent, order = _Agent(), []
    steps = AgentSteps(asyncio.create_task, report)

    async def busy() -> None:
        await agent.gate.wait()
        order.append("busy")

    async def fail() -> None:
        raise RuntimeError("nope")

    steps.run(busy())
    for n in range(3):  # the agent is busy: all three wait for the same next step
        steps.give_turn(agent, TurnRecord(f"turn_{n}", "text", f"word{n}"))  # type: ignore[arg-type]
    steps.run(fail())
    agent.gate.set()
    await asyncio.sleep(0.05)
    assert order == ["busy"]
    assert agent.turns == [("turn_2", "word0 word1 word2")]
    assert errors == [("agent_failed", "the agent could not go on: nope")]
