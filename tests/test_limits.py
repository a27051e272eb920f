"""Per-key limits (issue 15): requests per minute, concurrent sessions, audio minutes per day, media jobs.

The counters are tested in memory and against the machine's real Redis (127.0.0.1:6379, a unique key prefix
per test, removed afterwards). The end-to-end tests run two app instances in this process (stand-in voice
engines: limits are what is tested) that share one database and one Redis prefix, with real API keys from
``POST /v1/keys``: a limit reached on one instance holds on the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets

redis = pytest.importorskip("redis")

from tests.conftest import LiveServer, free_port  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN = "test-admin-token"


def _redis_or_skip() -> Any:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (the shared-limit tests need one)")
    return client


def _drop_prefix(client: Any, prefix: str) -> None:
    for name in client.scan_iter(match=f"{prefix}:*", count=500):
        client.delete(name)


def _clear_of_minute_edge(margin_s: float = 4.0) -> None:
    """Requests-per-minute windows are whole minutes: a test that counts must not straddle two of them."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.05)


# -- the counters --------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def counter_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """Two replicas' counters: the same object in memory, two Redis clients sharing a prefix."""
    from gateway.limits.counters import MemoryCounters, RedisCounters

    if request.param == "memory":
        counters = MemoryCounters()
        yield counters, counters
        return
    client = _redis_or_skip()
    prefix = f"vgtest-{uuid.uuid4().hex[:10]}"
    a, b = RedisCounters(REDIS_URL, prefix, "replica-a"), RedisCounters(REDIS_URL, prefix, "replica-b")
    try:
        yield a, b
    finally:
        _drop_prefix(client, prefix)
        client.close()


async def test_counters_share_windows_and_places(counter_pair: tuple[Any, Any]) -> None:
    a, b = counter_pair
    await a.start()
    await b.start()
    try:
        _clear_of_minute_edge()
        counts = [(await (a if i % 2 else b).hit("key1"))[0] for i in range(5)]
        assert counts == [1, 2, 3, 4, 5]
        count, left = await a.hit("key2")
        assert count == 1 and 1 <= left <= 60  # another key, its own count

        assert await a.acquire("key1", 2) and await b.acquire("key1", 2)
        assert not await a.acquire("key1", 2) and not await b.acquire("key1", 2)
        assert await a.held("key1") == 2
        await b.release("key1")
        assert await a.held("key1") == 1
        assert await a.acquire("key1", 2)
    finally:
        await a.close()
        await b.close()


async def test_a_dead_replicas_places_are_freed() -> None:
    """A replica killed holding places stops holding them once its heartbeat key expires (deleted here)."""
    from gateway.limits.counters import RedisCounters

    client = _redis_or_skip()
    prefix = f"vgtest-{uuid.uuid4().hex[:10]}"
    dead, alive = RedisCounters(REDIS_URL, prefix, "dead"), RedisCounters(REDIS_URL, prefix, "alive")
    try:
        assert await dead.acquire("k", 1)
        assert not await alive.acquire("k", 1)
        client.delete(f"{prefix}:alive:dead")  # what HEARTBEAT_TTL_S does to a replica that stopped beating
        assert await alive.acquire("k", 1)
        assert await alive.held("k") == 1
    finally:
        await dead.client.aclose()
        await alive.close()
        _drop_prefix(client, prefix)
        client.close()


# -- two app instances ---------------------------------------------------------------------------------------


