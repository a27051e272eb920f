"""What the flow runner asks the language model, and how it reads the answers.

Two uses: an llm node's conversation turn (a reply and an exit, under :func:`llm_reply_schema`), and a
collect node's fallback, where the model restates an answer the deterministic parsers did not understand.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from flows.schema import CollectNode, LlmNode

__all__ = [
    "HISTORY_LIMIT",
    "LLM_TROUBLE",
    "llm_reply_schema",
    "llm_system_prompt",
    "llm_turn_reply",
    "normalize_request",
    "normalized_value",
]


LLM_TROUBLE = "Sorry, I didn't catch that. Could you say it again?"
HISTORY_LIMIT = 12  # messages of the current llm node kept for the model; older turns are dropped


def llm_reply_schema(exit_names: list[str], max_say_chars: int = 400) -> dict[str, Any]:
    """JSON schema for an llm node's reply; the exit enum makes a constrained model pick a real exit.

    Keys are in alphabetical order ("exit" before "say") because some backends sort schema keys before
    building a grammar; writing them sorted keeps generation order the same everywhere.
    """
    return {
        "type": "object",
        "properties": {
            "exit": {"type": "string", "enum": [*exit_names, "stay"]},
            "say": {"type": "string", "maxLength": max_say_chars},
        },
        "required": ["exit", "say"],
    }


_KIND_HELP = {
    "number": "a number, written with digits",
    "yes_no": 'whether the caller said yes or no: "yes" or "no"',
    "date": "a calendar date, as YYYY-MM-DD",
    "time": "a time of day, as HH:MM in 24-hour form",
    "choice": "one of the listed options, exactly as written",
    "regex": "the requested code or reference, exactly as said",
    "text": "the caller's answer",
}


def normalize_request(
    node: CollectNode, question: str, text: str, now: datetime
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages and JSON schema that ask the model to restate ``text`` in a form the parser understands."""
    value_schema: dict[str, Any] = {"type": "string", "maxLength": 40}
    options = ""
    if node.kind == "yes_no":
        value_schema = {"type": "string", "enum": ["yes", "no", "none"]}
    elif node.kind == "choice":
        values = [c.value for c in node.choice_list()]
        value_schema = {"type": "string", "enum": [*values, "none"]}
        options = f" Options: {', '.join(values)}."
    system = (
        f"Extract {_KIND_HELP[node.kind]} from the caller's reply.{options} Today is "
        f'{now.strftime("%A %Y-%m-%d")}. Answer with JSON {{"value": ...}}; use "none" if the reply '
        "does not contain it."
    )
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Question: {question}\nReply: {text}"},
    ]
    schema = {"type": "object", "properties": {"value": value_schema}, "required": ["value"]}
    return messages, schema


def normalized_value(raw: str) -> str | None:
    """The value in the model's restated answer; None when it found none."""
    value = _json_object(raw).get("value")
    if value is None or str(value).strip().lower() == "none":
        return None
    return str(value)


def llm_system_prompt(node: LlmNode, instructions: str) -> str:
    """The system prompt of an llm node: its rendered ``instructions``, the reply format and its exits."""
    exits = "\n".join(f"- {e.name}: {e.description or e.name.replace('_', ' ')}" for e in node.exits)
    return (
        f"{instructions}\n\n"
        "You are talking with a caller on the phone. Keep each reply to one or two short sentences.\n"
        'Answer with JSON: {"exit": the exit to take, "say": what you say to the caller}.\n'
        f"Exits:\n- stay: keep talking with the caller\n{exits}"
    )


def llm_turn_reply(raw: str, names: list[str]) -> tuple[str, str | None]:
    """What to say and which exit (of ``names``) to take, from the model's reply to a conversation turn."""
    reply = _json_object(raw)
    if not reply and raw.strip():  # an unconstrained model answered in prose
        reply = {"say": raw.strip(), "exit": "stay"}
    say = str(reply.get("say") or "").strip()[:1000]
    chosen = reply.get("exit") if reply.get("exit") in names else None
    return say, chosen


def _json_object(raw: str) -> dict[str, Any]:
    """The JSON object in a model reply (the whole text, or the first {...} in it); {} if there is none."""
    for candidate in (raw, *re.findall(r"\{.*\}", raw, flags=re.DOTALL)):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
