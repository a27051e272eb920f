"""Repair of a drafted flow: a deterministic pass that turns a (possibly broken) draft into a full flow.

It fills missing edges, drops references to unknown nodes, adds end nodes, removes unreachable nodes and
declares stray template variables, and lists every change for the user to review.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from flows.draft_format import DRAFT_KINDS, DRAFT_TYPES
from flows.schema import EXIT_NAME, TRANSFER_TARGET, edges_of
from flows.templates import TemplateError, template_variables
from flows.validate import validate_flow

__all__ = ["FAILURE_END", "MAIN_END", "PLACEHOLDER_TARGET", "repair_draft"]


PLACEHOLDER_TARGET = "sip:agent@example.invalid"  # .invalid never resolves: a draft cannot dial a real number
MAIN_END = "end"
FAILURE_END = "end_no_answer"


def _slug(value: Any, limit: int = 40) -> str:
    text = re.sub(r"[^a-z0-9_]+", "_", str(value or "").lower()).strip("_")
    if text and not text[0].isalpha():
        text = f"n_{text}"
    return text[:limit]


def _str(value: Any, default: str = "") -> str:
    return value.strip() if isinstance(value, str) and value.strip() else default


# Draft-format keys and the flow fields they become (a model ignoring the schema may use either).
_DRAFT_KEYS = {
    "action": "type",
    "then": "next",
    "question": "prompt",
    "save_as": "variable",
    "save_type": "kind",
}
_TEXT_FIELD = {"collect": "prompt", "llm": "instructions", "transfer": "handoff"}


def _from_draft_format(raw: dict[str, Any]) -> dict[str, Any]:
    """A draft-format node as a flow-format dict (flow-format keys already there win)."""
    node = {_DRAFT_KEYS.get(k, k): v for k, v in raw.items() if k not in _DRAFT_KEYS}
    for key, target in _DRAFT_KEYS.items():
        if key in raw:
            node.setdefault(target, raw[key])
    text_field = _TEXT_FIELD.get(node.get("type"))  # type: ignore[arg-type]
    if text_field and "text" in node:
        node.setdefault(text_field, node.pop("text"))
    return node


def _plain(text: str) -> str:
    """``text`` as a template: kept if it parses, else its braces removed (the model wrote broken Jinja)."""
    try:
        template_variables(text)
        return text
    except TemplateError:
        return re.sub(r"[{}%#]", "", text)


class _Repairer:
    def __init__(self, draft: dict[str, Any], description: str) -> None:
        self.draft = draft
        self.description = description
        self.repairs: list[str] = []

    def note(self, message: str) -> None:
        self.repairs.append(message)

    def run(self) -> dict[str, Any]:
        name = _str(self.draft.get("name"), self.description[:60] or "Drafted flow")[:200]
        nodes = self._nodes()
        if not nodes:
            self.note("the draft had no usable nodes; added a greeting")
            nodes = [{"id": "greeting", "type": "say", "text": "Hello, how can I help you?", "next": None}]
        self._edges(nodes)
        doc: dict[str, Any] = {
            "id": _slug(name, 60).replace("_", "-") or "drafted-flow",
            "name": name,
            "version": 1,
            "description": self.description[:2000],
            "start": nodes[0]["id"],
            "variables": {},
            "nodes": nodes,
        }
        self._prune(doc)
        self._settle(doc)
        return doc

    def _nodes(self) -> list[dict[str, Any]]:
        raw_nodes = self.draft.get("nodes")
        raw_nodes = raw_nodes if isinstance(raw_nodes, list) else []
        nodes: list[dict[str, Any]] = []
        self.renames: dict[str, str] = {}
        used: set[str] = {MAIN_END, FAILURE_END}  # ids repair may add later
        for k, raw in enumerate(raw_nodes):
            raw = _from_draft_format(raw) if isinstance(raw, dict) else raw
            if not isinstance(raw, dict) or raw.get("type") not in DRAFT_TYPES:
                kind = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
                self.note(f"dropped node #{k + 1}: unsupported type {kind!r}")
                continue
            old = raw.get("id")
            new = _slug(old) or f"{raw['type']}_{k + 1}"
            base, n = new, 2
            while new in used:
                new, n = f"{base}_{n}", n + 1
            used.add(new)
            if old != new:
                self.note(f"node id {old!r} -> {new!r}")
            if isinstance(old, str):
                self.renames.setdefault(old, new)
            self.renames.setdefault(new, new)
            nodes.append(self._node(raw, new))
        transfer = next((n["id"] for n in nodes if n["type"] == "transfer"), None)
        for node in nodes:
            # A drafted llm node has one way out ("then"); if the draft can transfer, asking for a person
            # should reach that transfer from the conversation too.
            if (
                node["type"] == "llm"
                and transfer
                and not any(e["name"] == "wants_human" for e in node["exits"])
            ):
                node["exits"].append(
                    {"name": "wants_human", "description": "the caller asks for a person", "next": transfer}
                )
        return nodes

    def _node(self, raw: dict[str, Any], nid: str) -> dict[str, Any]:
        kind = raw["type"]
        node: dict[str, Any] = {"id": nid, "type": kind}
        if kind == "say":
            node["text"] = _plain(_str(raw.get("text"), "Okay."))
            node["next"] = raw.get("next")
        elif kind == "collect":
            variable = _slug(raw.get("variable")) or _slug(nid) or "answer"
            if variable in ("now", "secrets"):
                variable += "_value"
            answer_kind = raw.get("kind") if raw.get("kind") in DRAFT_KINDS else "text"
            if answer_kind != raw.get("kind"):
                self.note(f"{nid}: answer type {raw.get('kind')!r} -> 'text'")
            node.update(
                prompt=_plain(_str(raw.get("prompt"), f"What is your {variable.replace('_', ' ')}?")),
                variable=variable,
                kind=answer_kind,
                next=raw.get("next"),
                on_failure=FAILURE_END,
            )
        elif kind == "llm":
            node["instructions"] = _plain(
                _str(raw.get("instructions"), "Help the caller with their question.")
            )
            exits: list[dict[str, Any]] = []
            raw_exits = raw.get("exits")
            if not isinstance(raw_exits, list):
                raw_exits = [
                    {
                        "name": "done",
                        "description": "the caller has no more questions or says goodbye",
                        "next": raw.get("next"),
                    }
                ]
            for ex in raw_exits:
                if not isinstance(ex, dict):
                    continue
                name = _slug(ex.get("name"))
                if not re.match(EXIT_NAME, name) or name == "stay" or any(e["name"] == name for e in exits):
                    self.note(f"{nid}: dropped exit {ex.get('name')!r}")
                    continue
                exits.append(
                    {"name": name, "description": _str(ex.get("description"))[:500], "next": ex.get("next")}
                )
            node["exits"] = exits
        elif kind == "transfer":
            node["handoff"] = _plain(_str(raw.get("handoff"), "Let me connect you with someone."))
            node["target"] = self._transfer_target(nid)
        else:  # end
            text = _str(raw.get("text"))
            if text:
                node["text"] = _plain(text)
            node["reason"] = "completed"
        return node

    def _transfer_target(self, nid: str) -> str:
        # Only a target the user wrote in the description is trusted; a model-invented number could be real.
        for found in re.findall(r"(\+\d[\d\s().-]{6,20}\d|sips?:[^\s,;]+)", self.description):
            target = found if found.startswith("sip") else "+" + re.sub(r"\D", "", found)
            if re.match(TRANSFER_TARGET, target):
                return target
        self.note(
            f"{nid}: transfer target is a placeholder ({PLACEHOLDER_TARGET}); set a real number or SIP URI"
        )
        return PLACEHOLDER_TARGET

    def _edges(self, nodes: list[dict[str, Any]]) -> None:
        # Drafts only jump forward: a weak model's backward jump is nearly always a mistake, and it can
        # make a loop that validation accepts (a collect's on_failure is a way out) but a caller never leaves.
        order = {n["id"]: k for k, n in enumerate(nodes)}
        needs_failure_end = False
        for k, node in enumerate(nodes):
            following = nodes[k + 1]["id"] if k + 1 < len(nodes) else MAIN_END
            if "next" in node:
                node["next"] = self._target(node, "next", node["next"], order, k, following)
            for j, ex in enumerate(node.get("exits", [])):
                ex["next"] = self._target(node, f"exits[{j}].next", ex["next"], order, k, MAIN_END)
            needs_failure_end |= node.get("on_failure") == FAILURE_END
        if not any(n["type"] in ("end", "transfer") for n in nodes) or any(
            MAIN_END in [t for _, t in edges_of(n)] for n in nodes
        ):
            self.note("added an end node")
            nodes.append(
                {
                    "id": MAIN_END,
                    "type": "end",
                    "text": "Thank you for calling. Goodbye.",
                    "reason": "completed",
                }
            )
        if needs_failure_end:
            nodes.append(
                {
                    "id": FAILURE_END,
                    "type": "end",
                    "text": "Sorry, I couldn't understand. Please call again later. Goodbye.",
                    "reason": "no_answer",
                }
            )

    def _target(
        self, node: dict[str, Any], field_name: str, target: Any, order: dict[str, int], k: int, fallback: str
    ) -> str:
        resolved = self.renames.get(target) if isinstance(target, str) else None
        if resolved is None and isinstance(target, str):
            resolved = self.renames.get(_slug(target))
        if resolved in order and order[resolved] > k:
            return resolved
        why = " (drafts only jump forward)" if resolved in order else ""
        self.note(f"{node['id']}: {field_name} {target!r} -> {fallback!r}{why}")
        return fallback

    def _prune(self, doc: dict[str, Any]) -> None:
        by_id = {n["id"]: n for n in doc["nodes"]}
        seen = {doc["start"]}
        queue = deque([doc["start"]])
        while queue:
            for _, target in edges_of(by_id[queue.popleft()]):
                if target in by_id and target not in seen:
                    seen.add(target)
                    queue.append(target)
        for node in list(doc["nodes"]):
            if node["id"] not in seen:
                doc["nodes"].remove(node)
                if node["id"] not in (MAIN_END, FAILURE_END):
                    self.note(f"removed unreachable node {node['id']!r}")

    def _settle(self, doc: dict[str, Any]) -> None:
        """Declare variables that drafted texts use but nothing collects (they render as empty strings).

        Forward-only edges already rule out loops, so this is the one thing validation can still report.
        """
        for issue in validate_flow(doc):
            name = (
                re.search(r"variable '([^']+)'", issue.message)
                if issue.code == "undefined_variable"
                else None
            )
            if name and name.group(1) != "secrets" and name.group(1) not in doc["variables"]:
                doc["variables"][name.group(1)] = ""
                self.note(f"declared variable {name.group(1)!r} (used in a template, never collected)")


def repair_draft(draft: dict[str, Any], description: str = "") -> tuple[dict[str, Any], list[str]]:
    """Turn a (possibly broken) draft into a full flow document; returns it and the list of repairs made."""
    repairer = _Repairer(draft if isinstance(draft, dict) else {}, description)
    return repairer.run(), repairer.repairs
