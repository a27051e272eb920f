"""API keys (issue 15): /v1/keys, revocation (here at once, on another replica within seconds), one-use tokens
that carry the key that asked, and ``voxgate serve`` refusing auth without an admin token. The real app on a
real uvicorn with fake engines; storage on SQLite, and on the machine's PostgreSQL for two replicas."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from gateway.settings import Settings
from tests.conftest import LiveServer, free_port

ADMIN_TOKEN = "adm-" + "k" * 40
T = TypeVar("T")


class Platform:
    """A real uvicorn serving the real app with auth on (fake engines, instant to start)."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        from gateway.app import create_app
        from pipeline.runtime import Runtime
        from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

        self.settings = Settings(
            data_dir=data_dir,
            auth="on",
            admin_token=ADMIN_TOKEN,
            load_example_flows=False,
            database_url=database_url,
        )
        runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(), tts=FakeTTS())
        self.port = free_port()
        self.live = LiveServer(create_app(self.settings, runtime), self.port, self.settings)
        self.http = self.live.http
        self.ws = f"ws://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.http, timeout=10)

    @property
    def state(self) -> Any:
        return self.live.state

    def start(self) -> Platform:
        self.live.start()
        return self

    def stop(self) -> None:
        self.client.close()
        self.live.stop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's own loop (its database engine lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.state.loop).result(timeout=10)

    def request(self, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return self.client.request(method, path, headers=headers, **kw)

    def new_key(self, name: str, *scopes: str, **limits: Any) -> tuple[str, str]:
        """(id, secret) of a new key, made with the admin token."""
        body = {"name": name, "scopes": list(scopes), "limits": limits}
        response = self.request("POST", "/v1/keys", ADMIN_TOKEN, json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["key"]

    def revoke(self, key_id: str, end_sessions: bool = False) -> httpx.Response:
        query = "?end_sessions=true" if end_sessions else ""
        return self.request("DELETE", f"/v1/keys/{key_id}{query}", ADMIN_TOKEN)


async def first_event(url: str, key: str | None = None) -> tuple[dict[str, Any], int | None]:
    """The first event on a new socket, and the close code when it is an error the server closes after."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if event["type"] != "error":
            return event, None
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return event, ws.close_code


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    server = Platform(tmp_path_factory.mktemp("keys")).start()
    yield server
    server.stop()


def test_a_key_is_shown_once_stored_as_a_hash_and_revoked_at_once(platform: Platform) -> None:
    created = platform.request(
        "POST",
        "/v1/keys",
        ADMIN_TOKEN,
        json={"name": "flows-app", "scopes": ["flows"], "limits": {"requests_per_minute": 600}},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    secret, key_id = body["key"], body["id"]
    assert secret.startswith("vg_") and len(secret) > 40 and body["prefix"] == secret[:10]
    assert body["scopes"] == ["flows"] and body["limits"] == {"requests_per_minute": 600}

    row = platform.run(platform.state.store.keys.get(key_id))
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(row, default=str)  # only the hash is stored

    listed = platform.request("GET", "/v1/keys", ADMIN_TOKEN)
    assert listed.status_code == 200
    mine = [k for k in listed.json()["keys"] if k["id"] == key_id]
    assert len(mine) == 1 and "key" not in mine[0] and "secret_hash" not in mine[0]
    assert secret not in listed.text

    assert platform.request("GET", "/v1/flows", secret).status_code == 200
    assert platform.request("GET", "/v1/keys", secret).status_code == 403  # admin scope only
    assert platform.request("GET", "/v1/keys").status_code == 401

    revoked = platform.revoke(key_id)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    after = platform.request("GET", "/v1/flows", secret)  # the very next request
    assert after.status_code == 401 and "detail" in after.json()
    assert platform.revoke("key_does_not_exist").status_code == 404
    listed = platform.request("GET", "/v1/keys", ADMIN_TOKEN).json()["keys"]
    assert next(k for k in listed if k["id"] == key_id)["revoked_at"] is not None


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["everything"]},
        {"name": "x", "scopes": []},
        {"scopes": ["flows"]},
        {"name": "x", "scopes": ["flows"], "limits": {"requests_per_minute": -1}},
        {"name": "x", "scopes": ["flows"], "limits": {"per_hour": 5}},
    ],
)
def test_invalid_key_requests_are_422(platform: Platform, body: dict[str, Any]) -> None:
    response = platform.request("POST", "/v1/keys", ADMIN_TOKEN, json=body)
    assert response.status_code == 422 and "detail" in response.json(), response.text


async def test_revoking_with_end_sessions_closes_the_keys_live_sessions(platform: Platform) -> None:
    key_id, secret = platform.new_key("caller", "realtime", "batch")
    other_id, other = platform.new_key("bystander", "realtime")
    chat = platform.request("POST", "/v1/chat", secret, json={"message": "hello"})
    assert chat.status_code == 200, chat.text
    conversation = chat.json()["conversation_id"]
    headers = {"authorization": f"Bearer {secret}"}
    async with (
        websockets.connect(f"{platform.ws}/v1/voice", additional_headers=headers) as ws,
        websockets.connect(
            f"{platform.ws}/v1/voice", additional_headers={"authorization": f"Bearer {other}"}
        ) as bystander,
    ):
        created = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert created["type"] == "session.created"
        assert json.loads(await asyncio.wait_for(bystander.recv(), 5))["type"] == "session.created"
        session = platform.state.sessions.live[created["session_id"]]
        assert session.owner_key == key_id
        revoked = platform.revoke(key_id, end_sessions=True)
        assert revoked.status_code == 200 and revoked.json()["sessions_ended"] == 2  # the socket and the chat
        reasons = []
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if event.get("type") == "session.closed":
                    reasons.append(event["reason"])
        assert reasons == ["key_revoked"]
        assert platform.request("GET", f"/v1/chat/{conversation}", ADMIN_TOKEN).status_code == 404  # ended
        await bystander.send(json.dumps({"type": "input_text", "text": "still there?"}))
        assert json.loads(await asyncio.wait_for(bystander.recv(), 5))["type"] != "session.closed"
    event, code = await first_event(f"{platform.ws}/v1/voice", secret)
    assert (event["code"], code) == ("unauthorized", 1008)
    platform.revoke(other_id)


async def test_a_session_token_opens_one_websocket_as_the_key_that_asked(platform: Platform) -> None:
    key_id, secret = platform.new_key("browser-backend", "realtime")
    _, stranger = platform.new_key("stranger", "realtime")
    assert platform.request("POST", "/v1/sessions/token").status_code == 401
    issued = platform.request("POST", "/v1/sessions/token", secret)
    assert issued.status_code == 201
    token = issued.json()["token"]
    async with websockets.connect(f"{platform.ws}/v1/voice?token={token}") as ws:
        created = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert created["type"] == "session.created"
        session_id = created["session_id"]
        assert platform.state.sessions.live[session_id].owner_key == key_id
        assert platform.request("GET", f"/v1/sessions/{session_id}", secret).status_code == 200
        assert platform.request("GET", f"/v1/sessions/{session_id}", stranger).status_code == 404
        assert platform.request("GET", f"/v1/sessions/{session_id}", ADMIN_TOKEN).status_code == 200
    # Just ended (memory may still answer for it, or storage already does): still not the stranger's.
    assert platform.request("GET", f"/v1/sessions/{session_id}", stranger).status_code == 404
    assert platform.request("GET", f"/v1/sessions/{session_id}", secret).status_code == 200
    event, code = await first_event(f"{platform.ws}/v1/voice?token={token}")  # spent
    assert (event["code"], code) == ("unauthorized", 1008)
    event, code = await first_event(f"{platform.ws}/v1/voice")
    assert (event["code"], code) == ("unauthorized", 1008)
    _, batch_only = platform.new_key("batch-only", "batch")
    event, code = await first_event(f"{platform.ws}/v1/voice", batch_only)
    assert (event["code"], code) == ("forbidden", 1008)


async def test_revocation_reaches_another_replica_within_seconds(tmp_path: Path, postgres_url: str) -> None:
    first = Platform(tmp_path / "a", postgres_url).start()
    second = Platform(tmp_path / "b", postgres_url).start()
    try:
        key_id, secret = first.new_key("shared", "flows")
        assert second.request("GET", "/v1/flows", secret).status_code == 200  # cached there now
        assert first.revoke(key_id).status_code == 200
        assert first.request("GET", "/v1/flows", secret).status_code == 401  # this replica: at once
        revoked_at = time.monotonic()
        status = 200
        while status != 401 and time.monotonic() - revoked_at < 10:
            status = second.request("GET", "/v1/flows", secret).status_code
            if status != 401:
                await asyncio.sleep(0.1)
        assert status == 401
        # The re-check interval (2 s) plus a loaded machine's slack.
        assert time.monotonic() - revoked_at < 5.0
    finally:
        first.stop()
        second.stop()


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    clean.update({"VOXGATE_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_serve_refuses_auth_without_an_admin_token(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voxgate: auth is on"), result.stderr[-2000:]
    assert "VOXGATE_ADMIN_TOKEN" in lines[0]
    # On loopback too, when asked for (the same check: the one subprocess above is the slow part).
    from gateway.auth import start_up_problem

    problem = start_up_problem(Settings(host="127.0.0.1", auth="on"))
    assert problem is not None and "auth=on" in problem and "VOXGATE_ADMIN_TOKEN" in problem
    assert start_up_problem(Settings(host="0.0.0.0", admin_token="t" * 32)) is None


def test_the_start_up_log_says_whether_auth_is_on(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.auth import log_auth_mode, start_up_problem

    caplog.set_level(logging.INFO, logger="voxgate.auth")
    loopback = Settings(host="127.0.0.1")
    assert start_up_problem(loopback) is None
    log_auth_mode(loopback)
    assert any("auth is off" in r.getMessage() for r in caplog.records)
    caplog.clear()
    legacy = Settings(host="0.0.0.0", api_key="old-static-key")  # deprecated, still an admin credential
    assert start_up_problem(legacy) is None
    log_auth_mode(legacy)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "auth is on" in messages and "deprecated" in messages


async def test_a_key_runs_its_own_flows_and_admins_never_another_keys(platform: Platform) -> None:
    def flow(flow_id: str) -> dict[str, Any]:
        nodes = [{"id": "hi", "type": "say", "text": "Hello.", "next": "bye"}, {"id": "bye", "type": "end"}]
        return {"id": flow_id, "name": flow_id, "start": "hi", "nodes": nodes}

    _, author = platform.new_key("author", "realtime", "flows")
    _, stranger = platform.new_key("stranger-flows", "realtime", "flows")
    assert platform.request("POST", "/v1/flows", author, json=flow("authors-flow")).status_code == 201
    assert platform.request("POST", "/v1/flows", ADMIN_TOKEN, json=flow("shared-flow")).status_code == 201
    listed = {f["id"] for f in platform.request("GET", "/v1/flows", stranger).json()["flows"]}
    assert "authors-flow" not in listed
    event, code = await first_event(f"{platform.ws}/v1/voice?flow=authors-flow", stranger)
    assert (event["type"], event["code"]) == ("error", "unknown_flow"), event
    for key, flow_id in ((author, "authors-flow"), (stranger, "shared-flow")):
        event, _ = await first_event(f"{platform.ws}/v1/voice?flow={flow_id}", key)
        assert event["type"] == "session.created" and event.get("flow_id", flow_id) == flow_id, event


def test_a_key_in_a_url_is_refused_and_never_logged(platform: Platform) -> None:
    from gateway.logs import CredentialScrubber, JsonFormatter, PrivacyFilter

    _, secret = platform.new_key("leaky", "flows")
    refused = platform.request("GET", f"/v1/flows?api_key={secret}")
    assert refused.status_code == 401 and "URL" in refused.json()["detail"]
    # uvicorn's access line for it, through the filters voxgate serve gives that logger (uvicorn_log_config).
    path = f"/v1/flows?api_key={secret}&other={secret}"
    args = ("127.0.0.1:5000", "GET", path, "1.1", 401)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
    )
    assert CredentialScrubber().filter(record) and PrivacyFilter().filter(record)
    line = JsonFormatter().format(record)
    assert secret not in line and "/v1/flows?api_key=" in line


def test_a_key_reads_only_its_own_generated_files(platform: Platform) -> None:
    id_a, key_a = platform.new_key("speaker-a", "batch")
    _, key_b = platform.new_key("speaker-b", "batch")
    voice = platform.request("GET", "/v1/voices", key_a).json()["voices"][0]["id"]
    made = platform.request(
        "POST", f"/v1/text-to-speech/{voice}", key_a, json={"text": "Mine.", "output_filepath": "mine.wav"}
    )
    assert made.status_code == 200, made.text
    url = made.json()["download_url"]
    assert url == "/v1/outputs/mine.wav"
    assert platform.request("GET", url, key_a).content[:4] == b"RIFF"
    assert platform.request("GET", url, key_b).status_code == 404  # another key's file does not exist for it
    # Nor can another key write over it, or reach it by a path.
    outside = {"text": "Theirs.", "output_filepath": f"../{id_a}/mine.wav"}
    assert platform.request("POST", f"/v1/text-to-speech/{voice}", key_b, json=outside).status_code == 400
    assert platform.request("GET", f"/v1/outputs/keys/{id_a}/mine.wav", key_b).status_code == 404
    admin = platform.request("GET", f"/v1/outputs/keys/{id_a}/mine.wav", ADMIN_TOKEN)
    assert admin.status_code == 200 and admin.content == platform.request("GET", url, key_a).content
