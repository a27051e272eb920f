"""Webhooks (issue 15) to a real local HTTP server: signed deliveries of a real voice session's events, a 500
retried with back-off and then delivered, a 4xx failed at once, no delivery sent twice (two dispatchers racing
on one database, SQLite and PostgreSQL, and a restart), private targets refused without the setting (at
registration and at delivery), ``job.finished`` from a real media job, and the routes' bad input.

The gateway runs in-process with fake voice engines (tests/test_session_core.py): what is tested is the events
and their delivery, not speech.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.client import VoiceClient
from gateway.platform_events import PlatformEvent, PlatformEvents
from gateway.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from gateway.webhooks.publish import event_id, flush_pending, publish_session_end
from gateway.webhooks.signing import verify
from storage.store import Store
from storage.webhooks import DELIVERED, WebhookStore
from tests.conftest import LiveServer, free_port

RETRY_BASE_S = 0.3
MAX_ATTEMPTS = 3


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic

    @property
    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request; answers each path with the status codes it was
    told, in order (the last one repeats; 200 when told nothing)."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.plans: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        app = Starlette(routes=[Route("/{path:path}", self._hit, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    async def _hit(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        with self._lock:
            self.hits.append(Hit(path, dict(request.headers), body, time.monotonic()))
            plan = self.plans.get(path, [200])
            status = plan.pop(0) if len(plan) > 1 else plan[0]
        return Response(b'{"detail": "planned answer"}', status_code=status, media_type="application/json")

    def at(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def wait_for(self, path: str, done: Callable[[list[Hit]], bool], timeout_s: float = 20) -> list[Hit]:
        deadline = time.monotonic() + timeout_s
        while not done(hits := self.at(path)):
            assert time.monotonic() < deadline, f"{path}: got {[h.json for h in hits]}"
            time.sleep(0.02)
        return hits

    def start(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def fake_runtime():  # type: ignore[no-untyped-def]
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    return Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM("It is noon.", delay_s=0.0), tts=FakeTTS())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    live = Receiver().start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[LiveServer]:
    """A gateway that may call loopback receivers, retries fast, and runs media jobs on the remote engine
    (pointed at the receiver, whose 400 fails them)."""
    from gateway.app import create_app
    from gateway.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("webhooks"),
        webhook_allow_private=True,
        webhook_retry_base_s=RETRY_BASE_S,
        webhook_max_attempts=MAX_ATTEMPTS,
        media_engine="remote",
        media_remote_url=f"{receiver.url}/studio",
    )
    server = LiveServer(create_app(settings, runtime=fake_runtime()), free_port(), settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.http, timeout=30) as client:
        yield client


def register(api: httpx.Client, url: str, events: list[str], **extra: Any) -> dict[str, Any]:
    answer = api.post("/v1/webhooks", json={"url": url, "events": events, **extra})
    assert answer.status_code == 201, answer.text
    hook: dict[str, Any] = answer.json()
    assert hook["secret"].startswith("whsec_") and hook["events"] == events
    return hook


def deliveries(api: httpx.Client, hook_id: str, **query: Any) -> list[dict[str, Any]]:
    answer = api.get("/v1/webhooks/deliveries", params={"webhook_id": hook_id, **query})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["deliveries"]
    return found


def wait_settled(api: httpx.Client, hook_id: str, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
    """The hook's deliveries once ``count`` of them are delivered or failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [d for d in deliveries(api, hook_id) if d["status"] in ("delivered", "failed")]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, deliveries(api, hook_id)
        time.sleep(0.05)


def publish(live: LiveServer, event: PlatformEvent) -> None:
    """Publish on the app's loop, as the gateway's own publishers do."""
    assert live.state.loop is not None
    live.state.loop.call_soon_threadsafe(live.state.events.publish, event)


def signed(hit: Hit, secret: str) -> bool:
    h = hit.headers
    return verify(secret, h["x-voxgate-timestamp"], hit.body, h["x-voxgate-signature"])


# -- a real session's events ------------------------------------------------------------------------------------


