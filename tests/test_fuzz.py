"""Property-based fuzzing (issue 9): every HTTP route, the voice WebSocket and the Twilio media parser.

Any input gives a 4xx with ``{"detail"}`` or an ``error`` event, never a 500, a dropped socket or a hang, and
no request holds the server's event loop. The server here runs on fake engines so that thousands of inputs
take seconds and leave the shared test server's state alone; what is fuzzed is the HTTP and protocol layer
(engines are proven by the other tests, on the real models).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from tests.conftest import LiveServer, serving
from tests.looplag import LoopWatch

NASTY_NUMBERS = [
    "²",
    "１２",
    "99999999999999999999",
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "0x10",
    " 5",
    "",
]
NASTY_TEXT = ["", "\x00", "../../etc/passwd", "%2e%2e%2f", "a" * 5000, "😀" * 50, "{{ 9 ** 99 }}", "[" * 3000]


def nasty_strings() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), st.sampled_from(NASTY_NUMBERS + NASTY_TEXT))


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_strings(),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.text(max_size=12), st.sampled_from(["type", "id", "nodes", "start"])),
            children,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


NASTY_BODIES = [
    b"",
    b"[" * 5000,
    b'{"a":' * 2000,
    b'{"value": NaN}',
    b'{"x": 1e999}',
    b"\xff\xfe\x00",
    b"null",
    b"[]",
    b'{"id": "x", "nodes": "not a list"}',
    b'{"id": "x", "nodes": [{"id": "a", "type": "collect", "variable": []}]}',
]


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies a careless or hostile client sends: JSON values, broken JSON, deep nesting, NaN, bytes."""
    return st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(NASTY_BODIES),
        st.binary(max_size=200),
    )


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    settings = Settings(data_dir=tmp_path_factory.mktemp("fuzz-data"), twilio_auth_token="fuzz-token")
    runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM("{}", delay_s=0.0), tts=FakeTTS())
    with serving(settings, runtime) as live:
        yield live


def _http_routes(app: Any) -> list[tuple[str, str]]:
    routes: list[tuple[str, str]] = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    routes.append((route.path, method))
    return routes


def _fill(path: str, values: list[str]) -> str:
    from urllib.parse import quote

    out, i = [], 0
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            out.append(quote(values[i % len(values)] or "x", safe=""))
            i += 1
        else:
            out.append(part)
    return "/".join(out)


CONTENT_TYPES = [
    "application/json",
    "text/plain",
    None,
    "application/x-www-form-urlencoded",
    "multipart/form-data",
]
QUERY_KEYS = [
    "version",
    "limit",
    "since",
    "until",
    "cursor",
    "flow",
    "transport",
    "flow_version",
    "sample_rate",
]


