"""Flow validation: every broken document gives exactly the expected (code, node, field) issues."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from flows import Flow, FlowValidationError, example_flows, flow_json_schema, load_flow, validate_flow


def base() -> dict[str, Any]:
    return {
        "id": "base",
        "name": "Base",
        "start": "hello",
        "variables": {"shop": "Bikes"},
        "nodes": [
            {"id": "hello", "type": "say", "text": "Hi from {{ shop }}", "next": "ask"},
            {
                "id": "ask",
                "type": "collect",
                "prompt": "How many?",
                "variable": "count",
                "kind": "number",
                "next": "check",
                "on_failure": "bye",
            },
            {
                "id": "check",
                "type": "branch",
                "cases": [{"when": {">": [{"var": "count"}, 3]}, "next": "call"}],
                "default": "bye",
            },
            {
                "id": "call",
                "type": "http",
                "method": "POST",
                "url": "https://api.example.com/orders",
                "body": {"count": "{{ count }}"},
                "save": {"order_id": "data.id"},
                "next": "bye",
                "on_error": "bye",
            },
            {"id": "bye", "type": "end", "text": "Goodbye"},
        ],
    }


def mutate(fn) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    doc = base()
    fn(doc)
    return doc


def node(doc: dict[str, Any], nid: str) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["id"] == nid)


CASES: list[tuple[str, Any, list[tuple[str, str | None, str]]]] = [
    ("valid", lambda d: None, []),
    (
        "missing required field",
        lambda d: node(d, "ask").pop("on_failure"),
        [("schema", "ask", "nodes[1].on_failure")],
    ),
    (
        "unknown node type",
        lambda d: d["nodes"].append({"id": "odd", "type": "dance", "next": "bye"}),
        [("schema", "odd", "nodes[5].type"), ("unreachable", "odd", "nodes[5]")],
    ),
    ("node without type", lambda d: node(d, "bye").pop("type"), [("schema", "bye", "nodes[4].type")]),
    (
        "typo in a field name",
        lambda d: node(d, "hello").update(nxt="ask"),
        [("schema", "hello", "nodes[0].nxt")],
    ),
    (
        "bad collect kind",
        lambda d: node(d, "ask").update(kind="colour"),
        [("schema", "ask", "nodes[1].kind")],
    ),
    ("start missing", lambda d: d.update(start="nowhere"), [("unknown_start", None, "start")]),
    (
        "edge to unknown node",
        lambda d: node(d, "check")["cases"][0].update(next="ghost"),
        [("unknown_node", "check", "nodes[2].cases[0].next"), ("unreachable", "call", "nodes[3]")],
    ),
    (
        "duplicate node id",
        lambda d: d["nodes"].append({"id": "bye", "type": "end"}),
        [("duplicate_node", "bye", "nodes[5].id")],
    ),
    (
        "unreachable node",
        lambda d: d["nodes"].append({"id": "lonely", "type": "say", "text": "x", "next": "bye"}),
        [("unreachable", "lonely", "nodes[5]")],
    ),
    (
        "loop with no way out",
        lambda d: (
            node(d, "ask").update(on_failure="ask"),
            node(d, "check").update(default="hello"),
            node(d, "call").update(next="hello", on_error="hello"),
            d["nodes"].pop(4),
        ),
        [
            ("no_exit", "hello", "nodes[0]"),
            ("no_exit", "ask", "nodes[1]"),
            ("no_exit", "check", "nodes[2]"),
            ("no_exit", "call", "nodes[3]"),
        ],
    ),
    (
        "undefined variable in a template",
        lambda d: node(d, "bye").update(text="Bye {{ customer }}"),
        [("undefined_variable", "bye", "nodes[4].text")],
    ),
    (
        "undefined variable in a condition",
        lambda d: node(d, "check")["cases"][0].update(when={"==": [{"var": "colour"}, "red"]}),
        [("undefined_variable", "check", "nodes[2].cases[0].when")],
    ),
    (
        "variables set by collect and http save are defined",
        lambda d: node(d, "bye").update(text="Order {{ order_id }} for {{ count }} at {{ now.hour }}"),
        [],
    ),
    (
        "unknown operator",
        lambda d: node(d, "check")["cases"][0].update(when={"regex": [{"var": "count"}, ".*"]}),
        [("invalid_condition", "check", "nodes[2].cases[0].when")],
    ),
    (
        "template syntax error",
        lambda d: node(d, "hello").update(text="Hi {{ shop "),
        [("template_syntax", "hello", "nodes[0].text")],
    ),
    (
        "unknown secret",
        lambda d: node(d, "call").update(headers={"Authorization": "Bearer {{ secrets.NOPE }}"}),
        [("unknown_secret", "call", "nodes[3].headers.Authorization")],
    ),
    (
        "known secret",
        lambda d: node(d, "call").update(headers={"Authorization": "Bearer {{ secrets.API_KEY }}"}),
        [],
    ),
    (
        "whole secrets object",
        lambda d: node(d, "call").update(headers={"X-All": "{{ secrets }}"}),
        [("invalid_secret_reference", "call", "nodes[3].headers.X-All")],
    ),
    (
        "secret outside an http node",
        lambda d: node(d, "bye").update(text="{{ secrets.API_KEY }}"),
        [("undefined_variable", "bye", "nodes[4].text")],
    ),
    (
        "reserved variable",
        lambda d: node(d, "ask").update(variable="now"),
        [
            ("reserved_variable", "ask", "nodes[1].variable"),
            # "count" is then never set
            ("undefined_variable", "check", "nodes[2].cases[0].when"),
            ("undefined_variable", "call", "nodes[3].body.count"),
        ],
    ),
    (
        "choice without choices",
        lambda d: node(d, "ask").update(kind="choice"),
        [("missing_choices", "ask", "nodes[1].choices")],
    ),
    (
        "bad regex",
        lambda d: node(d, "ask").update(kind="regex", pattern="(unclosed"),
        [("invalid_pattern", "ask", "nodes[1].pattern")],
    ),
    (
        "literal url without host",
        lambda d: node(d, "call").update(url="ftp:/nowhere"),
        [("invalid_url", "call", "nodes[3].url")],
    ),
    (
        "bad transfer target",
        lambda d: (
            d["nodes"].append({"id": "xfer", "type": "transfer", "target": "555-1234"})
            or node(d, "check").update(default="xfer")
        ),
        [("schema", "xfer", "nodes[5].target")],
    ),
    (
        "bad variable name",
        lambda d: d["variables"].update({"bad name": 1}),
        [("schema", None, "variables.bad name")],
    ),
    (
        "bad timezone",
        lambda d: d.update(settings={"timezone": "Mars/Olympus"}),
        [("schema", None, "settings.timezone")],
    ),
    (
        "several problems at once",
        lambda d: (
            d.update(id="Not A Slug"),
            node(d, "hello").update(next="nope"),
            node(d, "bye").update(text="{{ who }}"),
        ),
        [
            ("schema", None, "id"),
            ("unknown_node", "hello", "nodes[0].next"),
            ("undefined_variable", "bye", "nodes[4].text"),
            ("unreachable", "ask", "nodes[1]"),
            ("unreachable", "check", "nodes[2]"),
            ("unreachable", "call", "nodes[3]"),
            ("unreachable", "bye", "nodes[4]"),
        ],
    ),
]


@pytest.mark.parametrize(("mutation", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_broken_flows(mutation, expected) -> None:  # type: ignore[no-untyped-def]
    doc = mutate(mutation)
    issues = validate_flow(doc, known_secrets=["API_KEY"])
    assert sorted((i.code, i.node, i.field) for i in issues) == sorted(expected), issues
    for issue in issues:
        assert issue.message
        assert set(issue.to_dict()) == {"node", "field", "code", "message"}


def test_llm_and_menu_specific_checks() -> None:
    doc = {
        "id": "m",
        "name": "m",
        "start": "menu",
        "nodes": [
            {
                "id": "menu",
                "type": "dtmf_menu",
                "prompt": "Press 1",
                "options": [{"digit": "1", "next": "agent"}, {"digit": "1", "next": "bye"}],
                "on_failure": "bye",
            },
            {
                "id": "agent",
                "type": "llm",
                "instructions": "Help",
                "exits": [
                    {"name": "stay", "next": "bye"},
                    {"name": "done", "next": "bye"},
                    {"name": "done", "next": "bye"},
                ],
            },
            {"id": "bye", "type": "end"},
        ],
    }
    issues = validate_flow(doc)
    assert sorted((i.code, i.node, i.field) for i in issues) == [
        ("duplicate_digit", "menu", "nodes[0].options[1].digit"),
        ("duplicate_exit", "agent", "nodes[1].exits[2].name"),
        ("reserved_exit", "agent", "nodes[1].exits[0].name"),
    ]


def test_llm_without_on_max_turns_counts_as_a_way_out() -> None:
    doc = {
        "id": "l",
        "name": "l",
        "start": "chat",
        "nodes": [{"id": "chat", "type": "llm", "instructions": "Chat", "exits": []}],
    }
    assert validate_flow(doc) == []


def test_not_an_object() -> None:
    assert [(i.code, i.field) for i in validate_flow([])] == [("schema", "")]  # type: ignore[arg-type]


def test_load_flow() -> None:
    doc = base()
    flow = load_flow(doc)
    assert isinstance(flow, Flow) and flow.node("ask").type == "collect"
    assert load_flow(json.dumps(doc)).id == "base"
    broken = copy.deepcopy(doc)
    broken["start"] = "nowhere"
    with pytest.raises(FlowValidationError) as err:
        load_flow(broken)
    assert err.value.to_dicts() == [
        {
            "node": None,
            "field": "start",
            "code": "unknown_start",
            "message": "start node 'nowhere' does not exist",
        }
    ]
    assert "start" in str(err.value)
    with pytest.raises(FlowValidationError) as err:
        load_flow("{not json")
    assert err.value.issues[0].code == "invalid_json"


def test_examples_are_valid() -> None:
    docs = example_flows()
    assert {d["id"] for d in docs} == {
        "restaurant-booking",
        "appointment-reminder",
        "phone-menu",
        "faq-agent",
    }
    for doc in docs:
        assert validate_flow(doc) == [], doc["id"]
        load_flow(doc)
    docs[0]["name"] = "changed"
    assert example_flows()[0]["name"] != "changed"  # fresh copies


def test_json_schema() -> None:
    schema = flow_json_schema()
    text = json.dumps(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    for kind in ("say", "collect", "llm", "branch", "http", "dtmf_menu", "transfer", "end"):
        assert f'"const": "{kind}"' in text or f'"enum": ["{kind}"]' in text
    assert "discriminator" in text
    assert set(schema["required"]) >= {"id", "name", "start", "nodes"}