def test_a_typed_voice_session_delivers_signed_session_ended_and_transcript_ready(
    live: LiveServer, receiver: Receiver, api: httpx.Client
) -> None:
    hook = register(api, f"{receiver.url}/voice", ["session.ended", "transcript.ready"])
    listed = api.get("/v1/webhooks").json()["webhooks"]
    assert hook["id"] in [h["id"] for h in listed] and all("secret" not in h for h in listed)

    async def talk() -> tuple[str, str]:
        async with VoiceClient(live.url) as client:
            created = await client.wait_for("session.created")
            await client.send_event({"type": "input_text", "text": "What time is it?"})
            done = await client.wait_for("response.text.done", timeout=20)
            await client.wait_for("response.audio.done", timeout=20)
        return created["session_id"], done["text"]

    session_id, answer = asyncio.run(talk())
    assert answer == "It is noon."

    def mine(hits: list[Hit]) -> list[Hit]:
        return [h for h in hits if h.json["data"]["session_id"] == session_id]

    hits = mine(receiver.wait_for("/voice", lambda hits: len(mine(hits)) >= 2))
    by_type = {h.json["type"]: h for h in hits}
    assert sorted(by_type) == ["session.ended", "transcript.ready"] and len(hits) == 2
    for event_type, hit in by_type.items():
        assert signed(hit, hook["secret"]), hit.headers
        assert not verify(hook["secret"], hit.headers["x-voxgate-timestamp"], hit.body + b" ", "sha256=0")
        assert not signed(hit, "whsec_another")
        assert (
            hit.headers["x-voxgate-event"] == event_type and hit.headers["content-type"] == "application/json"
        )
        assert hit.json["id"] == event_id(event_type, session_id)

    ended = by_type["session.ended"].json["data"]
    assert ended["transport"] == "websocket" and ended["turn_count"] == 1
    assert ended["close_reason"] == "client_disconnected" and ended["flow_id"] is None
    assert ended["closed_at"] >= ended["created_at"] and ended["duration_s"] >= 0
    turns = by_type["transcript.ready"].json["data"]["turns"]
    assert [(t["source"], t["user_text"]) for t in turns] == [("text", "What time is it?")]
    assert set(turns[0]) >= {"turn_id", "heard_text", "interrupted", "started_at"}

    stored = {d["id"]: d for d in wait_settled(api, hook["id"], 2)}
    for hit in hits:
        row = stored[hit.headers["x-voxgate-delivery"]]
        assert (row["status"], row["attempts"], row["last_status_code"]) == (DELIVERED, 1, 200)
        assert row["payload"] == hit.json and row["event_type"] == hit.json["type"]
    assert api.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert hook["id"] not in [h["id"] for h in api.get("/v1/webhooks").json()["webhooks"]]


async def test_a_recorded_session_publishes_recording_ready_without_paths(tmp_path: Path) -> None:
    from tests.test_session_core import FakeLLM, FakeTTS, harness

    events = PlatformEvents()
    seen: list[PlatformEvent] = []
    events.subscribe(seen.append)
    quick = {"llm": FakeLLM("Sure.", delay_s=0.0), "tts": FakeTTS(ms_per_word=60)}
    async with harness(mic=False, recording_dir=str(tmp_path), **quick) as h:
        h.session.owner_key = "key_owner"
        await h.session.submit_text("Say something")
        await h.rec.wait("response.audio.done")
        publish_session_end(
            events, h.session
        )  # as a transport letting go of it: published once it has closed
    await flush_pending(5.0)
    assert [e.type for e in seen] == ["session.ended", "transcript.ready", "recording.ready"]
    assert all(e.subject is h.session and e.key_id == "key_owner" for e in seen)
    recording = seen[2].data
    assert recording["session_id"] == h.session.id
    files = {f["kind"]: f for f in recording["recordings"]}
    assert sorted(files) == ["agent", "caller"] and files["agent"]["id"] == f"{h.session.id}-agent"
    assert files["agent"]["duration_s"] > 0 and files["agent"]["url"] is None
    assert str(tmp_path) not in json.dumps(recording)  # paths on the server are never sent
    assert seen[0].data["close_reason"] == "client_closed" and seen[0].data["turn_count"] == 1


# -- retries ------------------------------------------------------------------------------------------------------


