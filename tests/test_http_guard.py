"""The HTTP and WebSocket edge (issue 9, findings 4, 6 and 7): browsers from other origins, DNS rebinding,
credentials in URLs and logs, content types and body limits. Fast: the real app and a real uvicorn, with
fake engines."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.auth import Auth, SessionTokens
from gateway.http_guard import HostPolicy, HttpGuard, OriginPolicy, parse_origin
from gateway.logs import CredentialScrubber, scrub_credentials, uvicorn_log_config
from gateway.settings import Settings
from tests.conftest import LiveServer, free_port

ALLOWED = "https://app.example.com"
EVIL = "http://evil.example"
JSON_LIMIT = 64 << 10
FORM_LIMIT = 4 << 10
MB = 1 << 20


def _flow(flow_id: str) -> dict[str, Any]:
    return {
        "id": flow_id,
        "name": flow_id,
        "start": "hello",
        "nodes": [
            {"id": "hello", "type": "say", "text": "Hello.", "next": "bye"},
            {"id": "bye", "type": "end"},
        ],
    }


class LogCapture(logging.Handler):
    """Keeps every uvicorn log line as its handlers would have written it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Edge:
    """A real uvicorn serving the real app (fake engines), logging like ``voxgate serve``."""

    def __init__(self, data_dir: Path) -> None:
        import uvicorn

        from gateway.app import create_app
        from pipeline.runtime import Runtime
        from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

        self.settings = Settings(
            data_dir=data_dir,
            allowed_origins=[ALLOWED],
            max_json_body_bytes=JSON_LIMIT,
            max_form_body_bytes=FORM_LIMIT,
            load_example_flows=False,
        )
        runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(), tts=FakeTTS())
        self.port = free_port()
        self.live = LiveServer(create_app(self.settings, runtime), self.port, self.settings)
        self.loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.access", "uvicorn.error")]
        self.saved = [(lg, lg.level, lg.handlers[:]) for lg in self.loggers]
        config = uvicorn.Config(
            self.live.app,
            host="127.0.0.1",
            port=self.port,
            log_level="info",
            log_config=uvicorn_log_config(),
            lifespan="on",
        )
        self.log = LogCapture()
        for name in ("uvicorn", "uvicorn.access"):  # uvicorn.error propagates to "uvicorn"
            logging.getLogger(name).handlers[:] = [self.log]
        self.live.server = uvicorn.Server(config)
        self.live.thread = threading.Thread(target=self.live.server.run, name="uvicorn-edge", daemon=True)
        self.http = self.live.http
        self.ws = f"ws://127.0.0.1:{self.port}/v1/voice"
        self.own_origin = f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.live.state

    def stored_flow(self, flow_id: str) -> bool:
        return httpx.get(f"{self.http}/v1/flows/{flow_id}", timeout=10).status_code == 200

    def stop(self) -> None:
        self.live.stop()
        for logger, level, handlers in self.saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    server = Edge(tmp_path_factory.mktemp("edge"))
    server.live.start()
    yield server
    server.stop()


@pytest.fixture
def api_key(edge: Edge) -> Iterator[str]:
    edge.state.auth.api_key = "s3cret-key"
    try:
        yield "s3cret-key"
    finally:
        edge.state.auth.api_key = None


