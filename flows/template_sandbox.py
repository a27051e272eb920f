"""The Jinja2 sandbox flow templates run in: safe (no attribute tricks reach Python internals) and bounded.

- operators that can build huge values (``**``, ``*``, ``%``, ``+``) go through :meth:`call_binop`, which
  checks the size of the result before computing it. Intercepted operators are also never folded into
  constants at compile time, so ``{{ 9 ** 4000000 }}`` costs nothing to validate;
- every filter, test, call, attribute lookup, comparison, concatenation and loop iteration passes a
  checkpoint that sizes its inputs (a bounded walk) and checks the render's CPU-time budget
  (:class:`Checkpoints` rewrites the parsed template so that jinja's own code does too).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg, pass_context
from jinja2.visitor import NodeTransformer

from flows.template_limits import (
    MAX_COUNT,
    MAX_LOOP_ITERATIONS,
    MAX_VALUE_CHARS,
    MAX_VALUE_ITEMS,
    RENDER_BUDGET,
    TemplateError,
    check_count,
    check_format,
    check_join,
    check_power,
    check_product,
    check_replace,
    length_of,
    measure,
    tick,
)

__all__ = ["SANDBOX", "Checkpoints"]


# -- filters and tests ----------------------------------------------------------------------------------

# Filters that only look at a value's length or one end of it: no need to walk the value first.
_CHEAP_FILTERS = frozenset({"length", "count", "first", "last", "default", "d"})
# Filters whose integer arguments are widths or counts.
_COUNT_FILTERS = frozenset({"center", "indent", "truncate", "wordwrap", "batch", "slice", "urlize"})


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Size checks before filter ``name`` runs; returns the arguments to call it with."""
    if name in _COUNT_FILTERS:
        for arg in (*args, *kwargs.values()):
            check_count(arg)
    if name == "join":
        items = list(itertools.islice(value, MAX_VALUE_ITEMS + 1)) if isinstance(value, Iterable) else value
        check_join(args[0] if args else kwargs.get("d", ""), items)
        return (items, *args)
    if name == "replace" and len(args) >= 2:
        check_replace(value, args[0], args[1])
    elif name == "format":
        check_format(value)
    elif name == "sum" and not isinstance(kwargs.get("start", args[1] if len(args) > 1 else 0), int | float):
        raise TemplateError("sum only adds numbers")  # summing lists is quadratic
    if name not in _CHEAP_FILTERS:
        measure(value, *args, *kwargs.values())
    return (value, *args)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if _PassArg.from_obj(func) is not None else 0  # context, eval context or environment first

    @functools.wraps(func)  # keeps jinja_pass_arg, so jinja passes what the filter expects
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        checked = _check_filter(name, args[skip], args[skip + 1 :], kwargs)
        result = func(*args[:skip], *checked, **kwargs)
        measure(result)
        return result

    return guarded


def _guard_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        measure(*args, *kwargs.values())  # ``eq`` and ``in`` compare whole structures
        return func(*args, **kwargs)

    return guarded


@pass_context
def _loop_items(context: Any, iterable: Any) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this: each item costs one iteration and a CPU check."""
    budget = RENDER_BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateError(f"loops ran more than {MAX_LOOP_ITERATIONS} times")
            budget.tick()
        yield item


_COMPARE = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


@pass_context
def _compare(context: Any, values: list[Any], ops: list[str]) -> bool:
    """``a == b`` and friends: Python compares whole structures in C, so size them first."""
    tick()
    measure(*values)
    return all(_COMPARE[op](values[k], values[k + 1]) for k, op in enumerate(ops))


@pass_context
def _concat(context: Any, values: list[Any]) -> str:
    """``a ~ b``: str() of a value is sized before it is built."""
    tick()
    if measure(*values) > MAX_VALUE_CHARS:
        raise TemplateError(f"text longer than {MAX_VALUE_CHARS} characters")
    return "".join(str(v) for v in values)


def _safe_range(*args: int) -> range:
    span = range(*args)
    if len(span) > MAX_COUNT:
        raise TemplateError(f"range() of more than {MAX_COUNT} numbers")
    return span


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` passes here before it becomes text."""
    tick()
    measure(value)
    return value


class Checkpoints(NodeTransformer):
    """Rewrites the nodes whose work jinja does in unchecked code into calls of the checked helpers."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _helper("_vx_loop", node.iter, lineno=node.lineno)
        return node

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        values = nodes.List([node.expr, *(op.expr for op in node.ops)], lineno=node.lineno)
        ops = nodes.Const([op.op for op in node.ops], lineno=node.lineno)
        return _helper("_vx_compare", values, ops, lineno=node.lineno)

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _helper("_vx_concat", nodes.List(list(node.nodes), lineno=node.lineno), lineno=node.lineno)


def _helper(name: str, value: nodes.Expr, *args: nodes.Expr, lineno: int) -> nodes.Filter:
    return nodes.Filter(value, name, list(args), [], None, None, lineno=lineno)


class _FlowEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox (templates cannot change flow variables), bounded in size and time."""

    intercepted_binops = frozenset({"**", "*", "%", "+", "-", "/", "//"})

    def __init__(self) -> None:
        # Autoescape is off: output is speech or an HTTP request, not HTML.
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            finalize=_finalize,
        )
        self.globals["range"] = _safe_range
        for unbounded in ("lipsum", "namespace"):  # lipsum(n) writes n paragraphs; namespaces are mutable
            self.globals.pop(unbounded, None)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(_vx_loop=_loop_items, _vx_compare=_compare, _vx_concat=_concat)
        self.tests = {name: _guard_test(f) for name, f in self.tests.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        if operator == "**":
            check_power(left, right)
        elif operator == "*":
            check_product(left, right)
        elif operator == "%" and isinstance(left, str):
            check_format(left)
            measure(right)
        elif operator == "+" and length_of(left) + length_of(right) > MAX_VALUE_CHARS:
            raise TemplateError(f"sum longer than {MAX_VALUE_CHARS} items or characters")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str | list | tuple | dict):  # a method of a value the template holds
            _check_method(owner, getattr(method, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        measure(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        return super().getitem(obj, argument)


def _check_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    measure(owner, *args, *kwargs.values())
    if isinstance(owner, str):
        for arg in (*args, *kwargs.values()):
            check_count(arg)  # widths and counts: "x".center(n), "0".zfill(n), s.expandtabs(n)
        if name == "join" and args:
            if not isinstance(args[0], list | tuple | str):
                raise TemplateError("join() takes a list")
            check_join(owner, list(args[0]))
        elif name == "replace" and len(args) >= 2:
            check_replace(owner, args[0], args[1])
        elif name in ("format", "format_map"):
            check_format(owner)


SANDBOX = _FlowEnvironment()