def test_a_500_and_a_429_are_retried_with_back_off_then_delivered(
    live: LiveServer, receiver: Receiver, api: httpx.Client
) -> None:
    receiver.plans["/flaky"] = [500, 429, 200]
    hook = register(api, f"{receiver.url}/flaky", ["call.completed"])
    publish(live, PlatformEvent("call.completed", {"call_id": "CA-retry"}, id="evt_retry_1"))
    (row,) = wait_settled(api, hook["id"], 1)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 3, 200)
    hits = receiver.at("/flaky")
    assert len(hits) == 3 and {h.headers["x-voxgate-delivery"] for h in hits} == {row["id"]}
    assert all(signed(h, hook["secret"]) and h.json["data"] == {"call_id": "CA-retry"} for h in hits)
    first_wait, second_wait = hits[1].at - hits[0].at, hits[2].at - hits[1].at
    assert first_wait >= RETRY_BASE_S * 0.9 and second_wait >= 2 * RETRY_BASE_S * 0.9, (
        first_wait,
        second_wait,
    )
    api.delete(f"/v1/webhooks/{hook['id']}")


def test_a_4xx_fails_at_once_and_a_server_error_gives_up_after_max_attempts(
    live: LiveServer, receiver: Receiver, api: httpx.Client
) -> None:
    receiver.plans["/gone"] = [410]
    receiver.plans["/down"] = [503]
    gone = register(api, f"{receiver.url}/gone", ["call.completed"])
    down = register(api, f"{receiver.url}/down", ["call.completed"])
    publish(live, PlatformEvent("call.completed", {"call_id": "CA-fail"}, id="evt_fail_1"))
    (row,) = wait_settled(api, gone["id"], 1)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("failed", 1, 410)
    (row,) = wait_settled(api, down["id"], 1)
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", MAX_ATTEMPTS, "HTTP 503")
    assert len(receiver.at("/gone")) == 1 and len(receiver.at("/down")) == MAX_ATTEMPTS
    assert [d["id"] for d in deliveries(api, down["id"], status="failed")] == [row["id"]]
    assert deliveries(api, down["id"], status="delivered") == []
    metrics = api.get("/metrics").text
    failed = [
        ln for ln in metrics.splitlines() if ln.startswith('voxgate_webhook_failures_total{outcome="failed"}')
    ]
    assert failed and float(failed[0].split()[-1]) >= 2, metrics
    for hook in (gone, down):
        api.delete(f"/v1/webhooks/{hook['id']}")


# -- never twice --------------------------------------------------------------------------------------------------


async def test_two_dispatchers_racing_on_one_database_deliver_each_event_once(
    db_url: str, receiver: Receiver
) -> None:
    path = f"/race-{db_url.split(':')[0]}"
    policy = DeliveryPolicy(allow_private=True, concurrency=4)
    stores = [await Store.open(db_url), await Store.open(db_url, migrate_schema=False)]
    client = httpx.AsyncClient()
    try:
        a, b = (WebhookDispatcher(WebhookStore(s.engine), policy, client=client) for s in stores)
        await a.store.create(
            "wh_race", owner_key=None, flow_id=None, url=receiver.url + path, events=["job.finished"],
            secret="whsec_race", now=time.time(),
        )  # fmt: skip
        events = [PlatformEvent("job.finished", {"n": n}, id=f"evt_race_{n}") for n in range(12)]
        # Both replicas see every event (published twice): each is stored once.
        added = await asyncio.gather(*(d.record(e) for e in events for d in (a, b)))
        assert sum(added) == len(events)
        # Two replicas claiming the same due delivery at once: exactly one gets it.
        (first, *_) = await a.store.due(time.time(), 1)
        now = time.time()
        claims = await asyncio.gather(a.store.claim(first, now, 60), b.store.claim(first, now, 60))
        assert sorted(c is None for c in claims) == [False, True], claims
        winner = next(c for c in claims if c is not None)
        assert await a.store.settle(first, winner["attempts"], "pending", now, next_attempt_at=now)  # let go
        while await a.store.due(time.time(), 1):
            await asyncio.gather(a.send_due(), b.send_due())
            await asyncio.gather(a.wait_inflight(), b.wait_inflight())
        hits = receiver.at(path)
        assert sorted(h.json["data"]["n"] for h in hits) == list(range(12))
        assert len({h.headers["x-voxgate-delivery"] for h in hits}) == 12
        rows = await a.store.deliveries(None, webhook_id="wh_race", limit=100)
        # Each sent once; the one claimed (and let go) above counts that claim as an attempt.
        attempts = {r["id"]: (r["status"], r["attempts"]) for r in rows}
        assert attempts == {r["id"]: (DELIVERED, 2 if r["id"] == first else 1) for r in rows}
        # A restart (a new dispatcher) finds nothing to send, and the same events published again add nothing.
        restarted = WebhookDispatcher(WebhookStore(stores[1].engine), policy, client=client)
        assert sum([await restarted.record(e) for e in events]) == 0
        assert await restarted.send_due() == 0
        assert len(receiver.at(path)) == 12
        # Retention deletes settled deliveries only: one not sent yet stays.
        assert await a.record(PlatformEvent("job.finished", {"n": 99}, id="evt_race_late")) == 1
        assert await a.store.delete_settled_before(time.time() + 1) == 12
        left = await a.store.deliveries(None, webhook_id="wh_race")
        assert [(r["event_id"], r["status"]) for r in left] == [("evt_race_late", "pending")]
    finally:
        await client.aclose()
        for store in stores:
            await store.close()


