"""A small, safe JSONLogic evaluator for branch conditions (https://jsonlogic.com).

Expressions are plain JSON; each operator is a Python function in a dict, so nothing is ever ``eval``-ed and a
flow can only compute with the operators listed here (the eager ones are in :mod:`flows.logic_operators`,
the lazy ones in :func:`_apply_lazy`). Depth is bounded so a hostile document cannot exhaust the stack.

Conditions run on the event loop, so the work is bounded too: every evaluation step checks a CPU-time
budget, and the operations that copy or compare whole values (``merge``, ``cat``, ``==``, ``in``, ``*``)
size their inputs first. ``map`` inside ``map`` can otherwise build a structure that doubles per level.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from typing import Any

from flows.logic_operators import OPERATORS, LogicError, as_number, truthy

__all__ = ["OPERATORS", "LogicError", "check_expression", "evaluate", "expression_variables", "truthy"]

MAX_DEPTH = 64
EVAL_CPU_S = 0.02  # CPU time one evaluation may use


# The CPU-time deadline of the evaluation running in this context (None outside evaluate()).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("flow_logic_deadline", default=None)


def _step() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.thread_time() > deadline:
        raise LogicError(f"condition needs more than {EVAL_CPU_S * 1000:g} ms")


def _var_lookup(data: Any, path: Any, default: Any = None) -> Any:
    if path is None or path == "" or path == []:
        return data
    if isinstance(path, int | float) and not isinstance(path, bool):
        path = str(int(path))
    if not isinstance(path, str):
        raise LogicError(f"var path must be a string: {path!r}")
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return default
    return current


LAZY_OPERATORS = frozenset(
    {"if", "?:", "and", "or", "var", "missing", "missing_some", "map", "filter", "all", "some", "none"}
)
# Array operators evaluate their second argument once per item, with the item as the data.
SCOPED_OPERATORS = frozenset({"map", "filter", "all", "some", "none"})


def _is_operation(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1


def evaluate(expr: Any, data: Mapping[str, Any] | None = None) -> Any:
    """Evaluate a JSONLogic expression against ``data``; raises :class:`LogicError` on bad input, and on an
    expression that needs more than EVAL_CPU_S of CPU time or builds values past the size caps."""
    token = _DEADLINE.set(time.thread_time() + EVAL_CPU_S)
    try:
        return _eval(expr, data if data is not None else {}, 0)
    except RecursionError:
        raise LogicError("expression nested too deeply") from None
    finally:
        _DEADLINE.reset(token)


def _eval(expr: Any, data: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise LogicError("expression nested too deeply")
    _step()
    if isinstance(expr, list):
        return [_eval(item, data, depth + 1) for item in expr]
    if not isinstance(expr, dict):
        return expr
    if len(expr) != 1:
        raise LogicError(f"an operation must have exactly one key, got {sorted(expr)!r}")
    op, raw_args = next(iter(expr.items()))
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    if op in LAZY_OPERATORS:
        return _apply_lazy(op, args, data, depth)
    func = OPERATORS.get(op)
    if func is None:
        raise LogicError(f"unknown operator {op!r}")
    values = [_eval(a, data, depth + 1) for a in args]
    try:
        return func(*values)
    except LogicError:
        raise
    except TypeError as exc:
        raise LogicError(f"bad arguments for {op!r}: {exc}") from exc


def _apply_lazy(op: str, args: list[Any], data: Any, depth: int) -> Any:
    ev = lambda a: _eval(a, data, depth + 1)  # noqa: E731 - a short local helper reads best here
    if op == "var":
        path = ev(args[0]) if args else None
        default = ev(args[1]) if len(args) > 1 else None
        return _var_lookup(data, path, default)
    if op == "missing":
        names = ev(args[0]) if len(args) == 1 and _is_operation(args[0]) else [ev(a) for a in args]
        return [n for n in names if _var_lookup(data, n) in (None, "")]
    if op == "missing_some":
        if len(args) != 2:
            raise LogicError("missing_some takes [need, [names]]")
        need, names = int(as_number(ev(args[0]))), ev(args[1])
        missing = [n for n in names if _var_lookup(data, n) in (None, "")]
        return [] if len(names) - len(missing) >= need else missing
    if op in ("if", "?:"):
        i = 0
        while i + 1 < len(args):
            if truthy(ev(args[i])):
                return ev(args[i + 1])
            i += 2
        return ev(args[i]) if i < len(args) else None
    if op == "and":
        value: Any = None
        for a in args:
            value = ev(a)
            if not truthy(value):
                return value
        return value
    if op == "or":
        value = None
        for a in args:
            value = ev(a)
            if truthy(value):
                return value
        return value
    # Array operators: [array, logic] (+ an initial value for reduce, not supported).
    items = ev(args[0]) if args else []
    if not isinstance(items, list):
        items = []
    logic = args[1] if len(args) > 1 else None
    each = [_eval(logic, item, depth + 1) for item in items]
    if op == "map":
        return each
    if op == "filter":
        return [item for item, keep in zip(items, each, strict=True) if truthy(keep)]
    if op == "all":
        return bool(items) and all(truthy(v) for v in each)
    if op == "some":
        return any(truthy(v) for v in each)
    return not any(truthy(v) for v in each)  # none


def check_expression(expr: Any, depth: int = 0) -> list[str]:
    """Problems that make ``expr`` unusable (unknown operators, malformed operations); empty when fine."""
    if depth > MAX_DEPTH:
        return ["expression nested too deeply"]
    problems: list[str] = []
    if isinstance(expr, list):
        for item in expr:
            problems.extend(check_expression(item, depth + 1))
    elif isinstance(expr, dict):
        if len(expr) != 1:
            return [f"an operation must have exactly one key, got {sorted(expr)!r}"]
        op, args = next(iter(expr.items()))
        if op not in OPERATORS and op not in LAZY_OPERATORS:
            problems.append(f"unknown operator {op!r}")
        problems.extend(check_expression(args, depth + 1))
    return problems


def expression_variables(expr: Any) -> set[str]:
    """Top-level variable names an expression reads with literal ``var``/``missing`` paths.

    ``{"var": "booking.id"}`` reads ``booking``. Paths computed at run time, and paths inside the per-item
    logic of array operators (which read the item, not the flow), cannot be known and are not listed.
    """
    found: set[str] = set()
    _collect_vars(expr, found, 0)
    return found


def _collect_vars(expr: Any, found: set[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    if isinstance(expr, list):
        for item in expr:
            _collect_vars(item, found, depth + 1)
        return
    if not isinstance(expr, dict) or len(expr) != 1:
        return
    op, raw_args = next(iter(expr.items()))
    args = raw_args if isinstance(raw_args, list) else [raw_args]
    if op == "var":
        if args and isinstance(args[0], str) and args[0]:
            found.add(args[0].split(".")[0])
        for a in args[1:]:
            _collect_vars(a, found, depth + 1)
        return
    if op == "missing":
        for a in args:
            if isinstance(a, str) and a:
                found.add(a.split(".")[0])
        return
    if op == "missing_some":
        if len(args) == 2 and isinstance(args[1], list):
            found.update(a.split(".")[0] for a in args[1] if isinstance(a, str) and a)
        return
    if op in SCOPED_OPERATORS:
        if args:
            _collect_vars(args[0], found, depth + 1)
        return
    for a in args:
        _collect_vars(a, found, depth + 1)
