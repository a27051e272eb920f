"""Structure checks of a flow document: its schema, its start, and each node's ids, edges and fields.

They run on the raw document, so one malformed node does not hide the problems of the others; nodes with
schema errors are marked ``broken`` for the graph checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import regex
from pydantic import ValidationError

from flows.schema import ANY_NODE_TYPES, Flow, edges_of
from flows.validate_issues import FlowIssue, field_path

__all__ = [
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_REPEAT",
    "RawFlow",
    "as_list",
    "node_issues",
    "pattern_problem",
    "schema_issues",
    "start_issues",
]


MAX_PATTERN_CHARS = 500  # a collect node's regular expression (also the schema's limit)
# The product of a pattern's repeat counts: "(a{100}){100}" expands to 10,000 steps when it compiles, and
# "((a{100}){100}){100}" took 0.3 s to compile. Real patterns ("\d{4}-\d{2}") are in the tens.
MAX_PATTERN_REPEAT = 10_000


class RawFlow:
    """The raw document as the checks see it: its nodes, where each id is first used, and which nodes have
    schema errors (``broken``: opaque to the graph checks)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        raw_nodes = doc.get("nodes")
        self.nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
        self.index: dict[str, int] = {}  # id -> index of its first node
        for i, node in enumerate(self.nodes):
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                self.index.setdefault(node["id"], i)
        self.broken: set[int] = set()  # nodes with schema errors: opaque to the graph checks

    def node_id(self, i: int) -> str | None:
        """The id of node ``i``, if it has a string one."""
        node = self.nodes[i] if 0 <= i < len(self.nodes) else None
        return node.get("id") if isinstance(node, dict) and isinstance(node.get("id"), str) else None


# Labels pydantic puts in error locations for members of plain (non-discriminated) unions.
_UNION_MEMBER_LABELS = {"Choice", "str", "float", "int", "bool", "list", "dict"}


def schema_issues(flow: RawFlow) -> Iterator[FlowIssue]:
    """The schema (pydantic) errors of the document, one issue per node and field."""
    try:
        Flow.model_validate(flow.doc)
    except ValidationError as exc:
        seen: set[tuple[str | None, str]] = set()
        for err in exc.errors(include_url=False):
            issue = _schema_issue(flow, err)
            if (issue.node, issue.field) not in seen:  # union members repeat one problem
                seen.add((issue.node, issue.field))
                yield issue


def _schema_issue(flow: RawFlow, err: dict[str, Any]) -> FlowIssue:
    loc = list(err.get("loc", ()))
    node_id: str | None = None
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        i = loc[1]
        flow.broken.add(i)
        node_id = flow.node_id(i)
        raw = flow.nodes[i] if i < len(flow.nodes) else None
        rest = loc[2:]
        if rest and isinstance(raw, dict) and rest[0] == raw.get("type"):
            rest = rest[1:]  # the discriminated union's tag
        if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            rest = ["type"]
        loc = loc[:2] + list(rest)
    message = err.get("msg", "invalid value")
    if "[key]" in loc:  # pydantic's marker for a bad dict key (a variable name): the path ends at the key
        loc = loc[: loc.index("[key]")]
        message = f"invalid name: {message}"
    # A plain union (a choice is a string or an object) fails once per member; cut the path at the member
    # label so the failures collapse into one issue, keeping the inner path in the message.
    for k, part in enumerate(loc):
        if part in _UNION_MEMBER_LABELS:
            inner = field_path(loc[k + 1 :])
            message = f"{inner}: {message}" if inner else message
            loc = loc[:k]
            break
    if err.get("type") == "union_tag_invalid":
        message = f"unknown node type; expected one of {', '.join(ANY_NODE_TYPES)}"
    elif err.get("type") == "union_tag_not_found":
        message = "node has no type"
    return FlowIssue(node_id, field_path(loc), "schema", message)


def start_issues(flow: RawFlow) -> Iterator[FlowIssue]:
    """A start that names no node."""
    start = flow.doc.get("start")
    if isinstance(start, str) and start not in flow.index:
        yield FlowIssue(None, "start", "unknown_start", f"start node {start!r} does not exist")


def node_issues(flow: RawFlow, i: int, node: dict[str, Any]) -> Iterator[FlowIssue]:
    """Repeated ids, edges to unknown nodes, and the checks of node ``i``'s own type."""
    nid = flow.node_id(i)
    if nid is not None and flow.index.get(nid) != i:
        yield FlowIssue(nid, f"nodes[{i}].id", "duplicate_node", f"node id {nid!r} is used more than once")
    for path, target in edges_of(node):
        if isinstance(target, str) and target not in flow.index:
            yield FlowIssue(nid, f"nodes[{i}].{path}", "unknown_node", f"no node with id {target!r}")
    kind = node["type"]
    if kind == "collect":
        yield from _collect_issues(flow, i, nid, node)
    elif kind == "llm":
        for j, name in _repeats(node.get("exits"), "name"):
            yield FlowIssue(
                nid, f"nodes[{i}].exits[{j}].name", "duplicate_exit", f"exit {name!r} is repeated"
            )
        for j, exit_ in enumerate(as_list(node.get("exits"))):
            if isinstance(exit_, dict) and exit_.get("name") == "stay":
                yield FlowIssue(nid, f"nodes[{i}].exits[{j}].name", "reserved_exit", '"stay" is reserved')
    elif kind == "dtmf_menu":
        for j, digit in _repeats(node.get("options"), "digit"):
            yield FlowIssue(
                nid, f"nodes[{i}].options[{j}].digit", "duplicate_digit", f"digit {digit!r} is repeated"
            )
    elif kind == "http":
        url = node.get("url")
        if isinstance(url, str) and "{" not in url and not _http_url(url):
            yield FlowIssue(nid, f"nodes[{i}].url", "invalid_url", "url must be an http(s) URL with a host")


def _collect_issues(flow: RawFlow, i: int, nid: str | None, node: dict[str, Any]) -> Iterator[FlowIssue]:
    kind = node.get("kind")
    if kind == "choice" and not node.get("choices"):
        yield FlowIssue(nid, f"nodes[{i}].choices", "missing_choices", "a choice collect needs choices")
    if kind == "regex":
        pattern = node.get("pattern")
        if not pattern:
            yield FlowIssue(nid, f"nodes[{i}].pattern", "missing_pattern", "a regex collect needs a pattern")
        elif isinstance(pattern, str):
            problem = pattern_problem(pattern)
            if problem:
                yield FlowIssue(nid, f"nodes[{i}].pattern", "invalid_pattern", problem)


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _repeats(items: Any, key: str) -> Iterator[tuple[int, str]]:
    """(index, value) of each item whose string ``key`` repeats an earlier item's."""
    seen: set[str] = set()
    for j, item in enumerate(as_list(items)):
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str):
            if value in seen:
                yield j, value
            seen.add(value)


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1" and friends
        return False


_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def pattern_problem(pattern: str) -> str | None:
    """Why a collect node's regular expression cannot be used, or None when it is fine.

    Patterns run on the ``regex`` engine (with a time limit per match), so that is what compiles them here.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"pattern longer than {MAX_PATTERN_CHARS} characters"
    product = 1
    for low, high in _REPEAT.findall(pattern):
        product *= max(int(low), int(high) if high else 0, 1)
        if product > MAX_PATTERN_REPEAT:
            return f"repeat counts multiply to more than {MAX_PATTERN_REPEAT}; use + or * for long runs"
    try:
        regex.compile(pattern, flags=regex.IGNORECASE)
    except (regex.error, OverflowError, ValueError, RecursionError) as exc:
        return f"bad regular expression: {exc}"
    return None