# -- private targets ------------------------------------------------------------------------------------------------


def test_private_targets_are_refused_without_the_setting(tmp_path: Path, receiver: Receiver) -> None:
    from starlette.testclient import TestClient

    from gateway.app import create_app
    from gateway.settings import Settings

    settings = Settings(data_dir=tmp_path, flow_http_allowlist=["127.0.0.2:9"])
    assert settings.webhook_allow_private is False
    with TestClient(create_app(settings, runtime=fake_runtime()), base_url="http://127.0.0.1") as client:
        for url in (
            f"{receiver.url}/private",
            "http://localhost:9/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "ftp://example.com/hook",
            "http://user:pass@93.184.216.34/hook",
        ):
            answer = client.post("/v1/webhooks", json={"url": url, "events": ["session.ended"]})
            assert answer.status_code == 422, (url, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["url"], answer.text
        refused = client.post("/v1/webhooks", json={"url": f"{receiver.url}/x", "events": ["session.ended"]})
        assert "webhook_allow_private" in refused.json()["detail"][0]["msg"]
        public = client.post(
            "/v1/webhooks", json={"url": "http://93.184.216.34/hook", "events": ["job.finished"]}
        )
        assert public.status_code == 201, public.text
        assert client.delete(f"/v1/webhooks/{public.json()['id']}").status_code == 204
        # A host the operator allowed the flow http tool to call may be private.
        trusted = client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.2:9/hook", "events": ["job.finished"]}
        )
        assert trusted.status_code == 201, trusted.text
        assert client.delete(f"/v1/webhooks/{trusted.json()['id']}").status_code == 204

        # A hook stored while its address was allowed (or whose DNS changed since) is refused at delivery.
        app_state = client.app.state.voxgate  # type: ignore[attr-defined]
        store = client.app.state.webhooks.store  # type: ignore[attr-defined]
        client.portal.call(  # type: ignore[union-attr]
            partial(
                store.create, "wh_private", owner_key=None, flow_id=None, url=f"{receiver.url}/private",
                events=["session.ended"], secret="whsec_p", now=time.time(),
            )
        )  # fmt: skip
        client.app.state.webhooks.registrations_changed()  # type: ignore[attr-defined]
        client.portal.call(  # type: ignore[union-attr]
            app_state.events.publish, PlatformEvent("session.ended", {"session_id": "s"}, id="evt_private")
        )
        deadline = time.monotonic() + 20
        while not (
            rows := client.get("/v1/webhooks/deliveries", params={"status": "failed"}).json()["deliveries"]
        ):
            assert time.monotonic() < deadline, "the delivery to a private address did not fail"
            time.sleep(0.05)
        assert rows[0]["attempts"] == 1 and rows[0]["last_error"].startswith("target refused: ")
    assert receiver.at("/private") == []


