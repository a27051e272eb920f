"""Jinja2 templates for everything a flow says or sends.

Templates run in a sandbox (flow documents come from users, so no attribute tricks reach Python internals)
with ``StrictUndefined`` (a misspelt variable is an error, never a silent empty string).

The sandbox (:mod:`flows.template_sandbox`) and the costs it allows (:mod:`flows.template_limits`) have
modules of their own; this one compiles, renders and inspects templates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes

from flows.template_limits import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_DEPTH,
    RENDER_BUDGET,
    RenderBudget,
    TemplateError,
)
from flows.template_sandbox import SANDBOX, Checkpoints

__all__ = [
    "MAX_OUTPUT_CHARS",
    "TemplateError",
    "check_template",
    "render",
    "render_json",
    "secret_references",
    "template_variables",
]


def _syntax_error(exc: jinja2.TemplateSyntaxError) -> TemplateError:
    return TemplateError(f"template syntax error: {exc.message} (line {exc.lineno})")


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    _parse(source)  # syntax and depth checks
    try:
        tree = Checkpoints().visit(SANDBOX.parse(source))  # a fresh tree: the rewrite changes it in place
        tree.set_environment(SANDBOX)
        return SANDBOX.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(exc) from exc
    except (RecursionError, SyntaxError, MemoryError) as exc:  # what Python's compile() refuses
        raise TemplateError(f"template too complex: {exc}") from None


@lru_cache(maxsize=1024)
def _parse(source: str) -> nodes.Template:
    try:
        tree = SANDBOX.parse(source)
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
    budget = RenderBudget()
    token = RENDER_BUDGET.set(budget)
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
        RENDER_BUDGET.reset(token)


def _generate(template: jinja2.Template, context: Mapping[str, Any], budget: RenderBudget) -> str:
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
