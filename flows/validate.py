"""Whole-document flow validation that reports every problem at once.

The pydantic models check each node's shape; this module adds the checks that need the whole graph and
turns everything into flat, stable :class:`FlowIssue` records, the body of an HTTP 422. Graph checks run on
the raw document, so one malformed node does not hide the problems of the others.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from flows.logic import check_expression, expression_variables
from flows.schema import ANY_NODE_TYPES, BUILTIN_VARIABLES, RESERVED_NAMES, TERMINAL_TYPES, Flow, edges_of
from flows.templates import TemplateError, secret_references, template_variables

__all__ = ["FlowIssue", "FlowValidationError", "load_flow", "validate_flow"]

# Template fields of each node type (paths relative to the node; "headers.*" = every header value).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "say": ("text",),
    "collect": ("prompt", "retry_prompt"),
    "llm": ("instructions", "opening"),
    "branch": (),
    "http": ("url", "headers.*", "body"),
    "dtmf_menu": ("prompt",),
    "transfer": ("handoff",),
    "end": ("text",),
}


@dataclass(frozen=True)
class FlowIssue:
    """One validation problem. ``code`` is stable and machine-readable; ``message`` is for people.

    ``node`` is the id of the node concerned (None for document-level problems); ``field`` is a path into
    the document such as ``nodes[3].next`` or ``start``.
    """

    node: str | None
    field: str
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used in API responses."""
        return asdict(self)


class FlowValidationError(ValueError):
    """A flow document failed validation; ``issues`` lists every problem found."""

    def __init__(self, issues: list[FlowIssue]) -> None:
        self.issues = issues
        summary = "; ".join(f"{i.field or '(document)'}: {i.message}" for i in issues[:5])
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        super().__init__(f"invalid flow: {summary}{more}")

    def to_dicts(self) -> list[dict[str, Any]]:
        """Issues as JSON-ready dicts (``{"detail": error.to_dicts()}`` is the 422 body)."""
        return [i.to_dict() for i in self.issues]


def load_flow(
    doc: dict[str, Any] | str | bytes, *, known_tools: Iterable[str] = (), known_secrets: Iterable[str] = ()
) -> Flow:
    """Parse (if JSON text) and validate a flow; raises :class:`FlowValidationError` listing every issue."""
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise FlowValidationError(
                [FlowIssue(None, "", "invalid_json", f"not valid JSON: {exc}")]
            ) from exc
    issues = validate_flow(doc, known_tools=known_tools, known_secrets=known_secrets)  # type: ignore[arg-type]
    if issues:
        raise FlowValidationError(issues)
    return Flow.model_validate(doc)


def validate_flow(
    doc: dict[str, Any], *, known_tools: Iterable[str] = (), known_secrets: Iterable[str] = ()
) -> list[FlowIssue]:
    """Every problem with a flow document; an empty list means it is valid.

    ``known_secrets`` are the secret names the host can inject into http nodes. ``known_tools`` is accepted
    for hosts that register named tools; no current node type references one, so it is not checked yet.
    """
    del known_tools  # reserved: see the docstring
    if not isinstance(doc, dict):
        return [FlowIssue(None, "", "schema", "a flow must be a JSON object")]
    return list(_Checker(doc, set(known_secrets)).run())


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# Labels pydantic puts in error locations for members of plain (non-discriminated) unions.
_UNION_MEMBER_LABELS = {"Choice", "str", "float", "int", "bool", "list", "dict"}


