"""Checks of what a flow computes with: variable names, templates (syntax, variables, secrets) and
branch conditions (JSONLogic)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from flows.logic import check_expression, expression_variables
from flows.schema import ANY_NODE_TYPES, BUILTIN_VARIABLES, RESERVED_NAMES
from flows.templates import TemplateError, secret_references, template_variables, uses_secrets
from flows.validate_issues import FlowIssue
from flows.validate_structure import RawFlow, as_list

__all__ = ["MAX_FLOW_TEMPLATE_CHARS", "MAX_TEMPLATE_CHARS", "TEMPLATE_FIELDS", "VariableChecks"]


MAX_TEMPLATE_CHARS = 4000  # one template (the schema's limit for text fields; http body strings too)
# All templates of a flow together (plain texts without "{" do not count). Checking costs up to 5 ms per
# 1,000 characters: this bounds a flow's template checks to about half a second.
MAX_FLOW_TEMPLATE_CHARS = 100_000

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


class VariableChecks:
    """Variables, templates and conditions of every node; counts template characters against the cap."""

    def __init__(self, flow: RawFlow, known_secrets: set[str]) -> None:
        self.flow = flow
        self.known_secrets = known_secrets
        self.template_chars = 0  # characters of templates parsed so far

    def run(self) -> Iterator[FlowIssue]:
        """Every variable, template and condition issue, node by node."""
        declared = self.flow.doc.get("variables")
        if isinstance(declared, dict):
            for name in declared:
                if name in RESERVED_NAMES:
                    yield FlowIssue(
                        None, f"variables.{name}", "reserved_variable", f"{name!r} is a built-in name"
                    )
        defined = self._defined_variables()
        for i, node in enumerate(self.flow.nodes):
            if not isinstance(node, dict) or node.get("type") not in ANY_NODE_TYPES:
                continue
            nid = self.flow.node_id(i)
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
                for j, case in enumerate(as_list(node.get("cases"))):
                    if isinstance(case, dict) and "when" in case:
                        yield from self._condition(nid, f"nodes[{i}].cases[{j}].when", case["when"], defined)

    def _defined_variables(self) -> set[str]:
        defined = set(BUILTIN_VARIABLES)
        declared = self.flow.doc.get("variables")
        if isinstance(declared, dict):
            defined.update(k for k in declared if isinstance(k, str))
        for node in self.flow.nodes:
            if not isinstance(node, dict):
                continue
            if node.get("type") == "collect" and isinstance(node.get("variable"), str):
                defined.add(node["variable"])
            if node.get("type") == "http" and isinstance(node.get("save"), dict):
                defined.update(k for k in node["save"] if isinstance(k, str))
        return defined

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


def _is_reserved(name: Any) -> bool:
    return isinstance(name, str) and name in RESERVED_NAMES


def _uses_secrets(source: str) -> bool:
    try:
        return uses_secrets(source)
    except TemplateError:
        return False  # reported as template_syntax
