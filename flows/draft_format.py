"""The draft format: the small, bounded flow a model writes, its JSON schema, and the prompt that asks for it.

A draft has at most eight say / collect / llm / transfer / end nodes, short strings, and enums for types and
kinds, under a JSON schema small enough for llama.cpp's schema-to-grammar converter, so even a tiny local
model produces parseable JSON.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DRAFT_EXAMPLE",
    "DRAFT_EXAMPLE_REQUEST",
    "DRAFT_KINDS",
    "DRAFT_MAX_NODES",
    "DRAFT_SYSTEM_PROMPT",
    "DRAFT_TYPES",
    "draft_json_schema",
]


DRAFT_MAX_NODES = 8
DRAFT_TYPES = ("say", "collect", "llm", "transfer", "end")
DRAFT_KINDS = ("number", "yes_no", "date", "time", "text")

_ID = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,23}$"}

# The draft format, what the model writes. Each node is one flat object whose keys sort in the order a
# person would write them: the action first, then its id, its words, and where to go next ("then"). Key
# order matters because generation follows it and some backends (voxgate's llama.cpp engine among them)
# sort schema keys alphabetically before building the grammar; these names give the same order either way.
#   {"action": "say",      "id": ..., "text": ..., "then": ...}
#   {"action": "collect",  "id": ..., "question": ..., "save_as": variable, "save_type": kind, "then": ...}
#   {"action": "llm",      "id": ..., "instructions": ..., "then": where to go when the caller is done}
#   {"action": "transfer", "id": ..., "text": handoff}
#   {"action": "end",      "id": ..., "text": goodbye}


def _text(limit: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": limit}


def _node(action: str, **props: dict[str, Any]) -> dict[str, Any]:
    properties = {"action": {"const": action}, "id": _ID, **props}
    assert list(properties) == sorted(properties), "draft keys must already be in sorted order"
    return {"type": "object", "properties": properties, "required": list(properties)}


def draft_json_schema(max_nodes: int = DRAFT_MAX_NODES) -> dict[str, Any]:
    """The bounded JSON schema a drafting model must follow (the draft format, see the module source).

    Only constructs llama.cpp's converter handles well: objects with every property required, ``const`` and
    ``enum``, an anchored pattern with a bounded repeat, ``maxLength``, ``minItems``/``maxItems``. One
    ``oneOf`` branch per node type, told apart by the first key, keeps the grammar unambiguous after a few
    tokens, and the bounds keep the worst-case output to about 600 tokens.
    """
    nodes = [
        _node("say", text=_text(120), then=_ID),
        _node(
            "collect",
            question=_text(100),
            save_as=_ID,
            save_type={"type": "string", "enum": list(DRAFT_KINDS)},
            then=_ID,
        ),
        _node("llm", instructions=_text(160), then=_ID),
        _node("transfer", text=_text(100)),
        _node("end", text=_text(100)),
    ]
    return {
        "type": "object",
        "properties": {
            "name": _text(60),
            "nodes": {"type": "array", "items": {"oneOf": nodes}, "minItems": 2, "maxItems": max_nodes},
        },
        "required": ["name", "nodes"],
    }


DRAFT_EXAMPLE = {
    "name": "Pizza order",
    "nodes": [
        {"action": "say", "id": "hello", "text": "Hi, thanks for calling Pizza Town.", "then": "ask_count"},
        {
            "action": "collect",
            "id": "ask_count",
            "question": "How many pizzas would you like?",
            "save_as": "pizzas",
            "save_type": "number",
            "then": "ask_time",
        },
        {
            "action": "collect",
            "id": "ask_time",
            "question": "What time should we deliver?",
            "save_as": "delivery_time",
            "save_type": "time",
            "then": "bye",
        },
        {"action": "end", "id": "bye", "text": "Thanks, your order is placed. Goodbye!"},
    ],
}

DRAFT_SYSTEM_PROMPT = (
    "You design phone call flows as JSON. The nodes run in order, starting with the first one.\n"
    "Actions:\n"
    "- say: speak text, then go to the node named in then.\n"
    "- collect: ask a question and save the answer; save_type is number, yes_no, date, time or text.\n"
    "- llm: answer the caller's questions following instructions; then is where to go when they are done.\n"
    "- transfer: hand the call to a person.\n"
    "- end: say goodbye and hang up.\n"
    "Every then must be the id of another node. Collect each value the description asks for. Finish with "
    "an end node."
)
# One worked example as an earlier exchange: small models follow a demonstrated turn better than rules.
DRAFT_EXAMPLE_REQUEST = "Design a flow for: Take a pizza order: number of pizzas and delivery time."