def test_a_key_registers_sees_and_receives_only_its_own(tmp_path: Path, receiver: Receiver) -> None:
    """Auth on: a key's webhooks get only its events (a per-flow one only that flow's), it lists, deletes and
    reads the deliveries of its own webhooks only; the admin's get every key's events."""
    from gateway.app import create_app
    from gateway.settings import Settings

    admin = "adm-" + "w" * 40
    settings = Settings(
        data_dir=tmp_path, auth="on", admin_token=admin, load_example_flows=False, webhook_allow_private=True
    )
    live = LiveServer(create_app(settings, runtime=fake_runtime()), free_port(), settings)
    live.start()
    try:
        with httpx.Client(base_url=live.http, timeout=10) as http:

            def call(method: str, path: str, key: str, **kw: Any) -> httpx.Response:
                return http.request(method, path, headers={"authorization": f"Bearer {key}"}, **kw)

            keys = {}
            for name, scopes in (("a", ["realtime", "flows"]), ("b", ["realtime"])):
                made = call("POST", "/v1/keys", admin, json={"name": name, "scopes": scopes, "limits": {}})
                keys[name] = (made.json()["id"], made.json()["key"])
            (a_id, a), (b_id, b) = keys["a"], keys["b"]
            flow = {
                "id": "a-flow",
                "name": "a-flow",
                "start": "hello",
                "nodes": [
                    {"id": "hello", "type": "say", "text": "Hello.", "next": "bye"},
                    {"id": "bye", "type": "end"},
                ],
            }
            assert call("POST", "/v1/flows", a, json=flow).status_code == 201

            def hook(key: str, path: str, **extra: Any) -> dict[str, Any]:
                body = {"url": f"{receiver.url}{path}", "events": ["session.ended"], **extra}
                made = call("POST", "/v1/webhooks", key, json=body)
                assert made.status_code == 201, made.text
                return made.json()  # type: ignore[no-any-return]

            hook_a, hook_b = hook(a, "/own-a"), hook(b, "/own-b")
            hook_flow, hook_admin = hook(a, "/own-a-flow", flow_id="a-flow"), hook(admin, "/own-admin")
            assert (hook_a["owner_key"], hook_b["owner_key"], hook_admin["owner_key"]) == (a_id, b_id, None)
            other = {"url": f"{receiver.url}/own-b", "events": ["session.ended"], "flow_id": "a-flow"}
            refused = call("POST", "/v1/webhooks", b, json=other)
            assert refused.status_code == 422, refused.text  # another key's flow
            assert call("GET", "/v1/webhooks", "vg_wrong").status_code == 401

            def listed(key: str) -> set[str]:
                return {h["id"] for h in call("GET", "/v1/webhooks", key).json()["webhooks"]}

            assert listed(a) == {hook_a["id"], hook_flow["id"]} and listed(b) == {hook_b["id"]}
            assert listed(admin) == {hook_a["id"], hook_b["id"], hook_flow["id"], hook_admin["id"]}
            assert call("DELETE", f"/v1/webhooks/{hook_a['id']}", b).status_code == 404

            for n, (key_id, flow_id) in enumerate(((a_id, None), (b_id, None), (a_id, "a-flow"))):
                event = PlatformEvent(
                    "session.ended", {"n": n}, key_id=key_id, flow_id=flow_id, id=f"evt_own_{n}"
                )
                publish(live, event)
            receiver.wait_for("/own-admin", lambda hits: len(hits) == 3)

            def got(path: str, count: int) -> list[int]:
                return sorted(h.json["data"]["n"] for h in receiver.wait_for(path, lambda h: len(h) >= count))

            assert (got("/own-a", 2), got("/own-b", 1), got("/own-a-flow", 1)) == ([0, 2], [1], [2])

            def seen(key: str, **query: Any) -> list[dict[str, Any]]:
                answer = call("GET", "/v1/webhooks/deliveries", key, params=query)
                return answer.json()["deliveries"]  # type: ignore[no-any-return]

            assert len(seen(admin)) == 7  # every delivery is stored when its event is: none is missing
            assert {d["webhook_id"] for d in seen(a)} == {hook_a["id"], hook_flow["id"]} and len(seen(a)) == 3
            assert [d["webhook_id"] for d in seen(b)] == [hook_b["id"]]
            assert seen(b, webhook_id=hook_a["id"]) == []
    finally:
        live.stop()


