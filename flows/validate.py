"""Whole-document flow validation that reports every problem at once.

The pydantic models check each node's shape; this module adds the checks that need the whole graph and
turns everything into flat, stable :class:`FlowIssue` records, the body of an HTTP 422. Graph checks run on
the raw document, so one malformed node does not hide the problems of the others.

The checks themselves live in ``validate_limits`` (size caps), ``validate_structure`` (schema, ids, edges),
``validate_variables`` (variables, templates, conditions) and ``validate_graph`` (reachability, exits).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from flows.schema import ANY_NODE_TYPES, Flow
from flows.validate_graph import graph_issues
from flows.validate_issues import FlowIssue, FlowValidationError
from flows.validate_limits import DocumentLimits
from flows.validate_structure import RawFlow, node_issues, schema_issues, start_issues
from flows.validate_structure import pattern_problem as pattern_problem  # re-exported
from flows.validate_variables import VariableChecks

__all__ = [
    "FlowIssue",
    "FlowValidationError",
    "load_flow",
    "load_flow_off_loop",
    "run_check",
    "validate_flow",
]

T = TypeVar("T")

MAX_ISSUES = 200  # issues reported; the rest are summed up in one last issue


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
    limits = DocumentLimits(doc)
    if limits.exceeded:  # caps first: nothing costly runs on an oversized document
        return limits.issues
    issues = limits.issues
    for issue in _check(doc, set(known_secrets)):
        if len(issues) == MAX_ISSUES:
            issues.append(
                FlowIssue(None, "", "too_many_issues", f"more than {MAX_ISSUES} issues; fix these first")
            )
            break
        issues.append(issue)
    return issues


def _check(doc: dict[str, Any], known_secrets: set[str]) -> Iterator[FlowIssue]:
    """Every issue of a document within the caps, in order: schema, start, nodes, variables, graph."""
    flow = RawFlow(doc)
    yield from schema_issues(flow)
    yield from start_issues(flow)
    for i, node in enumerate(flow.nodes):
        if isinstance(node, dict) and node.get("type") in ANY_NODE_TYPES:
            yield from node_issues(flow, i, node)
    yield from VariableChecks(flow, known_secrets).run()
    yield from graph_issues(flow)
