"""Jinja2 templates for everything a flow says or sends.

Templates run in a ``SandboxedEnvironment`` (flow documents come from users, so no attribute tricks reach
Python internals) with ``StrictUndefined`` (a misspelt variable is an error, never a silent empty string).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "TemplateError",
    "render",
    "render_json",
    "secret_references",
    "template_variables",
]


class TemplateError(ValueError):
    """A template failed to parse or render; the message says why."""


# Autoescape is off: output is speech or an HTTP request, not HTML.
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} (line {exc.lineno})") from exc


@lru_cache(maxsize=1024)
def _parse(source: str) -> nodes.Template:
    try:
        return _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message} (line {exc.lineno})") from exc


def render(source: str, context: Mapping[str, Any]) -> str:
    """Render ``source`` with ``context``; raises :class:`TemplateError` on any failure."""
    if "{" not in source:  # most flow texts are plain; skip Jinja entirely
        return source
    template = _compile(source)
    try:
        return template.render(dict(context))
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"undefined variable in template: {exc.message}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template refused by the sandbox: {exc}") from exc
    except Exception as exc:  # a template can raise anything (division by zero, bad filter argument, ...)
        raise TemplateError(f"template failed: {exc}") from exc


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
    return set(meta.find_undeclared_variables(_parse(source)))


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
