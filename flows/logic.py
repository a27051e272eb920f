"""A small, safe JSONLogic evaluator for branch conditions (https://jsonlogic.com).

Expressions are plain JSON; each operator is a Python function in a dict, so nothing is ever ``eval``-ed and a
flow can only compute with the operators listed here. Depth is bounded so a hostile document cannot exhaust
the stack.

Conditions run on the event loop, so the work is bounded too: every evaluation step checks a CPU-time
budget, and the operations that copy or compare whole values (``merge``, ``cat``, ``==``, ``in``, ``*``)
size their inputs first. ``map`` inside ``map`` can otherwise build a structure that doubles per level.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["OPERATORS", "LogicError", "check_expression", "evaluate", "expression_variables", "truthy"]

MAX_DEPTH = 64
EVAL_CPU_S = 0.02  # CPU time one evaluation may use
MAX_ITEMS = 10_000  # list or object entries one operation may walk or build
MAX_CHARS = 1_000_000  # characters one operation may walk or build
MAX_INT_BITS = 4096


class LogicError(ValueError):
    """An expression is malformed or cannot be evaluated."""


# The CPU-time deadline of the evaluation running in this context (None outside evaluate()).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("flow_logic_deadline", default=None)


def _step() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.thread_time() > deadline:
        raise LogicError(f"condition needs more than {EVAL_CPU_S * 1000:g} ms")


def _sized(*values: Any) -> None:
    """Raise LogicError if ``values`` hold more than MAX_ITEMS entries or MAX_CHARS characters; a bounded
    walk, so it is cheap even on a structure that shares one list many times over."""
    chars = items = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list | dict):
            items += len(value)
            stack.extend(value.values() if isinstance(value, dict) else value)
        if items > MAX_ITEMS or chars > MAX_CHARS:
            raise LogicError(f"value too large (more than {MAX_ITEMS} items or {MAX_CHARS} characters)")


def truthy(value: Any) -> bool:
    """JSONLogic truthiness: JavaScript's, except that an empty list is false."""
    if isinstance(value, dict):
        return True
    return bool(value)


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if value is None:
        return 0
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError as exc:
            raise LogicError(f"not a number: {value!r}") from exc
        return int(number) if number.is_integer() and "." not in value else number
    raise LogicError(f"not a number: {value!r}")


def _loose_equal(a: Any, b: Any) -> bool:
    # JavaScript-style ==, limited to JSON types: numbers, numeric strings and booleans compare as numbers.
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        _sized(a, b)  # Python compares whole structures in one C call
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, int | float | bool | str) and isinstance(b, int | float | bool | str):
        try:
            return _number(a) == _number(b)
        except LogicError:
            return False
    return a == b


def _strict_equal(a: Any, b: Any) -> bool:
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        _sized(a, b)
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return (
        type(a) is type(b)
        and a == b
        or (isinstance(a, int | float) and isinstance(b, int | float) and a == b)
    )


def _compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1; None when the values cannot be ordered (any comparison is then false)."""
    if a is None or b is None:
        return None
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    try:
        x, y = _number(a), _number(b)
    except LogicError:
        return None
    return (x > y) - (x < y)


def _ordered(test: Callable[[int], bool]) -> Callable[..., bool]:
    def op(*args: Any) -> bool:
        if len(args) < 2:
            raise LogicError("a comparison needs two or three arguments")
        for a, b in zip(args, args[1:], strict=False):
            c = _compare(a, b)
            if c is None or not test(c):
                return False
        return True

    return op


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


def _divide(a: Any, b: Any) -> float | int:
    x, y = _number(a), _number(b)
    if y == 0:
        raise LogicError("division by zero")
    result = x / y
    return int(result) if isinstance(x, int) and isinstance(y, int) and result.is_integer() else result


def _modulo(a: Any, b: Any) -> float | int:
    x, y = _number(a), _number(b)
    if y == 0:
        raise LogicError("modulo by zero")
    return math.fmod(x, y) if isinstance(x, float) or isinstance(y, float) else int(math.fmod(x, y))


def _plus(*args: Any) -> float | int:
    return sum((_number(a) for a in args), 0)


def _minus(*args: Any) -> float | int:
    if len(args) == 1:
        return -_number(args[0])
    if len(args) != 2:
        raise LogicError("- takes one or two arguments")
    return _number(args[0]) - _number(args[1])


def _times(*args: Any) -> float | int:
    result: float | int = 1
    for a in args:
        factor = _number(a)
        if (
            isinstance(result, int)
            and isinstance(factor, int)
            and result.bit_length() + factor.bit_length() > MAX_INT_BITS
        ):
            raise LogicError(f"product larger than {MAX_INT_BITS} bits")
        result *= factor
    return result


def _stringify(value: Any) -> str:
    if isinstance(value, list | dict):
        _sized(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _in(needle: Any, haystack: Any) -> bool:
    if isinstance(haystack, str):
        return _stringify(needle) in haystack
    if isinstance(haystack, list):
        _sized(needle, haystack)
        return any(_loose_equal(needle, item) for item in haystack)
    return False


def _cat(*args: Any) -> str:
    parts = [_stringify(a) for a in args]
    if sum(len(p) for p in parts) > MAX_CHARS:
        raise LogicError(f"text longer than {MAX_CHARS} characters")
    return "".join(parts)


def _substr(source: Any, start: Any, length: Any = None) -> str:
    text = _stringify(source)
    begin = int(_number(start))
    if begin < 0:
        begin = max(len(text) + begin, 0)
    if length is None:
        return text[begin:]
    count = int(_number(length))
    end = len(text) + count if count < 0 else begin + count
    return text[begin:end]


def _merge(*args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        out.extend(a if isinstance(a, list) else [a])
        if len(out) > MAX_ITEMS:
            raise LogicError(f"merge of more than {MAX_ITEMS} items")
    return out


def _extremum(pick: Callable[..., Any]) -> Callable[..., Any]:
    def op(*args: Any) -> Any:
        if not args:
            return None
        return pick(_number(a) for a in args)

    return op


# Operators whose arguments are evaluated before the call. Lazy operators (if, and, or, var, missing, the
# array operators) are handled in _apply because they decide which arguments to evaluate.
OPERATORS: dict[str, Callable[..., Any]] = {
    "==": lambda a=None, b=None: _loose_equal(a, b),
    "!=": lambda a=None, b=None: not _loose_equal(a, b),
    "===": lambda a=None, b=None: _strict_equal(a, b),
    "!==": lambda a=None, b=None: not _strict_equal(a, b),
    "<": _ordered(lambda c: c < 0),
    "<=": _ordered(lambda c: c <= 0),
    ">": _ordered(lambda c: c > 0),
    ">=": _ordered(lambda c: c >= 0),
    "!": lambda a=None, *_: not truthy(a),
    "!!": lambda a=None, *_: truthy(a),
    "+": _plus,
    "-": _minus,
    "*": _times,
    "/": _divide,
    "%": _modulo,
    "max": _extremum(max),
    "min": _extremum(min),
    "cat": _cat,
    "substr": _substr,
    "in": lambda a=None, b=None: _in(a, b),
    "merge": _merge,
    "lower": lambda a="": _stringify(a).lower(),
    "upper": lambda a="": _stringify(a).upper(),
}
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
        need, names = int(_number(ev(args[0]))), ev(args[1])
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