def test_bad_requests_get_a_clear_4xx(api: httpx.Client, receiver: Receiver) -> None:
    url = f"{receiver.url}/bad"
    for body in (
        {"url": url, "events": []},
        {"url": url, "events": ["session.started"]},
        {"url": url},
        {"url": url, "events": ["session.ended"], "secret": "mine"},
        {"url": url, "events": ["session.ended"], "flow_id": "no-such-flow"},
        {"url": "", "events": ["session.ended"]},
        ["not", "an", "object"],
    ):
        answer = api.post("/v1/webhooks", json=body)
        assert answer.status_code == 422 and "detail" in answer.json(), (body, answer.text)
    assert (
        api.post("/v1/webhooks", content=b"{", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert api.delete("/v1/webhooks/wh_unknown").status_code == 404
    for query in ({"status": "sent"}, {"limit": "0"}, {"limit": "x"}):
        answer = api.get("/v1/webhooks/deliveries", params=query)
        assert answer.status_code == 422 and "detail" in answer.json(), (query, answer.text)


# -- media jobs -----------------------------------------------------------------------------------------------------


def test_a_media_job_that_ends_delivers_job_finished(
    live: LiveServer, receiver: Receiver, api: httpx.Client
) -> None:
    receiver.plans["/studio/image/generate"] = [400]  # the remote studio refuses: the job fails
    hook = register(api, f"{receiver.url}/jobs", ["job.finished"])
    deadline = time.monotonic() + 20
    while (
        answer := api.post("/image/generate", json={"prompt": "a red door", "width": 64, "height": 64})
    ).status_code == 503:
        assert time.monotonic() < deadline, answer.text  # the remote engine still loading
        time.sleep(0.05)
    (hit,) = receiver.wait_for("/jobs", lambda hits: len(hits) >= 1)
    assert signed(hit, hook["secret"]) and hit.headers["x-voxgate-event"] == "job.finished"
    job = hit.json["data"]
    assert job["status"] == "failed" and job["task"] == "text-to-image" and job["error"]
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"
    assert receiver.at("/studio/image/generate"), "the job never reached the remote engine"
    api.delete(f"/v1/webhooks/{hook['id']}")


async def test_a_job_run_by_a_worker_process_stores_job_finished_for_the_gateways(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``voxgate worker`` (its code, in this process) stores job.finished in the shared database; a gateway's
    dispatcher sends it."""
    redis = pytest.importorskip("redis.asyncio")
    import uuid

    from engines.media_base import MediaRequest
    from gateway.media.service import MediaJobs
    from gateway.media.worker import run_worker
    from gateway.settings import Settings

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        pytest.skip(f"no Redis at 127.0.0.1:6379 ({exc})")
    queue = f"voxgate-test-webhooks-{uuid.uuid4().hex[:12]}"
    receiver.plans["/studio-worker/image/generate"] = [400]
    settings = Settings(
        data_dir=tmp_path,
        media_engine="remote",
        media_remote_url=f"{receiver.url}/studio-worker",
        media_queue="redis",
        media_redis_url="redis://127.0.0.1:6379/0",
        media_redis_queue=queue,
    )
    store = await Store.open(settings.storage_url())
    gateway = MediaJobs(settings, store)  # the gateway's side: queues only
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    hooks = WebhookStore(store.engine)
    try:
        await hooks.create(
            "wh_worker", owner_key=None, flow_id=None, url=receiver.url + "/worker-jobs",
            events=["job.finished"], secret="whsec_w", now=time.time(),
        )  # fmt: skip
        await gateway.start()
        request = MediaRequest(task="text-to-image", prompt="a door", width=64, height=64, steps=1)
        job = await gateway.submit("image", request, api="studio")
        ended = await gateway.wait(job["id"], 30)
        assert ended is not None and ended["status"] == "failed", ended
        deadline = time.monotonic() + 20
        while not (rows := await hooks.deliveries(None, webhook_id="wh_worker")):
            assert time.monotonic() < deadline and not worker.done(), "the worker stored no job.finished"
            await asyncio.sleep(0.05)
        assert rows[0]["event_type"] == "job.finished" and rows[0]["payload"]["data"]["id"] == job["id"]
        http = httpx.AsyncClient()
        sender = WebhookDispatcher(hooks, DeliveryPolicy(allow_private=True), client=http)
        assert await sender.send_due() == 1
        await sender.wait_inflight()
        (hit,) = receiver.at("/worker-jobs")
        assert hit.json["data"]["status"] == "failed" and verify(
            "whsec_w", hit.headers["x-voxgate-timestamp"], hit.body, hit.headers["x-voxgate-signature"]
        )
        await sender.stop(1.0)
        await http.aclose()
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
        await gateway.stop()
        await store.close()
        keys = [k async for k in client.scan_iter(f"{queue}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
