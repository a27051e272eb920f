"""Jinja2 templates for everything a flow says or sends.

Templates run in a sandbox (flow documents come from users, so no attribute tricks reach Python internals)
with ``StrictUndefined`` (a misspelt variable is an error, never a silent empty string).

Flow documents are also untrusted in how much work they ask for, and rendering runs on the event loop, so
the sandbox here is bounded as well as safe:

- operators that can build huge values (``**``, ``*``, ``%``, ``+``) go through :meth:`call_binop`, which
  checks the size of the result before computing it. Intercepted operators are also never folded into
  constants at compile time, so ``{{ 9 ** 4000000 }}`` costs nothing to validate;
- every filter, test, call, attribute lookup, comparison, concatenation and loop iteration passes a
  checkpoint that sizes its inputs (a bounded walk) and checks the render's CPU-time budget;
- the rendered text is capped at :data:`MAX_OUTPUT_CHARS`.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg, pass_context
from jinja2.visitor import NodeTransformer

__all__ = [
    "MAX_OUTPUT_CHARS",
    "TemplateError",
    "check_template",
    "render",
    "render_json",
    "secret_references",
    "template_variables",
]

MAX_OUTPUT_CHARS = 100_000  # one rendered text (a spoken sentence, a URL, a header, a body string)
MAX_VALUE_CHARS = 1_000_000  # characters one value a template works on may hold (an http response is <= 1 MB)
MAX_VALUE_ITEMS = 10_000  # list or dict entries one filter, call or comparison may walk
MAX_INT_BITS = 4096  # about 1,200 digits: far beyond any real number, far below a slow one
MAX_COUNT = 10_000  # width and count arguments (center, indent, zfill, range, ...)
MAX_LOOP_ITERATIONS = 10_000  # per render, all loops together
MAX_TEMPLATE_DEPTH = 30  # levels of the parsed template: blocks in blocks, operators in operators
RENDER_CPU_S = 0.02  # CPU time one render may use (it runs on the event loop)


class TemplateError(ValueError):
    """A template failed to parse or render; the message says why."""


class _Budget:
    """What one render may still spend: CPU time and loop iterations."""

    def __init__(self) -> None:
        self.deadline = time.thread_time() + RENDER_CPU_S
        self.iterations = 0

    def tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise TemplateError(f"template needs more than {RENDER_CPU_S * 1000:g} ms to render")


# The running render's budget. Unset while a template is compiled (constant folding calls the same checked
# filters), where only the size checks apply.
_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("flow_template_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


# -- sizes ----------------------------------------------------------------------------------------------


def _measure(*values: Any) -> int:
    """Characters held by ``values`` (strings inside lists and dicts included); raises :class:`TemplateError`
    past the size caps. Visits at most MAX_VALUE_ITEMS entries, so it is cheap on any value, including
    structures that share one list many times over."""
    chars = items = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > MAX_INT_BITS:
                raise TemplateError(f"number larger than {MAX_INT_BITS} bits")
        elif isinstance(value, list | tuple | set | frozenset | dict):
            items += len(value)
            if items > MAX_VALUE_ITEMS:
                raise TemplateError(f"value with more than {MAX_VALUE_ITEMS} items")
            stack.extend(value.items() if isinstance(value, dict) else value)
        if chars > MAX_VALUE_CHARS:
            raise TemplateError(f"value longer than {MAX_VALUE_CHARS} characters")
    return chars


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple) else 0


def _check_count(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
        raise TemplateError(f"count or width {value} is larger than {MAX_COUNT}")


# "%-99999s" and "{:>99999}" build huge strings from tiny ones.
_WIDE_FORMAT = re.compile(r"%[#0 +\-]*(\*|\d{5,})|%[#0 +\-]*\d*\.(\*|\d{5,})|\{[^{}]*\d{5,}[^{}]*\}")


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise TemplateError("format width or precision too large")


def _check_power(base: Any, exponent: Any) -> None:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (base, exponent))
    if ints and exponent > 0 and abs(base) > 1 and math.log2(abs(base)) * exponent > MAX_INT_BITS:
        raise TemplateError(f"{base} ** {exponent} is larger than {MAX_INT_BITS} bits")


def _check_product(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int):
            if len(seq) * count > MAX_VALUE_CHARS or (not isinstance(seq, str) and count > MAX_VALUE_ITEMS):
                raise TemplateError("repetition result too large")
            return
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
    if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise TemplateError(f"product larger than {MAX_INT_BITS} bits")


def _check_join(separator: Any, items: list[Any]) -> None:
    total = _measure(items) + len(items) * _length(separator)
    if total > MAX_VALUE_CHARS:
        raise TemplateError(f"joined text would be longer than {MAX_VALUE_CHARS} characters")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = len(text) + 1 if old == "" else text.count(old)
    if len(text) + hits * max(len(new) - len(old), 0) > MAX_VALUE_CHARS:
        raise TemplateError(f"replaced text would be longer than {MAX_VALUE_CHARS} characters")


# -- filters and tests ----------------------------------------------------------------------------------

# Filters that only look at a value's length or one end of it: no need to walk the value first.
_CHEAP_FILTERS = frozenset({"length", "count", "first", "last", "default", "d"})
# Filters whose integer arguments are widths or counts.
_COUNT_FILTERS = frozenset({"center", "indent", "truncate", "wordwrap", "batch", "slice", "urlize"})


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Size checks before filter ``name`` runs; returns the arguments to call it with."""
    if name in _COUNT_FILTERS:
        for arg in (*args, *kwargs.values()):
            _check_count(arg)
    if name == "join":
        items = list(itertools.islice(value, MAX_VALUE_ITEMS + 1)) if isinstance(value, Iterable) else value
        _check_join(args[0] if args else kwargs.get("d", ""), items)
        return (items, *args)
    if name == "replace" and len(args) >= 2:
        _check_replace(value, args[0], args[1])
    elif name == "format":
        _check_format(value)
    elif name == "sum" and not isinstance(kwargs.get("start", args[1] if len(args) > 1 else 0), int | float):
        raise TemplateError("sum only adds numbers")  # summing lists is quadratic
    if name not in _CHEAP_FILTERS:
        _measure(value, *args, *kwargs.values())
    return (value, *args)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if _PassArg.from_obj(func) is not None else 0  # context, eval context or environment first

    @functools.wraps(func)  # keeps jinja_pass_arg, so jinja passes what the filter expects
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        checked = _check_filter(name, args[skip], args[skip + 1 :], kwargs)
        result = func(*args[:skip], *checked, **kwargs)
        _measure(result)
        return result

    return guarded