@dataclass
class Pair:
    a: LiveServer
    b: LiveServer
    prefix: str

    def key(self, scopes: list[str], **limits: Any) -> str:
        made = httpx.post(
            f"{self.a.http}/v1/keys",
            json={"name": f"t-{uuid.uuid4().hex[:6]}", "scopes": scopes, "limits": limits},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert made.status_code == 201, made.text
        return str(made.json()["key"])


@pytest.fixture(scope="module")
def shared_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL database for the two instances (SQLite when no server is configured: two apps'
    writers can then meet a locked file, which PostgreSQL never shows)."""
    from sqlalchemy.engine import make_url

    from tests.conftest import POSTGRES_ENV, _postgres_admin

    base = os.environ.get(POSTGRES_ENV)
    if not base:
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('limits-db') / 'shared.db'}"
        return
    name = f"voxgate_limits_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await _postgres_admin(base)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(base).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, shared_database: str) -> Iterator[Pair]:
    from gateway.app import create_app
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    client = _redis_or_skip()
    prefix = f"vgtest-{uuid.uuid4().hex[:10]}"
    data = tmp_path_factory.mktemp("limits")
    common = {
        "database_url": shared_database,
        "redis_url": REDIS_URL,
        "limits_redis_prefix": prefix,
        "admin_token": ADMIN,
        "auth": "on",
        "load_example_flows": False,
    }
    servers = []
    try:
        for name in ("a", "b"):
            settings = Settings(data_dir=data / name, instance_id=f"limits-{name}", **common)
            runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(delay_s=0.0), tts=FakeTTS())
            live = LiveServer(create_app(settings, runtime=runtime), free_port(), settings)
            live.start()  # one after the other: the first migrates the shared database
            servers.append(live)
        yield Pair(servers[0], servers[1], prefix)
    finally:
        for live in servers:
            live.stop()
        _drop_prefix(client, prefix)
        client.close()


def _get(server: LiveServer, key: str) -> httpx.Response:
    return httpx.get(f"{server.http}/v1/sessions", headers={"authorization": f"Bearer {key}"})


async def _open(server: LiveServer, key: str) -> tuple[Any, dict[str, Any]]:
    """A voice WebSocket with the key in its header, and its first event."""
    ws = await websockets.connect(server.url, additional_headers={"authorization": f"Bearer {key}"})
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, first


async def _refused(server: LiveServer, key: str) -> tuple[dict[str, Any], int | None]:
    """Open a WebSocket that is to be refused: its error event and its close code."""
    ws, first = await _open(server, key)
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except websockets.ConnectionClosed as exc:
        return first, exc.rcvd.code if exc.rcvd else None
    finally:
        await ws.close()


async def _webrtc_offer(server: LiveServer, key: str, path: str) -> httpx.Response:
    """An SDP offer to ``/v1/webrtc/offer`` (JSON) or ``/v1/realtime/calls`` (raw SDP, as OpenAI's is)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("events")
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp, auth = pc.localDescription.sdp, {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30) as http:
            if path == "/v1/webrtc/offer":
                return await http.post(
                    f"{server.http}{path}", json={"sdp": sdp, "type": "offer"}, headers=auth
                )
            headers = {**auth, "content-type": "application/sdp"}
            return await http.post(f"{server.http}{path}", content=sdp.encode(), headers=headers)
    finally:
        await pc.close()


async def test_requests_per_minute_are_shared_by_two_instances(pair: Pair) -> None:
    _clear_of_minute_edge(8.0)
    key = pair.key(["realtime"], requests_per_minute=4)
    other = pair.key(["realtime"], requests_per_minute=4)
    codes = [_get(server, key).status_code for server in (pair.a, pair.b, pair.a, pair.b)]
    assert codes == [200, 200, 200, 200]
    over = _get(pair.b, key)
    assert over.status_code == 429, over.text
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert "4 requests per minute" in over.json()["detail"]
    assert _get(pair.a, key).status_code == 429  # the other instance counts the same minute
    assert _get(pair.a, other).status_code == 200  # another key has its own count

    event, code = await _refused(pair.b, key)  # a WebSocket upgrade is a request too
    assert event["type"] == "error" and event["code"] == "rate_limited", event
    assert code == 1008


async def test_concurrent_sessions_are_shared_by_two_instances(pair: Pair) -> None:
    key = pair.key(["realtime"], concurrent_sessions=1)
    ws, first = await _open(pair.a, key)
    try:
        assert first["type"] == "session.created", first
        event, code = await _refused(pair.b, key)
        assert event["type"] == "error" and event["code"] == "limit_exceeded", event
        assert "1 session at once" in event["message"] and code == 1008
        for path in ("/v1/webrtc/offer", "/v1/realtime/calls"):  # a WebRTC call is a session too
            offer = await _webrtc_offer(pair.b, key, path)
            assert offer.status_code == 429 and "1 session at once" in offer.json()["detail"], offer.text
            assert int(offer.headers["retry-after"]) >= 1
    finally:
        await ws.close()
    # The place is given back when the session ends (on the instance that held it): poll, do not sleep.
    deadline = time.monotonic() + 10
    while True:
        ws, first = await _open(pair.b, key)
        await ws.close()
        if first["type"] == "session.created":
            break
        assert time.monotonic() < deadline, first


async def test_audio_minutes_stop_a_session_and_refuse_the_next(pair: Pair) -> None:
    """1.2 s of audio a day: a session that sends 2 s is told ``limit_exceeded`` and closed with 1008; once its
    usage is stored, a new session of that key (on the other instance) is refused at the start."""
    key = pair.key(["realtime"], audio_minutes_per_day=0.02)
    ws, first = await _open(pair.a, key)
    assert first["type"] == "session.created", first
    silence = bytes(3200)  # 100 ms of 16 kHz PCM16
    for _ in range(20):
        await ws.send(silence)
    events: list[dict[str, Any]] = []
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str):
                events.append(json.loads(message))
    except websockets.ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["code"] == "limit_exceeded", events
    assert "0.02 audio minutes" in errors[0]["message"] and code == 1008
    deadline = time.monotonic() + 10
    while True:
        ws, first = await _open(pair.b, key)
        await ws.close()
        if first["type"] == "error":
            assert first["code"] == "limit_exceeded", first
            break
        assert time.monotonic() < deadline, "the stored usage never refused a new session"


async def test_no_key_no_limit(pair: Pair) -> None:
    """The admin token carries no key: nothing limits it."""
    admin = {"authorization": f"Bearer {ADMIN}"}
    codes = {httpx.get(f"{pair.a.http}/v1/sessions", headers=admin).status_code for _ in range(3)}
    assert codes == {200}


async def test_in_memory_without_redis(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No ``redis_url``: one app counts in its own memory, with the same answers."""
    from gateway.app import create_app
    from gateway.limits.counters import MemoryCounters
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    settings = Settings(data_dir=tmp_path_factory.mktemp("limits-memory"), admin_token=ADMIN, auth="on")
    runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(delay_s=0.0), tts=FakeTTS())
    live = LiveServer(create_app(settings, runtime=runtime), free_port(), settings)
    live.start()
    try:
        assert isinstance(live.app.state.limiter.counters, MemoryCounters)
        one = Pair(live, live, "")
        _clear_of_minute_edge(8.0)
        key = one.key(["realtime"], requests_per_minute=3, concurrent_sessions=1)
        ws, first = await _open(live, key)  # request 1
        try:
            assert first["type"] == "session.created", first
            event, code = await _refused(live, key)  # request 2: over the sessions
            assert (event["code"], code) == ("limit_exceeded", 1008), event
        finally:
            await ws.close()
        assert _get(live, key).status_code == 200  # request 3
        over = _get(live, key)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1, over.text
    finally:
        live.stop()
