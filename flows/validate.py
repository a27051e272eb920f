"""Whole-document flow validation that reports every problem at once.

The pydantic models check each node's shape; this module adds the checks that need the whole graph and
turns everything into flat, stable :class:`FlowIssue` records, the body of an HTTP 422. Graph checks run on
the raw document, so one malformed node does not hide the problems of the others.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import regex
from pydantic import ValidationError

from flows.logic import check_expression, expression_variables
from flows.schema import (
    ANY_NODE_TYPES,
    BUILTIN_VARIABLES,
    MAX_NODES,
    RESERVED_NAMES,
    TERMINAL_TYPES,
    Flow,
    edges_of,
)
from flows.templates import TemplateError, secret_references, template_variables, uses_secrets

__all__ = [
    "FlowIssue",
    "FlowValidationError",
    "load_flow",
    "load_flow_off_loop",
    "run_check",
    "validate_flow",
]

T = TypeVar("T")

# Caps checked before any costly work, by one bounded walk of the document. Real flows are far inside them
# (the largest shipped example has ~300 values); they bound what one request can make the checker do.
MAX_DEPTH = 80  # nesting of objects and lists (a branch condition may nest up to 64 on its own)
MAX_VALUES = 100_000  # values in the whole document
MAX_STRING_CHARS = 100_000  # one string
MAX_DOCUMENT_CHARS = 2_000_000  # all strings (and keys) together
MAX_ISSUES = 200  # issues reported; the rest are summed up in one last issue
MAX_TEMPLATE_CHARS = 4000  # one template (the schema's limit for text fields; http body strings too)
# All templates of a flow together (plain texts without "{" do not count). Checking costs up to 5 ms per
# 1,000 characters: this bounds a flow's template checks to about half a second.
MAX_FLOW_TEMPLATE_CHARS = 100_000
MAX_PATTERN_CHARS = 500  # a collect node's regular expression (also the schema's limit)
# The product of a pattern's repeat counts: "(a{100}){100}" expands to 10,000 steps when it compiles, and
# "((a{100}){100}){100}" took 0.3 s to compile. Real patterns ("\d{4}-\d{2}") are in the tens.
MAX_PATTERN_REPEAT = 10_000

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
        except (ValueError, RecursionError) as exc:
            raise FlowValidationError(
                [FlowIssue(None, "", "invalid_json", f"not valid JSON: {str(exc)[:200]}")]
            ) from None
    issues = validate_flow(doc, known_tools=known_tools, known_secrets=known_secrets)  # type: ignore[arg-type]
    if issues:
        raise FlowValidationError(issues)
    return Flow.model_validate(doc)


# Validation is CPU work of up to a few hundred milliseconds for a large flow: it runs on these threads,
# never on the event loop. Only two: a flood of checks waits in this queue (and times out there) instead of
# starting a thread each and starving the loop of the GIL.
_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flow-check")


async def run_check(job: Callable[[], T], *, timeout_s: float) -> T:
    """Run ``job`` (a flow check: parsing, :func:`load_flow`) on a check thread; the event loop stays free.

    A job that has not finished (queue time included) after ``timeout_s`` raises
    :class:`FlowValidationError` with one ``check_timeout`` issue. A thread cannot be stopped, so the caps
    of :func:`validate_flow` are what bound the work; the time limit only bounds the caller's wait.
    """
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(_CHECKS, job), timeout_s)
    except TimeoutError:
        message = f"the flow could not be checked within {timeout_s:g} s; make it smaller and try again"
        raise FlowValidationError([FlowIssue(None, "", "check_timeout", message)]) from None


async def load_flow_off_loop(
    doc: dict[str, Any] | str | bytes, *, known_secrets: Iterable[str] = (), timeout_s: float
) -> Flow:
    """:func:`load_flow` through :func:`run_check`."""
    return await run_check(
        functools.partial(load_flow, doc, known_secrets=tuple(known_secrets)), timeout_s=timeout_s
    )


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
    limits = _Limits(doc)
    if limits.exceeded:  # caps first: nothing costly runs on an oversized document
        return limits.issues
    issues = limits.issues
    for issue in _Checker(doc, set(known_secrets)).run():
        if len(issues) == MAX_ISSUES:
            issues.append(
                FlowIssue(None, "", "too_many_issues", f"more than {MAX_ISSUES} issues; fix these first")
            )
            break
        issues.append(issue)
    return issues


class _Limits:
    """One bounded, iterative walk of the whole document: the size caps, and numbers JSON cannot hold.

    ``exceeded`` means a cap was hit and the document must not be checked further. It visits at most
    MAX_VALUES values, so it is cheap on any input, however large or deep.
    """

    def __init__(self, doc: dict[str, Any]) -> None:
        self.issues: list[FlowIssue] = []
        self.exceeded = False
        nodes = doc.get("nodes")
        if isinstance(nodes, list) and len(nodes) > MAX_NODES:
            self._cap("nodes", f"a flow has at most {MAX_NODES} nodes, this one has {len(nodes)}")
        else:
            self._walk(doc)

    def _cap(self, field: str, message: str) -> None:
        self.issues.append(FlowIssue(None, field, "too_large", message))
        self.exceeded = True

    def _walk(self, doc: dict[str, Any]) -> None:
        values = chars = 0
        stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
        while stack:
            value, path = stack.pop()
            values += 1
            if values > MAX_VALUES:
                return self._cap("", f"a flow holds at most {MAX_VALUES} values")
            if isinstance(value, str):
                chars += len(value)
                if len(value) > MAX_STRING_CHARS:
                    self._cap(_path(path), f"text longer than {MAX_STRING_CHARS} characters")
            elif isinstance(value, float) and not math.isfinite(value):
                self.issues.append(
                    FlowIssue(None, _path(path), "invalid_number", "NaN and Infinity are not JSON")
                )
            elif isinstance(value, dict | list):
                if len(path) >= MAX_DEPTH:
                    return self._cap(_path(path), f"nested deeper than {MAX_DEPTH} levels")
                if isinstance(value, list):
                    stack.extend((item, (*path, j)) for j, item in enumerate(value))
                    continue
                for key, item in value.items():
                    if not isinstance(key, str):
                        return self._cap(_path(path), "object keys must be strings")
                    chars += len(key)
                    stack.append((item, (*path, key)))
            if chars > MAX_DOCUMENT_CHARS:
                return self._cap("", f"a flow holds at most {MAX_DOCUMENT_CHARS} characters of text")
        return None


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
        self.template_chars = 0  # characters of templates parsed so far

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
            for j, name in _repeats(node.get("exits"), "name"):
                yield FlowIssue(
                    nid, f"nodes[{i}].exits[{j}].name", "duplicate_exit", f"exit {name!r} is repeated"
                )
            for j, exit_ in enumerate(_list(node.get("exits"))):
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
                problem = pattern_problem(pattern)
                if problem:
                    yield FlowIssue(nid, f"nodes[{i}].pattern", "invalid_pattern", problem)

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
            if kind == "collect" and _is_reserved(node.get("variable")):
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
            url = node.get("url")
            if kind == "http" and isinstance(url, str) and _uses_secrets(url):
                yield FlowIssue(
                    nid,
                    f"nodes[{i}].url",
                    "secret_in_url",
                    "secrets may be used in headers and the body, never in the url (urls end up in logs "
                    "and error messages)",
                )
            if kind == "branch":
                for j, case in enumerate(_list(node.get("cases"))):
                    if isinstance(case, dict) and "when" in case:
                        yield from self._condition(nid, f"nodes[{i}].cases[{j}].when", case["when"], defined)

    def _template(
        self, nid: str | None, field: str, source: str, defined: set[str], http: bool
    ) -> Iterator[FlowIssue]:
        if "{" not in source:
            return  # plain text: nothing to parse
        if len(source) > MAX_TEMPLATE_CHARS:
            yield FlowIssue(nid, field, "too_large", f"template longer than {MAX_TEMPLATE_CHARS} characters")
            return
        self.template_chars += len(source)
        if self.template_chars > MAX_FLOW_TEMPLATE_CHARS:
            if self.template_chars - len(source) <= MAX_FLOW_TEMPLATE_CHARS:  # say it once
                message = (
                    f"templates hold more than {MAX_FLOW_TEMPLATE_CHARS} characters; the rest are not checked"
                )
                yield FlowIssue(nid, field, "too_large", message)
            return
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
            kind = node.get("type")
            targets = [t for _, t in edges_of(node) if isinstance(t, str)]
            edges[nid] = [t for t in targets if t in self.index]
            opaque = i in self.broken or kind not in ANY_NODE_TYPES
            dangling = len(edges[nid]) < len(targets)  # already reported as unknown_node
            implicit_end = kind == "llm" and not node.get("on_max_turns")
            if opaque or kind in TERMINAL_TYPES or dangling or implicit_end:
                can_exit.add(nid)
        # Reverse reachability from the ways out: one breadth-first pass over the reversed edges, linear in
        # the size of the graph (a fixpoint loop here was quadratic: 50 s for 10,000 nodes).
        sources: dict[str, list[str]] = {}
        for nid, targets in edges.items():
            for target in targets:
                sources.setdefault(target, []).append(nid)
        pending = deque(can_exit)
        while pending:
            for source in sources.get(pending.popleft(), ()):
                if source not in can_exit:
                    can_exit.add(source)
                    pending.append(source)

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


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _repeats(items: Any, key: str) -> Iterator[tuple[int, str]]:
    """(index, value) of each item whose string ``key`` repeats an earlier item's."""
    seen: set[str] = set()
    for j, item in enumerate(_list(items)):
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str):
            if value in seen:
                yield j, value
            seen.add(value)


def _is_reserved(name: Any) -> bool:
    return isinstance(name, str) and name in RESERVED_NAMES


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1" and friends
        return False


def _uses_secrets(source: str) -> bool:
    try:
        return uses_secrets(source)
    except TemplateError:
        return False  # reported as template_syntax


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