def _guard_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _measure(*args, *kwargs.values())  # ``eq`` and ``in`` compare whole structures
        return func(*args, **kwargs)

    return guarded


@pass_context
def _loop_items(context: Any, iterable: Any) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this: each item costs one iteration and a CPU check."""
    budget = _BUDGET.get()
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
    _tick()
    _measure(*values)
    return all(_COMPARE[op](values[k], values[k + 1]) for k, op in enumerate(ops))


@pass_context
def _concat(context: Any, values: list[Any]) -> str:
    """``a ~ b``: str() of a value is sized before it is built."""
    _tick()
    if _measure(*values) > MAX_VALUE_CHARS:
        raise TemplateError(f"text longer than {MAX_VALUE_CHARS} characters")
    return "".join(str(v) for v in values)


def _safe_range(*args: int) -> range:
    span = range(*args)
    if len(span) > MAX_COUNT:
        raise TemplateError(f"range() of more than {MAX_COUNT} numbers")
    return span


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` passes here before it becomes text."""
    _tick()
    _measure(value)
    return value


class _Checkpoints(NodeTransformer):
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
        _tick()
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
            _measure(right)
        elif operator == "+" and _length(left) + _length(right) > MAX_VALUE_CHARS:
            raise TemplateError(f"sum longer than {MAX_VALUE_CHARS} items or characters")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str | list | tuple | dict):  # a method of a value the template holds
            _check_method(owner, getattr(method, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _measure(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


def _check_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    _measure(owner, *args, *kwargs.values())
    if isinstance(owner, str):
        for arg in (*args, *kwargs.values()):
            _check_count(arg)  # widths and counts: "x".center(n), "0".zfill(n), s.expandtabs(n)
        if name == "join" and args:
            if not isinstance(args[0], list | tuple | str):
                raise TemplateError("join() takes a list")
            _check_join(owner, list(args[0]))
        elif name == "replace" and len(args) >= 2:
            _check_replace(owner, args[0], args[1])
        elif name in ("format", "format_map"):
            _check_format(owner)


_ENV = _FlowEnvironment()


def _syntax_error(exc: jinja2.TemplateSyntaxError) -> TemplateError:
    return TemplateError(f"template syntax error: {exc.message} (line {exc.lineno})")


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    _parse(source)  # syntax and depth checks
    try:
        tree = _Checkpoints().visit(_ENV.parse(source))  # a fresh tree: the rewrite changes it in place
        tree.set_environment(_ENV)
        return _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(exc) from exc
    except (RecursionError, SyntaxError, MemoryError) as exc:  # what Python's compile() refuses
        raise TemplateError(f"template too complex: {exc}") from None


@lru_cache(maxsize=1024)
def _parse(source: str) -> nodes.Template:
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(exc) from exc
    except RecursionError:  # "(((((...": the parser recurses once per level
        raise TemplateError("template nested too deeply") from None
    _check_depth(tree)
    return tree


def _check_depth(tree: nodes.Node) -> None:
    """Refuse deeply nested templates before any code is generated for them.

    The code generator's cost grows with the square of the nesting (``{{ x + x + ... }}`` 200 times took
    0.15 s), and Python refuses code nested past 100 blocks or 200 parentheses anyway.
    """
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TEMPLATE_DEPTH:
            raise TemplateError(f"template nested deeper than {MAX_TEMPLATE_DEPTH} levels")
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def check_template(source: str) -> None:
    """Raise :class:`TemplateError` if ``source`` does not compile (what validation checks)."""
    if "{" in source:
        _compile(source)


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render ``source`` with ``context``; raises :class:`TemplateError` on any failure, including a
    render that runs past its CPU budget or writes more than :data:`MAX_OUTPUT_CHARS` characters."""
    if "{" not in source:  # most flow texts are plain; skip Jinja entirely
        return source
    template = _compile(source)
    budget = _Budget()
    token = _BUDGET.set(budget)
    try:
        return _generate(template, context, budget)
    except TemplateError:
        raise
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined variable in template: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from exc
    except Exception as exc:  # a template can raise anything (division by zero, bad filter argument, ...)
        raise TemplateError(f"template failed: {str(exc)[:300]}") from exc
    finally:
        _BUDGET.reset(token)


def _generate(template: jinja2.Template, context: Mapping[str, Any], budget: _Budget) -> str:
    parts: list[str] = []
    size = 0
    for part in template.generate(dict(context)):
        size += len(part)
        if size > MAX_OUTPUT_CHARS:
            raise TemplateError(f"template output longer than {MAX_OUTPUT_CHARS} characters")
        parts.append(part)
        budget.tick()
    return "".join(parts)


_WHOLE_VARIABLE = re.compile(r"^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")


def render_json(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string inside a JSON value (dict keys stay as written).

    A string that is exactly one variable (``"{{ party_size }}"``) becomes that variable's value with its
    JSON type (a number stays a number); any other string renders to a string.
    """
    if isinstance(value, str):
        whole = _WHOLE_VARIABLE.match(value.strip())
        if whole and whole.group(1) in context:
            return context[whole.group(1)]
        return render(value, context)
    if isinstance(value, list):
        return [render_json(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render_json(v, context) for k, v in value.items()}
    return value


def template_variables(source: str) -> set[str]:
    """Top-level names a template reads (``{{ a.b }}`` -> ``a``); raises :class:`TemplateError` on bad syntax."""
    if "{" not in source:
        return set()
    tree = _parse(source)
    try:  # this runs the code generator, which refuses some parsed templates (an unknown filter, say)
        return set(meta.find_undeclared_variables(tree))
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(exc) from exc
    except RecursionError:
        raise TemplateError("template nested too deeply") from None


def secret_references(source: str) -> tuple[set[str], bool]:
    """Secret names used as ``secrets.NAME`` or ``secrets["NAME"]``, and whether ``secrets`` is used otherwise.

    Anything but a literal name (``{{ secrets }}``, ``secrets[var]``) cannot be checked against the known
    secrets, so validation refuses it.
    """
    if "secrets" not in source:
        return set(), False
    tree = _parse(source)
    names: set[str] = set()
    literal_uses: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "secrets"):
            continue
        if isinstance(node, nodes.Getattr):
            names.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            names.add(node.arg.value)
        else:
            continue
        literal_uses.add(id(target))
    other_use = any(n.name == "secrets" and id(n) not in literal_uses for n in tree.find_all(nodes.Name))
    return names, other_use


def uses_secrets(source: str) -> bool:
    """Whether a template reads ``secrets`` at all (literal names or not)."""
    if "secrets" not in source:
        return False
    return any(n.name == "secrets" for n in _parse(source).find_all(nodes.Name))
