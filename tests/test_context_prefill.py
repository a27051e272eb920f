"""No turn waits for the context to be read again (issue 11, item 3).

When the history window moves, the next turn's prompt prefix changes and llama.cpp's KV cache no longer holds
it. The conversation notices after the answer before, and the session reads the new prefix ahead on the LLM
worker while the caller listens (``pipeline/prefill.py``). Here: the conversation's plan (pure), the session's
read-ahead and its making way for a turn (fake engines), and the embedded model evaluating only a turn's new
tokens after the window moved (real SmolLM2 on llama.cpp).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from engines.base import ContextPrefiller
from pipeline.conversation import Conversation
from pipeline.response import Response
from pipeline.session import Session, SessionConfig
from tests.test_session_core import FakeLLM, FakeTTS, Recorder, harness, wait_until


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


# -- the conversation's plan -----------------------------------------------------------------------------


def test_the_prefix_is_named_only_when_the_next_window_moves() -> None:
    conversation = Conversation(SessionConfig(history_messages=8))
    plans: dict[int, list[dict[str, Any]]] = {}
    contexts = []
    for n in range(10):
        conversation.add_user(f"question {n}")
        contexts.append(conversation.context())
        conversation.add_answer(Response(f"turn{n}"), f"answer {n}")
        plan = conversation.prefix_to_prefill()
        if plan is not None:
            plans[n] = plan
        assert conversation.prefix_to_prefill() is None  # handed out once
    firsts = [c[1]["content"] for c in contexts]
    # The window (8 messages, steps of 4) moves at turns 4, 6, 8 and 10: read ahead after answers 3, 5, 7, 9.
    assert firsts == ["question 0"] * 4 + ["question 2"] * 2 + ["question 4"] * 2 + ["question 6"] * 2
    assert sorted(plans) == [3, 5, 7, 9]
    for n in (3, 5, 7):
        assert _texts(plans[n]) == _texts(contexts[n + 1][:-1]), n  # exactly what the next turn begins with


def test_a_speculative_context_is_windowed_like_the_turn_it_guesses() -> None:
    conversation = Conversation(SessionConfig(history_messages=8))
    for n in range(8):
        guess = conversation.context(next_user=f"question {n}")
        conversation.add_user(f"question {n}")
        assert _texts(guess) == _texts(conversation.context()), n
        conversation.add_answer(Response(f"turn{n}"), f"answer {n}")


def test_new_instructions_are_read_ahead_and_a_cut_answer_reads_only_its_prefix_again() -> None:
    conversation = Conversation(SessionConfig(history_messages=16))
    conversation.add_user("question 0")
    conversation.context()
    response = Response("turn0")
    conversation.add_answer(response, "answer zero, all of it")
    assert conversation.prefix_to_prefill() is None  # the next prompt extends the last one
    conversation.record_heard(response, "answer zero")
    assert conversation.prefix_to_prefill() is None  # still: only the tail changed
    conversation.set_instructions("Be terse.")
    plan = conversation.prefix_to_prefill()
    assert plan is not None
    assert _texts(plan) == [("system", "Be terse."), ("user", "question 0"), ("assistant", "answer zero")]


# -- the session's read-ahead, with fake engines ---------------------------------------------------------


class PrefillLLM(FakeLLM):
    """A fake LLM that can read a prefix ahead: ``steps`` steps of ``step_s`` each; records what it read."""

    def __init__(self, answer: str = "Fine.", steps: int = 3, step_s: float = 0.0) -> None:
        super().__init__(answer, delay_s=0.0)
        self.capabilities = replace(self.capabilities, prefills_context=True)
        self.steps, self.step_s = steps, step_s
        self.prefills: list[list[dict[str, Any]]] = []
        self.log: list[tuple[str, float]] = []  # ("prefill" | "chat", monotonic time it began)
        self.steps_done = 0
        self.read: list[int] = []  # steps each prefill took before it ended or was stopped
        self.closed = threading.Event()

    def stream_chat(self, messages: list[dict[str, Any]], options: Any) -> Iterator[str]:
        self.log.append(("chat", time.monotonic()))
        return super().stream_chat(messages, options)

    def prefill(self, messages: list[dict[str, Any]]) -> Iterator[int]:
        self.log.append(("prefill", time.monotonic()))
        self.prefills.append([dict(m) for m in messages])
        done = 0
        try:
            for step in range(self.steps):
                time.sleep(self.step_s)
                self.steps_done += 1
                done += 1
                yield step
        finally:
            self.read.append(done)
            self.closed.set()

    def chat_began(self, n: int) -> float:
        """When the ``n``-th LLM call began on the worker."""
        return [t for kind, t in self.log if kind == "chat"][n]


async def _turn(h: Any, n: int) -> None:
    await h.session.submit_text(f"question {n}")
    await wait_until(lambda: len(h.rec.events("response.audio.done")) > n, 8.0, f"answer {n}")
    await asyncio.sleep(0.3)  # the answer finishes playing


async def test_the_session_reads_the_moved_window_ahead_of_the_turn() -> None:
    llm = PrefillLLM()
    assert isinstance(llm, ContextPrefiller)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=8) as h:
        for n in range(7):
            await _turn(h, n)
        prefill = h.session.prefill
        await wait_until(lambda: prefill.task is None or prefill.task.done(), 2.0, "read-ahead")
    # The window moves at turns 4 and 6; each was read ahead, exactly as that turn's prompt begins.
    assert [_texts(p) for p in llm.prefills] == [_texts(llm.calls[4][:-1]), _texts(llm.calls[6][:-1])]
    kinds = [kind for kind, _ in llm.log]
    assert kinds == ["chat"] * 4 + ["prefill"] + ["chat"] * 2 + ["prefill"] + ["chat"]
    assert prefill.started == prefill.completed == 2


async def test_a_turn_stops_the_read_ahead_and_does_not_wait_for_it() -> None:
    # A window of two messages moves every turn; the read-ahead would take 4 s.
    llm = PrefillLLM(steps=200, step_s=0.02)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=2) as h:
        await _turn(h, 0)
        await wait_until(lambda: llm.steps_done > 0, 2.0, "the read-ahead to begin")
        submitted = time.monotonic()
        await h.session.submit_text("question 1")
        await wait_until(lambda: len(llm.calls) == 2, 2.0, "the turn's LLM call")
        began = llm.chat_began(1)
        assert began - submitted < 0.3, began - submitted  # one 20 ms step at most, not the 4 s read
        assert llm.closed.wait(1.0)
        assert llm.read[0] < 200
        assert h.session.prefill.completed == 0


async def test_another_sessions_turn_does_not_wait_for_the_read_ahead() -> None:
    llm = PrefillLLM(steps=200, step_s=0.02)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=2) as h:
        await _turn(h, 0)
        await wait_until(lambda: llm.steps_done > 0, 2.0, "the read-ahead to begin")
        other = Session(h.rt, SessionConfig(history_messages=2))
        await other.start()
        rec = Recorder(other)
        try:
            submitted = time.monotonic()
            await other.submit_text("a question from another caller")
            await wait_until(lambda: len(llm.calls) == 2, 2.0, "the other caller's LLM call")
            began = llm.chat_began(1)
            assert began - submitted < 0.3, began - submitted
            assert llm.closed.wait(1.0)
            assert llm.read[0] < 200
            assert h.session.prefill.completed == 0
        finally:
            await other.close()
            rec.task.cancel()


async def test_an_engine_without_the_capability_is_not_asked() -> None:
    llm = PrefillLLM()
    llm.capabilities = replace(llm.capabilities, prefills_context=False)
    async with harness(llm=llm, tts=FakeTTS(ms_per_word=20), mic=False, history_messages=2) as h:
        for n in range(3):
            await _turn(h, n)
    assert llm.prefills == []
    assert h.session.prefill.started == 0


# -- the embedded model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    from engines.llm_llama import LlamaCppLLM

    engine = LlamaCppLLM(n_threads=2)
    engine.warmup()
    yield engine
    engine.close()


QUESTIONS = [
    "What is the capital of France?",
    "How do plants grow?",
    "Why is the sky blue?",
    "What do bees make?",
    "Where do penguins live?",
]


async def _window_turns(llama: Any, read_ahead: bool) -> list[tuple[int, int]]:
    """Ask QUESTIONS with a four-message window (it moves every turn from the third); per turn: prompt
    tokens llama.cpp evaluated, and the tokens of the question itself."""
    evaluated = []
    async with harness(
        llm=llama, tts=FakeTTS(ms_per_word=10), mic=False, history_messages=4, max_tokens=24
    ) as h:
        if not read_ahead:
            h.session.conversation.listener = None
        prefill = h.session.prefill
        for n, question in enumerate(QUESTIONS):
            await h.session.submit_text(question)
            await wait_until(lambda: len(h.rec.events("response.audio.done")) > n, 30.0, f"answer {n}")  # noqa: B023
            evaluated.append((llama.last_prompt_tokens_evaluated, llama.count_tokens(question)))
            await asyncio.sleep(0.4)  # the answer finishes playing, or the next turn interrupts it
            await wait_until(lambda: prefill.task is None or prefill.task.done(), 30.0, "read-ahead")
        # Read ahead after every answer but the first (the last one's is for a turn that never comes).
        assert prefill.completed == (len(QUESTIONS) - 1 if read_ahead else 0)
    return evaluated


async def test_after_the_window_moves_a_turn_evaluates_only_its_new_tokens(llama: Any) -> None:
    with_read_ahead = await _window_turns(llama, read_ahead=True)
    without = await _window_turns(llama, read_ahead=False)
    # From the third turn on the window has moved before every turn. Read ahead, the prompt evaluation is
    # the question and the chat markup around it (<|im_end|>, <|im_start|>assistant and newlines).
    for n in range(2, len(QUESTIONS)):
        evaluated, question = with_read_ahead[n]
        assert evaluated <= question + 6, (n, with_read_ahead)
        # Without it the whole window (instructions, two earlier messages, the question) is read again.
        assert without[n][0] > evaluated + 20, (n, without)
