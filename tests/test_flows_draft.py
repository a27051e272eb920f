"""Drafting without a model: the bounded schema, its grammar, parsing and repair of broken drafts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flows import validate_flow
from flows.draft import (
    DRAFT_EXAMPLE,
    DRAFT_SYSTEM_PROMPT,
    PLACEHOLDER_TARGET,
    draft_flow,
    draft_json_schema,
    parse_draft,
    repair_draft,
)
from flows.runner import llm_reply_schema
from tests.flows_helpers import FakeLLM


def test_schema_is_bounded() -> None:
    schema = draft_json_schema()
    nodes = schema["properties"]["nodes"]
    assert nodes["maxItems"] == 8 and nodes["minItems"] == 2
    text = json.dumps(schema)
    assert "$ref" not in text and "anyOf" not in text and "additionalProperties" not in text
    for branch in nodes["items"]["oneOf"]:
        props = branch["properties"]
        assert list(props) == sorted(props) and branch["required"] == list(props)
        for name, prop in props.items():
            assert "const" in prop or "enum" in prop or "pattern" in prop or "maxLength" in prop, name


@pytest.mark.parametrize(
    "schema",
    [
        draft_json_schema(),
        llm_reply_schema(["wants_human", "done"]),
        {
            "type": "object",
            "properties": {"value": {"type": "string", "enum": ["yes", "no", "none"]}},
            "required": ["value"],
        },
    ],
    ids=["draft", "llm_reply", "collect_fallback"],
)
@pytest.mark.parametrize("sort_keys", [False, True])
def test_schemas_convert_to_llama_grammar(schema: dict[str, Any], sort_keys: bool) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp import llama_grammar

    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(schema, sort_keys=sort_keys))
    assert gbnf.count("::=") > 3
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema, sort_keys=sort_keys), verbose=False)
    assert grammar._grammar == gbnf


def test_example_in_prompt_follows_the_schema() -> None:
    assert "collect" in DRAFT_SYSTEM_PROMPT
    schema = draft_json_schema()
    branches = {
        b["properties"]["action"]["const"]: b for b in schema["properties"]["nodes"]["items"]["oneOf"]
    }
    for node in DRAFT_EXAMPLE["nodes"]:
        assert list(node) == branches[node["action"]]["required"]


async def test_draft_flow_with_a_good_answer() -> None:
    llm = FakeLLM([DRAFT_EXAMPLE])
    result = await draft_flow("Take a pizza order: number of pizzas and delivery time", llm)
    assert result.valid and result.issues == [] and result.repairs == []
    messages, schema, max_tokens = llm.calls[0]
    assert schema == draft_json_schema() and max_tokens == 900
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == json.dumps(DRAFT_EXAMPLE)  # the worked example, as an earlier turn
    assert (
        messages[-1]["content"] == "Design a flow for: Take a pizza order: number of pizzas and delivery time"
    )
    flow = result.flow
    assert flow["start"] == "hello"
    assert [n["type"] for n in flow["nodes"]] == ["say", "collect", "collect", "end", "end"]
    assert flow["nodes"][1] == {
        "id": "ask_count",
        "type": "collect",
        "prompt": "How many pizzas would you like?",
        "variable": "pizzas",
        "kind": "number",
        "next": "ask_time",
        "on_failure": "end_no_answer",
    }


BROKEN: list[tuple[str, Any, list[str]]] = [
    (
        "empty object",
        {},
        [
            "the draft had no usable nodes; added a greeting",
            "greeting: next None -> 'end'",
            "added an end node",
        ],
    ),
    (
        "nodes not a list",
        {"name": "x", "nodes": "say hi"},
        [
            "the draft had no usable nodes; added a greeting",
            "greeting: next None -> 'end'",
            "added an end node",
        ],
    ),
    (
        "unknown types, bad ids, dangling and self edges",
        {
            "name": "Odd",
            "nodes": [
                {"action": "dance", "id": "d"},
                {"action": "say", "id": "Hello There!", "text": "Hi", "then": "Hello There!"},
                {
                    "action": "collect",
                    "id": "ask",
                    "question": "Age?",
                    "save_as": "Age Years",
                    "save_type": "age",
                    "then": "ghost",
                },
                "not a node",
            ],
        },
        [
            "dropped node #1: unsupported type 'dance'",
            "node id 'Hello There!' -> 'hello_there'",
            "ask: answer type 'age' -> 'text'",
            "dropped node #4: unsupported type 'str'",
            "hello_there: next 'Hello There!' -> 'ask' (drafts only jump forward)",
            "ask: next 'ghost' -> 'end'",
            "added an end node",
        ],
    ),
    (
        "duplicate ids and a cycle",
        {
            "name": "Loop",
            "nodes": [
                {"action": "say", "id": "a", "text": "one", "then": "b"},
                {"action": "say", "id": "b", "text": "two", "then": "a"},
                {"action": "say", "id": "b", "text": "three", "then": "a"},
            ],
        },
        [
            "node id 'b' -> 'b_2'",
            "b: next 'a' -> 'b_2' (drafts only jump forward)",
            "b_2: next 'a' -> 'end' (drafts only jump forward)",
            "added an end node",
        ],
    ),
    (
        "template trouble",
        {
            "name": "T",
            "nodes": [
                {"action": "say", "id": "a", "text": "Hi {{ name }}", "then": "b"},
                {"action": "end", "id": "b", "text": "Bye {{ oops"},
            ],
        },
        ["declared variable 'name' (used in a template, never collected)"],
    ),
    (
        "llm with a transfer",
        {
            "name": "FAQ",
            "nodes": [
                {"action": "llm", "id": "faq", "instructions": "Answer questions.", "then": "bye"},
                {"action": "transfer", "id": "human", "text": "Connecting you."},
                {"action": "end", "id": "bye", "text": "Bye"},
            ],
        },
        ["human: transfer target is a placeholder (sip:agent@example.invalid); set a real number or SIP URI"],
    ),
    (
        "full flow format from an unconstrained model",
        {
            "name": "Full",
            "nodes": [
                {
                    "id": "chat",
                    "type": "llm",
                    "instructions": "Chat",
                    "exits": [{"name": "stay", "next": "x"}, {"name": "Done!", "next": "zz"}],
                },
                {"id": "x", "type": "end"},
            ],
        },
        [
            "chat: dropped exit 'stay'",
            "chat: exits[0].next 'zz' -> 'end'",
            "added an end node",
            "removed unreachable node 'x'",
        ],
    ),
]


@pytest.mark.parametrize(("draft", "repairs"), [(b[1], b[2]) for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_repair(draft: Any, repairs: list[str]) -> None:
    flow, made = repair_draft(draft, "a test flow")
    assert made == repairs
    assert validate_flow(flow) == [], flow


def test_repair_details() -> None:
    flow, _ = repair_draft(BROKEN[4][1])
    assert flow["nodes"][1]["text"] == "Bye  oops"  # broken Jinja loses its braces
    faq, _ = repair_draft(BROKEN[5][1], "FAQ bot, transfer to +1 (555) 555-0100 if asked")
    llm = faq["nodes"][0]
    assert [e["name"] for e in llm["exits"]] == ["done", "wants_human"]
    assert faq["nodes"][1]["target"] == "+15555550100"
    no_number, _ = repair_draft(BROKEN[5][1], "FAQ bot")
    assert no_number["nodes"][1]["target"] == PLACEHOLDER_TARGET


@pytest.mark.parametrize(
    ("raw", "node_count", "note"),
    [
        (json.dumps(DRAFT_EXAMPLE), 4, None),
        (json.dumps(DRAFT_EXAMPLE)[:-40], 3, "cut short"),  # the last node is cut: keep the three before it
        ('{"name": "x", "nodes": [{"action": "say", "id": "a", "text": "hel', 0, "not JSON"),
        ("Sure! Here is your flow.", 0, "not JSON"),
        ("", 0, "not JSON"),
    ],
)
def test_parse_draft(raw: str, node_count: int, note: str | None) -> None:
    draft, notes = parse_draft(raw)
    assert len(draft.get("nodes", [])) == node_count
    assert (notes == []) if note is None else note in notes[0]


async def test_draft_flow_from_garbage() -> None:
    result = await draft_flow("anything", FakeLLM(["I cannot do that."]))
    assert result.valid and result.raw == "I cannot do that."
    assert result.repairs[0] == "the model's output was not JSON; started from an empty draft"
