"""Draft a flow from a plain-language description with an LLM, then repair it until it validates.

The model writes a *draft*: a simplified flow (at most eight say / collect / llm / transfer / end nodes, short
strings, enums for types and kinds) under a JSON schema small enough for llama.cpp's schema-to-grammar
converter, so even a tiny local model produces parseable JSON. A deterministic repair pass then turns the
draft into a full flow: it fills missing edges, drops references to unknown nodes, adds end nodes, removes
unreachable nodes and declares stray template variables, and every change is listed for the user to review.
A draft is a starting point for editing, not a finished flow; with the embedded 135M model it is usually a
weak one. The draft format lives in :mod:`flows.draft_format`, the repair pass in :mod:`flows.draft_repair`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flows.draft_format import (
    DRAFT_EXAMPLE,
    DRAFT_EXAMPLE_REQUEST,
    DRAFT_MAX_NODES,
    DRAFT_SYSTEM_PROMPT,
    draft_json_schema,
)
from flows.draft_repair import PLACEHOLDER_TARGET as PLACEHOLDER_TARGET  # re-exported
from flows.draft_repair import repair_draft
from flows.runner import CompleteFn
from flows.validate import FlowIssue, validate_flow

__all__ = ["DRAFT_MAX_NODES", "DraftResult", "draft_flow", "draft_json_schema", "parse_draft", "repair_draft"]


@dataclass
class DraftResult:
    """A drafted flow document, what repair changed, and anything still wrong (empty when valid)."""

    flow: dict[str, Any]
    repairs: list[str] = field(default_factory=list)
    issues: list[FlowIssue] = field(default_factory=list)
    raw: str = ""

    @property
    def valid(self) -> bool:
        return not self.issues


async def draft_flow(description: str, complete: CompleteFn, *, max_tokens: int = 900) -> DraftResult:
    """Ask the model for a draft of a flow matching ``description``, then repair and validate it."""
    description = " ".join(description.split())[:1000]
    messages = [
        {"role": "system", "content": DRAFT_SYSTEM_PROMPT},
        {"role": "user", "content": DRAFT_EXAMPLE_REQUEST},
        {"role": "assistant", "content": json.dumps(DRAFT_EXAMPLE)},
        {"role": "user", "content": f"Design a flow for: {description}"},
    ]
    raw = await complete(messages, draft_json_schema(), max_tokens)
    draft, notes = parse_draft(raw)
    flow, repairs = repair_draft(draft, description)
    return DraftResult(flow=flow, repairs=notes + repairs, issues=validate_flow(flow), raw=raw)


def parse_draft(raw: str) -> tuple[dict[str, Any], list[str]]:
    """The model's JSON object, cut back to its last complete node if the output was truncated."""
    try:
        value = json.loads(raw)
        if isinstance(value, dict):
            return value, []
    except ValueError:
        pass
    for candidate in _closed_prefixes(raw):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value, ["the model's output was cut short; kept the nodes it completed"]
    return {}, ["the model's output was not JSON; started from an empty draft"]


def _closed_prefixes(raw: str) -> list[str]:
    """Prefixes of ``raw`` ending after a complete object, with the open brackets closed; longest first."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escape = False
    start = raw.find("{")
    if start < 0:
        return out
    for pos in range(start, len(raw)):
        ch = raw[pos]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack:
                break
            stack.pop()
            if ch == "}" and stack:
                out.append(raw[start : pos + 1] + "".join(reversed(stack)))
    return list(reversed(out))