def _check_answer(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and "detail" in body, (
            f"{what}: {response.status_code} {response.text[:300]}"
        )


@pytest.fixture(scope="module")
def http_watch(fuzz_server: LiveServer) -> Iterator[LoopWatch]:
    watch = LoopWatch(interval_s=0.01).start_on(fuzz_server.state.loop)
    yield watch
    asyncio.run(watch.stop())
    print(f"\nfuzz server event loop: p99 lag {watch.lag_percentile_ms(0.99):.1f} ms; {watch.describe()}")


def _route_ids() -> list[tuple[str, str]]:
    from gateway.app import create_app

    return _http_routes(create_app())


ROUTES = _route_ids()


_CLIENTS: dict[int, httpx.Client] = {}


def _client(server: LiveServer) -> httpx.Client:
    """One keep-alive client per server: a new connection per request would be most of the test's time."""
    if server.port not in _CLIENTS:
        _CLIENTS[server.port] = httpx.Client(timeout=20)
    return _CLIENTS[server.port]


def _send(
    server: LiveServer,
    method: str,
    path: str,
    *,
    values: list[str],
    query: dict[str, str],
    body: bytes | None,
    content_type: str | None,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with_body = method in ("POST", "PUT", "PATCH")
    response = _client(server).request(
        method,
        server.http + _fill(path, values),
        params=query,
        content=body if with_body else None,
        headers=headers,
        timeout=20,
    )
    _check_answer(response, f"{method} {path} query={query!r} body={(body or b'')[:80]!r}")


@pytest.mark.parametrize(("path", "method"), ROUTES, ids=[f"{m} {p}" for p, m in ROUTES])
def test_every_route_against_every_nasty_parameter_and_body(
    fuzz_server: LiveServer, http_watch: LoopWatch, path: str, method: str
) -> None:
    """Each query parameter any route reads, with each malformed number or string; each broken body."""
    for value in NASTY_NUMBERS + NASTY_TEXT[:4]:
        for key in QUERY_KEYS:
            _send(
                fuzz_server,
                method,
                path,
                values=[value],
                query={key: value},
                body=b"{}",
                content_type="application/json",
            )
    if method in ("POST", "PUT", "PATCH"):
        for body in NASTY_BODIES:
            for content_type in CONTENT_TYPES:
                _send(fuzz_server, method, path, values=["x"], query={}, body=body, content_type=content_type)
    assert http_watch.max_busy_ms < 50, http_watch.describe()


@pytest.mark.parametrize(("path", "method"), ROUTES, ids=[f"{m} {p}" for p, m in ROUTES])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path_values=st.lists(nasty_strings(), min_size=1, max_size=3),
    query=st.dictionaries(
        st.one_of(st.sampled_from(QUERY_KEYS), st.text(max_size=8)), nasty_strings(), max_size=3
    ),
    body=raw_bodies(),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_every_route_answers_random_input_with_a_4xx_detail(
    fuzz_server: LiveServer,
    http_watch: LoopWatch,
    path: str,
    method: str,
    path_values: list[str],
    query: dict[str, str],
    body: bytes,
    content_type: str | None,
) -> None:
    _send(fuzz_server, method, path, values=path_values, query=query, body=body, content_type=content_type)
    assert http_watch.max_busy_ms < 50, http_watch.describe()


def test_a_finite_json_answer_for_every_route(fuzz_server: LiveServer) -> None:
    """The answers themselves are strict JSON: no NaN or Infinity reaches a client."""
    from gateway.api_common import strict_json_loads

    for path, method in _http_routes(fuzz_server.app):
        if method != "GET" or "{" in path or not path.startswith("/v1/"):
            continue
        response = httpx.get(fuzz_server.http + path, timeout=10)
        _check_answer(response, path)
        strict_json_loads(response.text)  # raises on NaN or Infinity


ws_events = st.one_of(
    json_values.map(json.dumps),
    st.builds(
        lambda t, extra: json.dumps({"type": t, **extra}),
        st.one_of(
            st.sampled_from(
                [
                    "session.update",
                    "input_text",
                    "input_audio.commit",
                    "input_dtmf",
                    "output_audio.played",
                    "response.cancel",
                ]
            ),
            nasty_strings(),
        ),
        st.dictionaries(
            st.sampled_from(["text", "session", "digit", "response_id", "ms", "voice"]),
            json_values,
            max_size=3,
        ),
    ),
    st.sampled_from(["[" * 3000, '{"type": NaN}', "{", "", "null"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(ws_events, min_size=1, max_size=4))
def test_voice_socket_answers_every_bad_frame_with_an_error_event(
    fuzz_server: LiveServer, frames: list[str]
) -> None:
    async def run() -> None:
        async with websockets.connect(fuzz_server.url, max_size=None) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert created["type"] == "session.created"
            for frame in frames:
                await ws.send(frame)
            # The session is still there and still reads: a probe always gets its own answer.
            await ws.send(json.dumps({"type": "input_dtmf", "digit": "7"}))
            while True:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                if event["type"] == "error":
                    assert isinstance(event.get("code"), str) and event["code"], event
                    assert len(event.get("message", "")) < 2000, "an error quoted too much of the input"
                assert event["type"] != "session.closed", f"a bad frame ended the session: {event}"
                if event["type"] == "dtmf.received" and event.get("digit") == "7":
                    return

    asyncio.run(run())


@settings(max_examples=600, deadline=None)
@given(
    text=st.one_of(
        ws_events,
        json_values.map(lambda v: json.dumps({"event": "media", "streamSid": "MZ1", "media": v})),
        json_values.map(lambda v: json.dumps({"event": "start", "start": v})),
    )
)
def test_twilio_media_parser_raises_only_protocol_errors(text: str) -> None:
    from telephony.provider import ProtocolError
    from telephony.twilio.stream import TwilioMediaStream

    try:
        TwilioMediaStream().parse(text)
    except ProtocolError as exc:
        assert len(str(exc)) < 400


def test_fuzz_helpers_are_strict() -> None:
    from gateway.api_common import BadJson, strict_json_loads

    for bad in ("[" * 100, '{"a": NaN}', "1e999", '{"a": Infinity}'):
        with pytest.raises(BadJson):
            strict_json_loads(bad)
    assert strict_json_loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert math.isfinite(strict_json_loads("1e308"))