def _post(edge: Edge, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{edge.http}{path}", timeout=10, **kw)


async def _first_event(url: str, **kw: Any) -> tuple[dict[str, Any], int | None]:
    """The first event on a new socket, and its close code if the server then closes it."""
    async with websockets.connect(url, **kw) as ws:
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if event["type"] != "error":
            return event, None
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return event, ws.close_code


# -- finding 4: browsers from other origins, DNS rebinding, content types ------------------------------------


def test_text_plain_post_is_refused_with_415_and_nothing_is_created(edge: Edge) -> None:
    body = json.dumps(_flow("plain-text")).encode()
    response = _post(edge, "/v1/flows", content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert not edge.stored_flow("plain-text")
    for path in (
        "/v1/calls",
        "/v1/flows/validate",
        "/v1/flows/generate",
        "/v1/webrtc/offer",
        "/v1/sessions/token",
    ):
        response = _post(edge, path, content=b"{}", headers={"content-type": "text/plain"})
        assert response.status_code == 415, path
    assert _post(edge, "/v1/flows", json=_flow("kept")).status_code == 201
    changed = {**_flow("kept"), "name": "changed"}
    put = httpx.put(
        f"{edge.http}/v1/flows/kept",
        content=json.dumps(changed),
        headers={"content-type": "text/plain"},
        timeout=10,
    )
    assert put.status_code == 415
    assert httpx.get(f"{edge.http}/v1/flows/kept", timeout=10).json()["name"] == "kept"
    no_type = _post(edge, "/v1/flows", content=body)  # a body with no content type at all
    assert no_type.status_code == 415


def test_json_content_type_with_charset_is_accepted(edge: Edge) -> None:
    body = json.dumps(_flow("with-charset")).encode()
    response = _post(
        edge, "/v1/flows", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201 and edge.stored_flow("with-charset")


def test_foreign_origin_cannot_create_delete_or_call(edge: Edge) -> None:
    evil = {"origin": EVIL}
    response = _post(edge, "/v1/flows", json=_flow("from-evil"), headers=evil)
    assert response.status_code == 403 and "allowed_origins" in response.json()["detail"]
    assert "access-control-allow-origin" not in response.headers
    assert not edge.stored_flow("from-evil")
    calls = _post(edge, "/v1/calls", json={"to": "+15550001111"}, headers=evil)
    assert calls.status_code == 403
    assert _post(edge, "/v1/flows", json=_flow("victim")).status_code == 201
    delete = httpx.delete(f"{edge.http}/v1/flows/victim", headers=evil, timeout=10)
    assert delete.status_code == 403 and edge.stored_flow("victim")
    # Reading is refused too: no CORS headers would let the page see it, but it need not be served at all.
    assert httpx.get(f"{edge.http}/v1/sessions", headers=evil, timeout=10).status_code == 403
    assert httpx.get(f"{edge.http}/v1/flows", headers={"origin": "null"}, timeout=10).status_code == 403


def test_same_origin_and_no_origin_clients_work(edge: Edge) -> None:
    same = _post(edge, "/v1/flows", json=_flow("same-origin"), headers={"origin": edge.own_origin})
    assert same.status_code == 201
    delete = httpx.delete(
        f"{edge.http}/v1/flows/same-origin", headers={"origin": edge.own_origin}, timeout=10
    )
    assert delete.status_code == 204
    assert _post(edge, "/v1/flows", json=_flow("no-origin")).status_code == 201


def test_allowed_origin_works_and_can_read_the_answer(edge: Edge) -> None:
    preflight = httpx.options(
        f"{edge.http}/v1/flows",
        headers={
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    created = _post(edge, "/v1/flows", json=_flow("allowed-origin"), headers={"origin": ALLOWED})
    assert created.status_code == 201 and created.headers["access-control-allow-origin"] == ALLOWED
    assert edge.stored_flow("allowed-origin")


def test_foreign_host_is_refused_on_a_loopback_bind(edge: Edge) -> None:
    # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is "same-origin" with the server.
    rebound = {"host": f"evil.example:{edge.port}", "origin": f"http://evil.example:{edge.port}"}
    response = _post(edge, "/v1/flows", json=_flow("rebound"), headers=rebound)
    assert response.status_code == 403 and "allowed_hosts" in response.json()["detail"]
    assert (
        httpx.get(f"{edge.http}/v1/sessions", headers={"host": "evil.example"}, timeout=10).status_code == 403
    )
    assert not edge.stored_flow("rebound")
    for host in (f"localhost:{edge.port}", f"127.0.0.1:{edge.port}"):
        assert httpx.get(f"{edge.http}/health/live", headers={"host": host}, timeout=10).status_code == 200


async def test_foreign_origin_websocket_is_refused(edge: Edge) -> None:
    event, code = await _first_event(edge.ws, origin=EVIL)
    assert event["code"] == "origin_not_allowed" and code == 1008
    event, code = await _first_event(f"ws://127.0.0.1:{edge.port}/twilio/media", origin=EVIL)
    assert event["code"] == "origin_not_allowed" and code == 1008
    assert not edge.state.sessions.live


async def test_foreign_host_websocket_is_refused(edge: Edge) -> None:
    url = f"ws://evil.example:{edge.port}/v1/voice"
    event, code = await _first_event(
        url, host="127.0.0.1", port=edge.port, origin=f"http://evil.example:{edge.port}"
    )
    assert event["code"] == "host_not_allowed" and code == 1008


@pytest.mark.parametrize("origin", [None, "own", ALLOWED])
async def test_websocket_from_no_same_or_allowed_origin_opens_a_session(
    edge: Edge, origin: str | None
) -> None:
    event, _ = await _first_event(edge.ws, origin=edge.own_origin if origin == "own" else origin)
    assert event["type"] == "session.created"


# -- finding 7: body limits -----------------------------------------------------------------------------------


def test_declared_oversized_body_is_refused_with_413(edge: Edge) -> None:
    big = b'{"id": "big", "pad": "' + b"x" * JSON_LIMIT + b'"}'
    response = _post(edge, "/v1/flows", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_json_body_bytes" in response.json()["detail"]
    form = _post(edge, "/twilio/status", data={"pad": "x" * FORM_LIMIT})
    assert form.status_code == 413 and "max_form_body_bytes" in form.json()["detail"]
    offer = _post(edge, "/v1/webrtc/offer", json={"sdp": "x" * FORM_LIMIT, "type": "offer"})
    assert offer.status_code == 413


def test_chunked_oversized_body_is_cut_off_while_streaming(edge: Edge) -> None:
    chunk = b" " * (64 << 10)  # JSON whitespace: a server that kept reading would try to parse all of it
    head = (
        f"POST /v1/flows HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while sent < 50 * MB and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server answered and stopped reading while we were still sending: the point of the test
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_json_body_bytes" in answer
    assert sent < 16 * MB  # cut off early (socket buffers let a few MB through before the client notices)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except (ConnectionResetError, TimeoutError):
        pass
    return data


class _Body:
    """An ASGI ``receive`` that would stream ``total`` bytes, counting what the app pulled."""

    def __init__(self, total: int, chunk: int = 64 << 10) -> None:
        self.left = total
        self.chunk = chunk
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        if self.left <= 0:
            return {"type": "http.disconnect"}
        size = min(self.chunk, self.left)
        self.left -= size
        self.pulled += size
        return {"type": "http.request", "body": b" " * size, "more_body": self.left > 0}


async def _echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"length": len(await request.body())})


async def _swallowing(request: Request) -> JSONResponse:
    try:
        await request.body()
    except Exception:  # a route that hides errors must not turn the 413 into something else
        return JSONResponse({"detail": "swallowed"}, status_code=422)
    return JSONResponse({})


async def _call_guard(
    path: str, body: _Body, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, Any]]:
    app = Starlette(
        routes=[
            Route("/v1/echo", _echo_length, methods=["POST"]),
            Route("/v1/swallow", _swallowing, methods=["POST"]),
        ]
    )
    guard = HttpGuard(app, Settings(max_json_body_bytes=MB), Auth(None))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"), *headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await guard(scope, body, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload)


async def test_a_50_mb_chunked_body_is_read_no_further_than_the_limit() -> None:
    body = _Body(50 * MB)
    status, payload = await _call_guard("/v1/echo", body, [(b"transfer-encoding", b"chunked")])
    assert status == 413 and "max_json_body_bytes" in payload["detail"]
    assert body.pulled <= MB + body.chunk  # one chunk past the limit, never the rest


async def test_a_declared_oversized_body_is_not_read_at_all() -> None:
    body = _Body(50 * MB)
    status, _ = await _call_guard("/v1/echo", body, [(b"content-length", str(50 * MB).encode())])
    assert status == 413 and body.pulled == 0


async def test_the_413_stands_even_when_the_route_swallows_the_error() -> None:
    status, payload = await _call_guard("/v1/swallow", _Body(2 * MB), [(b"transfer-encoding", b"chunked")])
    assert status == 413 and "max_json_body_bytes" in payload["detail"]


async def test_a_body_within_the_limit_reaches_the_route() -> None:
    status, payload = await _call_guard("/v1/echo", _Body(MB), [(b"transfer-encoding", b"chunked")])
    assert status == 200 and payload == {"length": MB}


# -- finding 6: credentials in URLs and logs ------------------------------------------------------------------


def test_a_key_in_the_query_string_is_refused_with_a_clear_401(edge: Edge, api_key: str) -> None:
    for path in (f"/v1/sessions?api_key={api_key}", f"/v1/voices?api_key={api_key}"):
        response = httpx.get(f"{edge.http}{path}", timeout=10)
        assert response.status_code == 401
        assert "Authorization: Bearer" in response.json()["detail"] and "token" in response.json()["detail"]
    header = {"authorization": f"Bearer {api_key}"}
    assert httpx.get(f"{edge.http}/v1/sessions", headers=header, timeout=10).status_code == 200
    both = httpx.get(f"{edge.http}/v1/sessions?api_key={api_key}", headers=header, timeout=10)
    assert both.status_code == 401  # a key in the URL is refused even beside a good header


def test_a_key_in_the_query_string_is_refused_without_a_configured_key(edge: Edge) -> None:
    response = httpx.get(f"{edge.http}/v1/sessions?api_key=anything", timeout=10)
    assert response.status_code == 401 and "Authorization: Bearer" in response.json()["detail"]


async def test_a_key_in_a_websocket_url_is_refused(edge: Edge, api_key: str) -> None:
    event, code = await _first_event(f"{edge.ws}?api_key={api_key}")
    assert event["code"] == "unauthorized" and "token" in event["message"] and code == 1008


async def test_a_session_token_opens_one_websocket_once(edge: Edge, api_key: str) -> None:
    assert _post(edge, "/v1/sessions/token").status_code == 401
    issued = _post(edge, "/v1/sessions/token", headers={"authorization": f"Bearer {api_key}"})
    assert issued.status_code == 201 and issued.headers["cache-control"] == "no-store"
    token, expires_at = issued.json()["token"], issued.json()["expires_at"]
    assert time.time() < expires_at <= time.time() + edge.settings.session_token_ttl_s + 1
    event, _ = await _first_event(f"{edge.ws}?token={token}")
    assert event["type"] == "session.created"
    again, code = await _first_event(f"{edge.ws}?token={token}")
    assert again["code"] == "unauthorized" and code == 1008
    bearer, _ = await _first_event(edge.ws, additional_headers={"authorization": f"Bearer {api_key}"})
    assert bearer["type"] == "session.created"  # non-browser clients keep using the header


async def test_an_expired_session_token_is_refused(
    edge: Edge, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = _post(edge, "/v1/sessions/token", headers={"authorization": f"Bearer {api_key}"})
    tokens = edge.state.auth.tokens
    monkeypatch.setattr(tokens, "_clock", lambda: time.monotonic() + edge.settings.session_token_ttl_s + 1)
    event, code = await _first_event(f"{edge.ws}?token={issued.json()['token']}")
    assert event["code"] == "unauthorized" and code == 1008


def test_session_tokens_are_one_use_expire_and_stay_bounded() -> None:
    now = [100.0]
    tokens = SessionTokens(ttl_s=60, clock=lambda: now[0])
    first, expires_at = tokens.issue()
    assert abs(expires_at - (time.time() + 60)) < 5
    assert tokens.redeem(first) and not tokens.redeem(first)
    late, _ = tokens.issue()
    now[0] += 60
    assert not tokens.redeem(late) and not tokens.redeem("never-issued")
    for _ in range(SessionTokens.MAX_OUTSTANDING + 50):
        tokens.issue()
    assert len(tokens) == SessionTokens.MAX_OUTSTANDING


def test_token_endpoint_works_without_a_configured_key(edge: Edge) -> None:
    issued = _post(edge, "/v1/sessions/token")
    assert issued.status_code == 201 and issued.json()["token"]


async def test_credentials_never_reach_the_access_log(edge: Edge, api_key: str) -> None:
    header = {"authorization": f"Bearer {api_key}"}
    token = _post(edge, "/v1/sessions/token", headers=header).json()["token"]
    before = len(edge.log.lines)
    httpx.get(f"{edge.http}/v1/sessions?api_key={api_key}", timeout=10)
    httpx.get(f"{edge.http}/v1/voices?limit=3&access_token=tok-123&X-Amz-Signature=sig-456", timeout=10)
    await _first_event(f"{edge.ws}?token={token}&sample_rate=16000")
    await _first_event(f"{edge.ws}?api_key={api_key}")
    lines = edge.log.lines[before:]
    assert any("/v1/sessions?api_key=REDACTED" in line for line in lines), lines
    assert any("token=REDACTED&sample_rate=16000" in line for line in lines), lines
    text = "\n".join(lines)
    for secret in (api_key, token, "tok-123", "sig-456"):
        assert secret not in text


def test_scrubber_keeps_what_is_not_a_credential() -> None:
    assert scrub_credentials("/v1/voice?flow=faq&sample_rate=8000") == "/v1/voice?flow=faq&sample_rate=8000"
    assert (
        scrub_credentials("/x?api%5Fkey=k&Token=t&sig=s")
        == "/x?api%5Fkey=REDACTED&Token=REDACTED&sig=REDACTED"
    )
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s" %d', ("c", "GET", "/a?key=k", 200), None
    )
    assert CredentialScrubber().filter(record) and record.getMessage() == 'c - "GET /a?key=REDACTED" 200'


# -- the policies on their own ---------------------------------------------------------------------------------


def test_host_policy() -> None:
    loopback = HostPolicy([], "127.0.0.1", None)
    assert loopback.allows("localhost:8000") and loopback.allows("[::1]:8000") and loopback.allows(None)
    assert not loopback.allows("evil.example:8000") and not loopback.allows("127.0.0.1.evil.example")
    assert HostPolicy([], "0.0.0.0", None).allows("anything.example")  # not loopback: any, as documented
    tunnel = HostPolicy([], "localhost", "https://voice.example.com")
    assert tunnel.allows("voice.example.com") and not tunnel.allows("evil.example")
    listed = HostPolicy(["*.example.org", "gateway.internal"], "0.0.0.0", None)
    assert listed.allows("a.example.org") and listed.allows("gateway.internal:443")
    assert not listed.allows("example.org.evil") and not listed.allows("localhost")


def test_origin_policy() -> None:
    policy = OriginPolicy([ALLOWED + ":443"], "https://voice.example.com")
    own = parse_origin("https://voice.example.com")
    assert own is not None and policy.is_same_origin(own, "127.0.0.1:8000")
    page = parse_origin("https://gw.example.com")
    assert page is not None and policy.is_same_origin(page, "gw.example.com")  # behind a TLS proxy
    local = parse_origin("http://127.0.0.1:8000")
    assert local is not None and policy.is_same_origin(local, "127.0.0.1:8000")
    assert not policy.is_same_origin(local, "127.0.0.1:9000")
    allowed = parse_origin(ALLOWED)
    assert allowed is not None and policy.allows_cross_origin(allowed)
    evil = parse_origin(EVIL)
    assert evil is not None and not policy.allows_cross_origin(evil)
    assert parse_origin("null") is None and parse_origin("file://") is None
