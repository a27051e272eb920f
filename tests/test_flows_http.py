"""The http node against a real local HTTP server: success, saving, timeout, 5xx, allowlist."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flows.http_tool import HttpTool, host_allowed, lookup_path
from flows.schema import HttpNode
from tests.flows_helpers import LocalApi, flow, make_runner, serve_local_api

ALLOW = ["127.0.0.1"]


@pytest.fixture(scope="module")
def api() -> Iterator[LocalApi]:
    with serve_local_api() as server:
        yield server


@pytest.fixture(autouse=True)
def reset(api: LocalApi) -> None:
    api.requests.clear()
    api.fail_count = 0


def node(**fields: Any) -> HttpNode:
    return HttpNode.model_validate({"id": "call", "type": "http", "next": "ok", "on_error": "err", **fields})


def tool(**kwargs: Any) -> HttpTool:
    return HttpTool(ALLOW, secrets={"API_KEY": "s3cret"}, trust_env=False, retry_backoff_s=0.01, **kwargs)


async def test_post_success_and_save(api: LocalApi) -> None:
    n = node(
        method="POST",
        url="{{ base }}/bookings",
        headers={"Authorization": "Bearer {{ secrets.API_KEY }}", "X-Party": "{{ size }}"},
        body={"size": "{{ size }}", "note": "party of {{ size }}", "vip": True},
        save={"booking_id": "booking_id", "echo_size": "received.size", "everything": ""},
    )
    result = await tool().call(n, {"base": api.url, "size": 4})
    assert result.ok and result.status == 200 and result.error is None and result.attempts == 1
    assert result.saved["booking_id"] == "BK-0001"
    assert result.saved["echo_size"] == 4  # the body kept the number's type
    assert result.saved["everything"]["received"] == {"size": 4, "note": "party of 4", "vip": True}
    sent = api.requests[0]
    assert sent["headers"]["authorization"] == "Bearer s3cret" and sent["headers"]["x-party"] == "4"


async def test_save_nested_path(api: LocalApi) -> None:
    result = await tool().call(
        node(url=f"{api.url}/nested", save={"first": "data.items.0.id", "n": "data.count"}), {}
    )
    assert result.saved == {"first": "first", "n": 2}


async def test_missing_save_path_is_an_error(api: LocalApi) -> None:
    result = await tool().call(node(url=f"{api.url}/nested", save={"x": "data.nope"}), {})
    assert not result.ok and "data.nope" in (result.error or "") and result.saved == {}


async def test_non_json_response(api: LocalApi) -> None:
    assert (await tool().call(node(url=f"{api.url}/text"), {})).ok  # nothing to save: fine
    result = await tool().call(node(url=f"{api.url}/text", save={"x": ""}), {})
    assert not result.ok and "not JSON" in (result.error or "")


async def test_timeout(api: LocalApi) -> None:
    result = await tool().call(node(url=f"{api.url}/slow", timeout_s=0.3, retries=0), {})
    assert not result.ok and result.error == "timed out after 0.3 s" and result.attempts == 1


async def test_server_error_is_retried_then_fails(api: LocalApi) -> None:
    result = await tool().call(node(url=f"{api.url}/fail", retries=2), {})
    assert not result.ok and result.status == 500 and result.error == "HTTP 500"
    assert result.attempts == 3 and api.fail_count == 3


async def test_retry_recovers(api: LocalApi) -> None:
    result = await tool().call(node(url=f"{api.url}/flaky", retries=1), {})
    assert result.ok and result.attempts == 2


async def test_redirect_not_followed(api: LocalApi) -> None:
    result = await tool().call(node(url=f"{api.url}/redirect", retries=3), {})
    assert not result.ok and result.status == 302 and result.attempts == 1


async def test_host_outside_allowlist(api: LocalApi) -> None:
    result = await HttpTool(["api.example.com"]).call(node(url=f"{api.url}/bookings", method="POST"), {})
    assert not result.ok and result.attempts == 0
    assert result.error == "host '127.0.0.1' is not on the allowlist of hosts flows may call; request refused"
    empty = await HttpTool().call(node(url=f"{api.url}/bookings", method="POST"), {})
    assert not empty.ok and "allowlist" in (empty.error or "")
    assert api.requests == []


async def test_template_error(api: LocalApi) -> None:
    result = await tool().call(node(url="{{ missing }}/x"), {})
    assert not result.ok and "undefined" in (result.error or "")


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("https://api.example.com/x", ["api.example.com"], True),
        ("https://API.example.com./x", ["api.example.com"], True),
        ("https://evil.com/api.example.com", ["api.example.com"], False),
        ("https://api.example.com.evil.com/", ["api.example.com"], False),
        ("https://a.b.example.com/", ["*.example.com"], True),
        ("https://example.com/", ["*.example.com"], False),
        ("http://127.0.0.1:8080/", ["127.0.0.1:8080"], True),
        ("http://127.0.0.1:9090/", ["127.0.0.1:8080"], False),
        ("https://api.example.com/", ["api.example.com:443"], True),
        ("ftp://api.example.com/", ["api.example.com"], False),
        ("https://user@api.example.com/", ["api.example.com"], True),
        ("https://api.example.com/", [], False),
        ("not a url", ["*"], False),
    ],
)
def test_host_allowed(url: str, allowed: list[str], ok: bool) -> None:
    assert host_allowed(url, allowed) is ok


def test_lookup_path() -> None:
    data = {"a": {"b": [10, {"c": "x"}]}}
    assert lookup_path(data, "a.b.1.c") == "x"
    assert lookup_path(data, "a.b.-1.c") == "x"
    assert lookup_path(data, "") is data
    with pytest.raises(KeyError):
        lookup_path(data, "a.z")


def http_flow(url: str, **fields: Any) -> dict[str, Any]:
    return flow(
        [
            {
                "id": "call",
                "type": "http",
                "url": url,
                "save": {"n": "data.count"},
                "next": "ok",
                "on_error": "err",
                **fields,
            },
            {"id": "ok", "type": "end", "text": "Count {{ n }}", "reason": "ok"},
            {"id": "err", "type": "end", "text": "Sorry.", "reason": "http_error"},
        ]
    )


@pytest.mark.parametrize(
    ("path", "fields", "reason", "error"),
    [
        ("/nested", {}, "ok", None),
        ("/fail", {"retries": 0}, "http_error", "HTTP 500"),
        ("/slow", {"timeout_s": 0.3, "retries": 0}, "http_error", "timed out after 0.3 s"),
    ],
)
async def test_http_node_in_runner(
    api: LocalApi, path: str, fields: dict[str, Any], reason: str, error: str | None
) -> None:
    runner, host = make_runner(http_flow(api.url + path, **fields), http=tool())
    await runner.start()
    assert host.ended == reason
    event = host.of_type("flow.http")[0]
    assert event["node"] == "call" and event["error"] == error and event["ok"] is (error is None)
    if reason == "ok":
        assert runner.variables["n"] == 2 and host.said == ["Count 2"]


async def test_runner_default_tool_refuses_everything(api: LocalApi) -> None:
    runner, host = make_runner(http_flow(api.url + "/nested"))
    await runner.start()
    assert host.ended == "http_error" and "allowlist" in host.of_type("flow.http")[0]["error"]
    assert api.requests == []
