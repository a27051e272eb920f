"""The JSONLogic operators whose arguments are evaluated before the call: comparison, arithmetic, text, lists.

Each operator is a Python function in :data:`OPERATORS`. Conditions run on the event loop, so the operations
that copy or compare whole values (``merge``, ``cat``, ``==``, ``in``, ``*``) size their inputs first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_CHARS", "MAX_INT_BITS", "MAX_ITEMS", "OPERATORS", "LogicError", "as_number", "truthy"]

MAX_ITEMS = 10_000  # list or object entries one operation may walk or build
MAX_CHARS = 1_000_000  # characters one operation may walk or build
MAX_INT_BITS = 4096


class LogicError(ValueError):
    """An expression is malformed or cannot be evaluated."""


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


def as_number(value: Any) -> float | int:
    """``value`` as a number the JSONLogic way (null is 0, booleans and numeric strings count); else LogicError."""
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
            return as_number(a) == as_number(b)
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
        x, y = as_number(a), as_number(b)
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


def _divide(a: Any, b: Any) -> float | int:
    x, y = as_number(a), as_number(b)
    if y == 0:
        raise LogicError("division by zero")
    result = x / y
    return int(result) if isinstance(x, int) and isinstance(y, int) and result.is_integer() else result


def _modulo(a: Any, b: Any) -> float | int:
    x, y = as_number(a), as_number(b)
    if y == 0:
        raise LogicError("modulo by zero")
    return math.fmod(x, y) if isinstance(x, float) or isinstance(y, float) else int(math.fmod(x, y))


def _plus(*args: Any) -> float | int:
    return sum((as_number(a) for a in args), 0)


def _minus(*args: Any) -> float | int:
    if len(args) == 1:
        return -as_number(args[0])
    if len(args) != 2:
        raise LogicError("- takes one or two arguments")
    return as_number(args[0]) - as_number(args[1])


def _times(*args: Any) -> float | int:
    result: float | int = 1
    for a in args:
        factor = as_number(a)
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
    begin = int(as_number(start))
    if begin < 0:
        begin = max(len(text) + begin, 0)
    if length is None:
        return text[begin:]
    count = int(as_number(length))
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
        return pick(as_number(a) for a in args)

    return op


# Operators whose arguments are evaluated before the call. Lazy operators (if, and, or, var, missing, the
# array operators) are handled by the evaluator (flows.logic) because they decide which arguments to evaluate.
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
