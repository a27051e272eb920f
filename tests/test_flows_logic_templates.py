"""JSONLogic conditions and Jinja templates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flows.logic import LogicError, check_expression, evaluate, expression_variables
from flows.templates import TemplateError, render, render_json, secret_references, template_variables

DATA = {"party_size": 6, "confirmed": True, "name": "Ada", "tags": ["vip", "late"], "booking": {"id": "B1"}}


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ({"==": [{"var": "party_size"}, 6]}, True),
        ({"==": [{"var": "party_size"}, "6"]}, True),  # loose, like JSONLogic
        ({"===": [{"var": "party_size"}, "6"]}, False),
        ({"!=": [{"var": "name"}, "Bob"]}, True),
        ({">": [{"var": "party_size"}, 12]}, False),
        ({"<=": [1, {"var": "party_size"}, 8]}, True),  # between
        ({"<": [{"var": "missing_value"}, 3]}, False),  # null never orders
        ({"and": [{"var": "confirmed"}, {">=": [{"var": "party_size"}, 2]}]}, True),
        ({"or": [False, 0, "x"]}, "x"),
        ({"!": [{"var": "confirmed"}]}, False),
        ({"!!": [[]]}, False),
        (
            {
                "if": [
                    {">": [{"var": "party_size"}, 8]},
                    "big",
                    {">": [{"var": "party_size"}, 4]},
                    "medium",
                    "small",
                ]
            },
            "medium",
        ),
        ({"in": ["vip", {"var": "tags"}]}, True),
        ({"in": ["da", {"var": "name"}]}, True),
        ({"var": "booking.id"}, "B1"),
        ({"var": ["nope", "fallback"]}, "fallback"),
        ({"var": "tags.1"}, "late"),
        ({"missing": ["name", "email"]}, ["email"]),
        ({"missing_some": [1, ["name", "email"]]}, []),
        ({"+": [{"var": "party_size"}, "2"]}, 8),
        ({"-": [10, 4]}, 6),
        ({"-": [3]}, -3),
        ({"*": [2, 3, 4]}, 24),
        ({"/": [7, 2]}, 3.5),
        ({"%": [7, 2]}, 1),
        ({"max": [1, 9, 3]}, 9),
        ({"cat": ["Hi ", {"var": "name"}, "!"]}, "Hi Ada!"),
        ({"substr": ["2026-11-23T10:00", 0, 10]}, "2026-11-23"),
        ({"some": [{"var": "tags"}, {"==": [{"var": ""}, "late"]}]}, True),
        ({"all": [[1, 2], {">": [{"var": ""}, 0]}]}, True),
        ({"none": [[1, 2], {">": [{"var": ""}, 5]}]}, True),
        ({"filter": [[1, 5, 9], {">": [{"var": ""}, 4]}]}, [5, 9]),
        ({"map": [[1, 2], {"*": [{"var": ""}, 10]}]}, [10, 20]),
        (True, True),
        ("text", "text"),
    ],
)
def test_evaluate(expr: object, value: object) -> None:
    assert evaluate(expr, DATA) == value


@pytest.mark.parametrize(
    "expr",
    [
        {"eval": ["__import__('os')"]},
        {"/": [1, 0]},
        {"+": ["abc", 1]},
        {"a": 1, "b": 2},
    ],
)
def test_evaluate_errors(expr: object) -> None:
    with pytest.raises(LogicError):
        evaluate(expr, DATA)


def test_evaluate_depth_limit() -> None:
    expr: object = True
    for _ in range(200):
        expr = {"!!": [expr]}
    with pytest.raises(LogicError):
        evaluate(expr)


def test_check_and_variables() -> None:
    assert check_expression({"and": [{"var": "a"}, {"foo": [1]}]}) == ["unknown operator 'foo'"]
    assert check_expression({"==": [{"var": "a"}, 1]}) == []
    expr = {
        "and": [
            {"var": "a.b"},
            {"missing": ["c"]},
            {"some": [{"var": "items"}, {"==": [{"var": "inner"}, 1]}]},
            {"var": ["d", {"var": "e"}]},
        ]
    }
    assert expression_variables(expr) == {"a", "c", "items", "d", "e"}


def test_render_and_variables() -> None:
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert render("Hi {{ name }}, {{ now.strftime('%A') }}", {"name": "Ada", "now": now}) == "Hi Ada, Monday"
    assert render("plain text", {}) == "plain text"
    assert template_variables("{{ a }} {% if b %}{{ c.d }}{% endif %}{% set e = 1 %}{{ e }}") == {
        "a",
        "b",
        "c",
    }
    with pytest.raises(TemplateError, match="undefined"):
        render("Hi {{ nobody }}", {})
    with pytest.raises(TemplateError, match="syntax"):
        template_variables("{{ broken ")


def test_sandbox_blocks_internals() -> None:
    with pytest.raises(TemplateError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_render_json_keeps_types() -> None:
    body = {"size": "{{ n }}", "label": "party of {{ n }}", "list": ["{{ ok }}", 3], "nested": {"x": None}}
    assert render_json(body, {"n": 4, "ok": True}) == {
        "size": 4,
        "label": "party of 4",
        "list": [True, 3],
        "nested": {"x": None},
    }


def test_secret_references() -> None:
    assert secret_references("Bearer {{ secrets.API_KEY }}") == ({"API_KEY"}, False)
    assert secret_references("{{ secrets['OTHER'] }}") == ({"OTHER"}, False)
    assert secret_references("{{ secrets }}") == (set(), True)
    assert secret_references("{{ secrets[name] }}") == (set(), True)
    assert secret_references("no secret here") == (set(), False)