class _Checker:
    def __init__(self, doc: dict[str, Any], known_secrets: set[str]) -> None:
        self.doc = doc
        self.known_secrets = known_secrets
        raw_nodes = doc.get("nodes")
        self.nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
        self.index: dict[str, int] = {}  # id -> index of its first node
        for i, node in enumerate(self.nodes):
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                self.index.setdefault(node["id"], i)
        self.broken: set[int] = set()  # nodes with schema errors: opaque to the graph checks

    def run(self) -> Iterator[FlowIssue]:
        yield from self._schema()
        yield from self._start()
        for i, node in enumerate(self.nodes):
            if isinstance(node, dict) and node.get("type") in ANY_NODE_TYPES:
                yield from self._node(i, node)
        yield from self._variables()
        yield from self._graph()

    def _node_id(self, i: int) -> str | None:
        node = self.nodes[i] if 0 <= i < len(self.nodes) else None
        return node.get("id") if isinstance(node, dict) and isinstance(node.get("id"), str) else None

    # -- shape ------------------------------------------------------------------------------------------

    def _schema(self) -> Iterator[FlowIssue]:
        try:
            Flow.model_validate(self.doc)
        except ValidationError as exc:
            seen: set[tuple[str | None, str]] = set()
            for err in exc.errors(include_url=False):
                issue = self._schema_issue(err)
                if (issue.node, issue.field) not in seen:  # union members repeat one problem
                    seen.add((issue.node, issue.field))
                    yield issue

    def _schema_issue(self, err: dict[str, Any]) -> FlowIssue:
        loc = list(err.get("loc", ()))
        node_id: str | None = None
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
            i = loc[1]
            self.broken.add(i)
            node_id = self._node_id(i)
            raw = self.nodes[i] if i < len(self.nodes) else None
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
                inner = _path(loc[k + 1 :])
                message = f"{inner}: {message}" if inner else message
                loc = loc[:k]
                break
        if err.get("type") == "union_tag_invalid":
            message = f"unknown node type; expected one of {', '.join(ANY_NODE_TYPES)}"
        elif err.get("type") == "union_tag_not_found":
            message = "node has no type"
        return FlowIssue(node_id, _path(loc), "schema", message)

    def _start(self) -> Iterator[FlowIssue]:
        start = self.doc.get("start")
        if isinstance(start, str) and start not in self.index:
            yield FlowIssue(None, "start", "unknown_start", f"start node {start!r} does not exist")

    # -- per node ---------------------------------------------------------------------------------------

    def _node(self, i: int, node: dict[str, Any]) -> Iterator[FlowIssue]:
        nid = self._node_id(i)
        if nid is not None and self.index.get(nid) != i:
            yield FlowIssue(
                nid, f"nodes[{i}].id", "duplicate_node", f"node id {nid!r} is used more than once"
            )
        for path, target in edges_of(node):
            if isinstance(target, str) and target not in self.index:
                yield FlowIssue(nid, f"nodes[{i}].{path}", "unknown_node", f"no node with id {target!r}")
        kind = node["type"]
        if kind == "collect":
            yield from self._collect(i, nid, node)
        elif kind == "llm":
            names = [e.get("name") for e in node.get("exits") or [] if isinstance(e, dict)]
            for j, name in enumerate(names):
                if name == "stay":
                    yield FlowIssue(nid, f"nodes[{i}].exits[{j}].name", "reserved_exit", '"stay" is reserved')
                elif name in names[:j]:
                    yield FlowIssue(
                        nid, f"nodes[{i}].exits[{j}].name", "duplicate_exit", f"exit {name!r} is repeated"
                    )
        elif kind == "dtmf_menu":
            digits = [o.get("digit") for o in node.get("options") or [] if isinstance(o, dict)]
            for j, digit in enumerate(digits):
                if digit in digits[:j]:
                    yield FlowIssue(
                        nid,
                        f"nodes[{i}].options[{j}].digit",
                        "duplicate_digit",
                        f"digit {digit!r} is repeated",
                    )
        elif kind == "http":
            url = node.get("url")
            if isinstance(url, str) and "{" not in url:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    yield FlowIssue(
                        nid, f"nodes[{i}].url", "invalid_url", "url must be an http(s) URL with a host"
                    )

    def _collect(self, i: int, nid: str | None, node: dict[str, Any]) -> Iterator[FlowIssue]:
        kind = node.get("kind")
        if kind == "choice" and not node.get("choices"):
            yield FlowIssue(nid, f"nodes[{i}].choices", "missing_choices", "a choice collect needs choices")
        if kind == "regex":
            pattern = node.get("pattern")
            if not pattern:
                yield FlowIssue(
                    nid, f"nodes[{i}].pattern", "missing_pattern", "a regex collect needs a pattern"
                )
            elif isinstance(pattern, str):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    yield FlowIssue(
                        nid, f"nodes[{i}].pattern", "invalid_pattern", f"bad regular expression: {exc}"
                    )

    # -- variables, templates, conditions ---------------------------------------------------------------

    def _defined_variables(self) -> set[str]:
        defined = set(BUILTIN_VARIABLES)
        declared = self.doc.get("variables")
        if isinstance(declared, dict):
            defined.update(k for k in declared if isinstance(k, str))
        for node in self.nodes:
            if not isinstance(node, dict):
                continue
            if node.get("type") == "collect" and isinstance(node.get("variable"), str):
                defined.add(node["variable"])
            if node.get("type") == "http" and isinstance(node.get("save"), dict):
                defined.update(k for k in node["save"] if isinstance(k, str))
        return defined

    def _variables(self) -> Iterator[FlowIssue]:
        declared = self.doc.get("variables")
        if isinstance(declared, dict):
            for name in declared:
                if name in RESERVED_NAMES:
                    yield FlowIssue(
                        None, f"variables.{name}", "reserved_variable", f"{name!r} is a built-in name"
                    )
        defined = self._defined_variables()
        for i, node in enumerate(self.nodes):
            if not isinstance(node, dict) or node.get("type") not in ANY_NODE_TYPES:
                continue
            nid = self._node_id(i)
            kind = node["type"]
            if kind == "collect" and node.get("variable") in RESERVED_NAMES:
                yield FlowIssue(
                    nid,
                    f"nodes[{i}].variable",
                    "reserved_variable",
                    f"{node['variable']!r} is a built-in name",
                )
            if kind == "http" and isinstance(node.get("save"), dict):
                for name in node["save"]:
                    if name in RESERVED_NAMES:
                        yield FlowIssue(
                            nid,
                            f"nodes[{i}].save.{name}",
                            "reserved_variable",
                            f"{name!r} is a built-in name",
                        )
            for path, source in _template_strings(node, TEMPLATE_FIELDS[kind]):
                yield from self._template(nid, f"nodes[{i}].{path}", source, defined, kind == "http")
            if kind == "branch":
                for j, case in enumerate(node.get("cases") or []):
                    if isinstance(case, dict) and "when" in case:
                        yield from self._condition(nid, f"nodes[{i}].cases[{j}].when", case["when"], defined)

    def _template(
        self, nid: str | None, field: str, source: str, defined: set[str], http: bool
    ) -> Iterator[FlowIssue]:
        try:
            names = template_variables(source)
            secrets, other_secret_use = secret_references(source) if http else (set(), False)
        except TemplateError as exc:
            yield FlowIssue(nid, field, "template_syntax", str(exc))
            return
        for name in sorted(names - defined):
            if name == "secrets" and http:
                continue
            hint = " (secrets are only available in http nodes)" if name == "secrets" else ""
            yield FlowIssue(nid, field, "undefined_variable", f"variable {name!r} is never set{hint}")
        for name in sorted(secrets - self.known_secrets):
            yield FlowIssue(nid, field, "unknown_secret", f"secret {name!r} is not configured")
        if other_secret_use:
            yield FlowIssue(
                nid,
                field,
                "invalid_secret_reference",
                "use secrets only as {{ secrets.NAME }} with a literal name",
            )

    def _condition(self, nid: str | None, field: str, expr: Any, defined: set[str]) -> Iterator[FlowIssue]:
        problems = check_expression(expr)
        if problems:
            yield FlowIssue(nid, field, "invalid_condition", "; ".join(problems))
            return
        for name in sorted(expression_variables(expr) - defined):
            yield FlowIssue(nid, field, "undefined_variable", f"variable {name!r} is never set")

    # -- graph ------------------------------------------------------------------------------------------

    def _graph(self) -> Iterator[FlowIssue]:
        edges: dict[str, list[str]] = {}
        can_exit: set[str] = set()
        for nid, i in self.index.items():
            node = self.nodes[i]
            targets = [t for _, t in edges_of(node) if isinstance(t, str)]
            edges[nid] = [t for t in targets if t in self.index]
            opaque = i in self.broken or node.get("type") not in ANY_NODE_TYPES
            dangling = len(edges[nid]) < len(targets)  # already reported as unknown_node
            implicit_end = node.get("type") == "llm" and not node.get("on_max_turns")
            if node.get("type") in TERMINAL_TYPES or opaque or dangling or implicit_end:
                can_exit.add(nid)
        changed = True
        while changed:  # reverse reachability to a way out, to a fixpoint (graphs are small)
            changed = False
            for nid, targets in edges.items():
                if nid not in can_exit and any(t in can_exit for t in targets):
                    can_exit.add(nid)
                    changed = True

        start = self.doc.get("start")
        reachable: set[str] | None = None
        if isinstance(start, str) and start in self.index:
            reachable = {start}
            queue = deque([start])
            while queue:
                for target in edges[queue.popleft()]:
                    if target not in reachable:
                        reachable.add(target)
                        queue.append(target)
        for nid, i in sorted(self.index.items(), key=lambda kv: kv[1]):
            if reachable is not None and nid not in reachable:
                yield FlowIssue(
                    nid, f"nodes[{i}]", "unreachable", f"node {nid!r} cannot be reached from the start"
                )
            elif nid not in can_exit:
                yield FlowIssue(
                    nid, f"nodes[{i}]", "no_exit", f"node {nid!r} never leads to an end or transfer node"
                )


def _template_strings(node: dict[str, Any], fields: Iterable[str]) -> Iterator[tuple[str, str]]:
    for spec in fields:
        if spec.endswith(".*"):
            mapping = node.get(spec[:-2])
            if isinstance(mapping, dict):
                for key, value in mapping.items():
                    if isinstance(value, str):
                        yield f"{spec[:-2]}.{key}", value
        else:
            yield from _json_strings(node.get(spec), spec)


def _json_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for j, item in enumerate(value):
            yield from _json_strings(item, f"{path}[{j}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _json_strings(item, f"{path}.{key}")
