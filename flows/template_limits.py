"""How much one template may cost: the size caps on the values it works on and one render's CPU budget.

Flow documents are untrusted in how much work they ask for, and rendering runs on the event loop. The
checks here are what the sandbox (:mod:`flows.template_sandbox`) calls before work that could be large.
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from typing import Any

__all__ = [
    "MAX_COUNT",
    "MAX_INT_BITS",
    "MAX_LOOP_ITERATIONS",
    "MAX_OUTPUT_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_VALUE_CHARS",
    "MAX_VALUE_ITEMS",
    "RENDER_BUDGET",
    "RENDER_CPU_S",
    "RenderBudget",
    "TemplateError",
    "check_count",
    "check_format",
    "check_join",
    "check_power",
    "check_product",
    "check_replace",
    "length_of",
    "measure",
    "tick",
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


class RenderBudget:
    """What one render may still spend: CPU time and loop iterations."""

    def __init__(self) -> None:
        self.deadline = time.thread_time() + RENDER_CPU_S
        self.iterations = 0

    def tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise TemplateError(f"template needs more than {RENDER_CPU_S * 1000:g} ms to render")


# The running render's budget. Unset while a template is compiled (constant folding calls the same checked
# filters), where only the size checks apply.
RENDER_BUDGET: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar(
    "flow_template_budget", default=None
)


def tick() -> None:
    """Raise :class:`TemplateError` once the running render has used up its CPU time."""
    budget = RENDER_BUDGET.get()
    if budget is not None:
        budget.tick()


# -- sizes ----------------------------------------------------------------------------------------------


def measure(*values: Any) -> int:
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


def length_of(value: Any) -> int:
    """The length of a string, list or tuple; 0 for anything else."""
    return len(value) if isinstance(value, str | list | tuple) else 0


def check_count(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
        raise TemplateError(f"count or width {value} is larger than {MAX_COUNT}")


# "%-99999s" and "{:>99999}" build huge strings from tiny ones.
_WIDE_FORMAT = re.compile(r"%[#0 +\-]*(\*|\d{5,})|%[#0 +\-]*\d*\.(\*|\d{5,})|\{[^{}]*\d{5,}[^{}]*\}")


def check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise TemplateError("format width or precision too large")


def check_power(base: Any, exponent: Any) -> None:
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (base, exponent))
    if ints and exponent > 0 and abs(base) > 1 and math.log2(abs(base)) * exponent > MAX_INT_BITS:
        raise TemplateError(f"{base} ** {exponent} is larger than {MAX_INT_BITS} bits")


def check_product(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int):
            if len(seq) * count > MAX_VALUE_CHARS or (not isinstance(seq, str) and count > MAX_VALUE_ITEMS):
                raise TemplateError("repetition result too large")
            return
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right))
    if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise TemplateError(f"product larger than {MAX_INT_BITS} bits")


def check_join(separator: Any, items: list[Any]) -> None:
    total = measure(items) + len(items) * length_of(separator)
    if total > MAX_VALUE_CHARS:
        raise TemplateError(f"joined text would be longer than {MAX_VALUE_CHARS} characters")


def check_replace(text: Any, old: Any, new: Any) -> None:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        return
    hits = len(text) + 1 if old == "" else text.count(old)
    if len(text) + hits * max(len(new) - len(old), 0) > MAX_VALUE_CHARS:
        raise TemplateError(f"replaced text would be longer than {MAX_VALUE_CHARS} characters")
