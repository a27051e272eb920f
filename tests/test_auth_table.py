"""Every route, from the app's own route list, against every kind of caller (issue 15): no key, a key without
the route's scope, a revoked key, a key of the right scope asking for another key's resource, and a valid key.

A route added without a declared scope fails ``test_every_route_declares_its_scope``; a new route is in the
table as soon as it is in ``all_routes()``. The real app on a real uvicorn (fake engines), auth on."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from gateway.app import all_routes
from gateway.auth import ANY_KEY, PUBLIC, ROUTE_SCOPES, SIGNED, public_if, route_scope
from gateway.principal import SCOPES
from tests.test_http_guard import _flow
from tests.test_keys import ADMIN_TOKEN, Platform

PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")
# Path parameters that name a resource a key owns, and the kind of resource they name.
RESOURCE_PARAMS = {
    "session_id": "sessions",
    "flow_id": "flows",
    "sid": "calls",
    "job_id": "jobs",
    "video_id": "jobs",
    "conversation_id": "chats",
}


@dataclass
class Caller:
    """A key and the resources it owns, by kind."""

    key_id: str
    secret: str
    owns: dict[str, str] = field(default_factory=dict)


@dataclass
class Table:
    platform: Platform
    valid: dict[str, Caller]  # by scope: a key with only that scope
    other: dict[str, Caller]  # by scope: a second key with that scope, owning its own resources
    revoked: dict[str, str]  # by scope: a revoked key's secret


def _session_of(platform: Platform, secret: str) -> str:
    """A voice session opened (and closed) with this key, once storage has it."""

    async def open_one() -> str:
        headers = {"authorization": f"Bearer {secret}"}
        async with websockets.connect(f"{platform.ws}/v1/voice", additional_headers=headers) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert created["type"] == "session.created", created
            return str(created["session_id"])

    session_id = asyncio.run(open_one())
    deadline = time.monotonic() + 10
    while platform.run(platform.state.store.keys.owner_of("sessions", session_id))[0] is False:
        assert time.monotonic() < deadline, "the session was never stored"
        time.sleep(0.05)
    return session_id


def _own_resources(platform: Platform, caller: Caller, scope: str, tag: str) -> None:
    store = platform.state.store
    if scope == "flows":
        flow_id = f"flow-{tag}"
        assert platform.request("POST", "/v1/flows", caller.secret, json=_flow(flow_id)).status_code == 201
        caller.owns["flows"] = flow_id
    elif scope == "realtime":
        caller.owns["sessions"] = _session_of(platform, caller.secret)
    elif scope == "calls":
        sid = f"CA{uuid.uuid4().hex}"
        values = {"direction": "outbound", "status": "completed", "owner_key": caller.key_id}
        platform.run(store.merge_call(sid, values, provider="twilio", now=time.time()))
        caller.owns["calls"] = sid
    elif scope == "media":
        job_id = f"job_{uuid.uuid4().hex}"
        jobs = platform.live.app.state.media_jobs.jobs
        create = jobs.create(
            job_id, kind="video", task="text-to-video", request={}, now=time.time(), owner_key=caller.key_id
        )
        platform.run(create)
        caller.owns["jobs"] = job_id
    elif scope == "batch":
        chat = platform.request("POST", "/v1/chat", caller.secret, json={"message": "hello there"})
        assert chat.status_code == 200, chat.text
        caller.owns["chats"] = chat.json()["conversation_id"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    platform = Platform(tmp_path_factory.mktemp("auth-table")).start()
    valid: dict[str, Caller] = {}
    other: dict[str, Caller] = {}
    revoked: dict[str, str] = {}
    for scope in SCOPES:
        valid[scope] = Caller(*platform.new_key(f"valid-{scope}", scope))
        other[scope] = Caller(*platform.new_key(f"other-{scope}", scope))
        gone_id, revoked[scope] = platform.new_key(f"revoked-{scope}", scope)
        assert platform.revoke(gone_id).status_code == 200
        _own_resources(platform, valid[scope], scope, f"valid-{scope}")
        _own_resources(platform, other[scope], scope, f"other-{scope}")
    yield Table(platform, valid, other, revoked)
    platform.stop()


def _routes() -> list[BaseRoute]:
    # Deleting routes last: a valid key's DELETE removes the resource the other routes read.
    routes = [r for r in all_routes() if not isinstance(r, Mount)]
    return sorted(routes, key=lambda r: "DELETE" in (getattr(r, "methods", None) or ()))


def _id(route: BaseRoute) -> str:
    methods = sorted((getattr(route, "methods", None) or {"WS"}) - {"HEAD"})
    return f"{methods[0]} {getattr(route, 'path', route)}"


def test_every_route_declares_its_scope() -> None:
    undeclared = [_id(r) for r in all_routes() if route_scope(r) not in ROUTE_SCOPES]
    assert not undeclared, f"routes without scoped(route, SCOPE): {undeclared}"


def _needed(route: BaseRoute, platform: Platform) -> str:
    scope = route_scope(route)
    assert scope is not None
    flag = public_if(route)
    if flag is not None and getattr(platform.state.auth, flag):
        return PUBLIC
    return scope


def _path(route: BaseRoute, owner: Caller | None) -> tuple[str, bool]:
    """The route's path with its parameters filled: the owner's resources where it has them (True if any)."""
    used = False

    def fill(match: re.Match[str]) -> str:
        nonlocal used
        kind = RESOURCE_PARAMS.get(match[1])
        if owner is not None and kind is not None and kind in owner.owns:
            used = True
            return owner.owns[kind]
        return "image-0.png" if match[1] == "name" else "nothing-here"

    return PARAM.sub(fill, getattr(route, "path", "")), used


def _http(platform: Platform, route: Route, path: str, secret: str | None) -> int:
    method = sorted((route.methods or {"GET"}) - {"HEAD"})[0]
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    with platform.client.stream(method, path, headers=headers, **body) as response:
        if response.status_code >= 400:
            response.read()
            assert response.status_code == 404 or "detail" in response.json() or "error" in response.json()
        return response.status_code


async def _ws_first(platform: Platform, path: str, secret: str | None) -> dict[str, Any]:
    """The first event (``{}`` when the server closed without one) and the close code."""
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    try:
        ws = await websockets.connect(f"{platform.ws}{path}", additional_headers=headers)
    except websockets.InvalidStatus as exc:  # the route's own refusal (Twilio's, without its signature)
        return {"http_status": exc.response.status_code}
    async with ws:
        try:
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except websockets.ConnectionClosed:
            event = {}
        if event.get("type") == "error":
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            event["close_code"] = ws.close_code
        return event


def _ws_status(event: dict[str, Any]) -> int:
    """A socket's answer in HTTP terms, for one table: 401/403 for the edge's refusals, else 200."""
    if "http_status" in event:
        return int(event["http_status"])
    code = event.get("code") or (event.get("error") or {}).get("code")
    if code in ("unauthorized", "forbidden"):
        assert event["close_code"] == 1008, event
        return 401 if code == "unauthorized" else 403
    return 200


def _hit(platform: Platform, route: BaseRoute, path: str, secret: str | None) -> int:
    if isinstance(route, WebSocketRoute):
        return _ws_status(asyncio.run(_ws_first(platform, path, secret)))
    assert isinstance(route, Route)
    return _http(platform, route, path, secret)


def _wrong_scope(needed: str) -> str:
    return "batch" if needed != "batch" else "media"


@pytest.mark.parametrize("route", _routes(), ids=_id)
def test_route_answers_each_caller(table: Table, route: BaseRoute) -> None:
    platform = table.platform
    needed = _needed(route, platform)
    if needed in (PUBLIC, SIGNED):
        path, _ = _path(route, None)
        status = _hit(platform, route, path, None)
        assert status not in (401, 500), (status, "a public or signed route needs no key")
        if needed == PUBLIC:
            assert status != 403
        return
    scope = needed if needed != ANY_KEY else "flows"  # any key will do: a flows key
    valid, other = table.valid[scope], table.other[scope]
    path, _ = _path(route, None)
    assert _hit(platform, route, path, None) == 401, "no key"
    if needed != ANY_KEY:
        assert _hit(platform, route, path, table.valid[_wrong_scope(needed)].secret) == 403, "wrong scope"
    assert _hit(platform, route, path, table.revoked[scope]) == 401, "revoked key"
    # Where the path ends at the resource, it exists; a sub-resource (a file, a recording) may not yet.
    last = PARAM.fullmatch(getattr(route, "path", "").rsplit("/", 1)[-1])
    whole = last is not None and last[1] in RESOURCE_PARAMS
    others_path, others = _path(route, other)
    if others and needed != "admin":
        assert _hit(platform, route, others_path, valid.secret) == 404, "another key's resource"
        status = _hit(platform, route, others_path, ADMIN_TOKEN)
        assert status not in (401, 403, 500) and not (whole and status == 404), f"admin sees all: {status}"
    own_path, own = _path(route, valid)
    status = _hit(platform, route, own_path, valid.secret)
    assert status not in (401, 403, 500), f"valid key: {status}"
    if own and whole:
        assert status != 404, "a key sees its own resource"


def test_a_route_without_a_declared_scope_needs_admin(table: Table) -> None:
    """Fail closed: a route someone forgot to declare is refused to every key but admin's."""
    from starlette.responses import PlainTextResponse

    platform = table.platform

    async def probe(_: Any) -> PlainTextResponse:
        return PlainTextResponse("reached")

    undeclared = Route("/v1/undeclared-probe", probe)
    routes = platform.live.app.router.routes
    routes.insert(0, undeclared)
    try:
        everything_but_admin = platform.new_key("all-but-admin", *(s for s in SCOPES if s != "admin"))[1]
        assert platform.request("GET", "/v1/undeclared-probe").status_code == 401
        assert platform.request("GET", "/v1/undeclared-probe", everything_but_admin).status_code == 403
        reached = platform.request("GET", "/v1/undeclared-probe", ADMIN_TOKEN)
        assert (reached.status_code, reached.text) == (200, "reached")
    finally:
        routes.remove(undeclared)
