"""The provider layer: a provider is one package plus one registry line. Relay (tests/relay_provider.py), a
made-up provider, is registered with that one line, and one call runs through the neutral media-stream call:
its routes are mounted, its name labels the session, the metrics and the stored call, its call control
receives the flow's transfer."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from telephony import registry
from telephony.call_provider import TelephonyProvider
from tests import relay_provider
from tests.conftest import LiveServer, free_port

KEY = {"X-Relay-Key": "relay-test-key"}


def test_every_registered_provider_keeps_the_contract_under_its_own_name() -> None:
    assert registry.PROVIDERS, "no provider registered"
    for name, provider in registry.PROVIDERS.items():
        assert isinstance(provider, TelephonyProvider), name
        assert provider.name == name == provider.stream.name
    assert registry.outbound_provider() is registry.PROVIDERS[registry.OUTBOUND_PROVIDER]
    paths = [route.path for route in registry.routes()]  # type: ignore[attr-defined]
    assert {"/twilio/voice", "/twilio/status", "/twilio/media"} <= set(paths)
    assert isinstance(relay_provider.PROVIDER, TelephonyProvider)


@pytest.fixture
def relay_server(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """A second app, built after Relay was registered, sharing the first server's loaded engines."""
    from gateway.app import create_app

    monkeypatch.setitem(registry.PROVIDERS, "relay", relay_provider.PROVIDER)  # the one registry line
    relay_provider.PROVIDER.actions.clear()
    settings = server.state.settings.model_copy(update={"data_dir": tmp_path})
    live = LiveServer(create_app(settings, runtime=server.state.runtime), free_port(), settings)
    live.start()
    yield live
    live.stop()


async def _stream_silence(ws: websockets.ClientConnection, stream: str) -> None:
    """A caller who says nothing: 20 ms of mu-law silence every 20 ms, timestamped, until the socket goes."""
    frame = base64.b64encode(b"\xff" * 160).decode()
    ms = 0
    try:
        while True:
            await ws.send(json.dumps({"type": "audio", "stream": stream, "ms": ms, "audio": frame}))
            ms += 20
            await asyncio.sleep(0.02)
    except websockets.ConnectionClosed:
        return


def _stored_call(db: Path, call_id: str) -> tuple[str, str, str, str] | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT provider, status, direction, from_number FROM calls WHERE id = ?", (call_id,)
        ).fetchone()
    return tuple(row) if row else None


async def test_a_registered_provider_serves_a_call_through_the_neutral_media_call(
    relay_server: LiveServer, runtime, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    url = f"ws://127.0.0.1:{relay_server.port}{relay_provider.MEDIA_PATH}"
    with pytest.raises(websockets.InvalidStatus) as refused:  # the provider's own upgrade check
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 403

    params = {"flow": "phone-menu", "from": "+15557654321", "to": "+15550001111"}
    frames: list[bytes] = []
    marks: list[str] = []
    async with websockets.connect(url, additional_headers=KEY) as ws:
        await ws.send(json.dumps({"type": "start", "stream": "RS1", "call": "RC1", "params": params}))
        await ws.send("{not json")  # counted under the provider's name, and the call goes on
        caller = asyncio.create_task(_stream_silence(ws, "RS1"))
        session = None
        pressed = False
        async with asyncio.timeout(60):
            async for text in ws:
                message = json.loads(text)
                if message["type"] == "audio":
                    frames.append(base64.b64decode(message["audio"]))
                elif message["type"] == "mark":  # played at once: Relay's caller has no buffer
                    marks.append(message["name"])
                    await ws.send(json.dumps({"type": "played", "stream": "RS1", "name": message["name"]}))
                if session is None and relay_server.state.sessions.live:
                    session = next(iter(relay_server.state.sessions.live.values()))
                if len(frames) >= 25 and not pressed:  # half a second of the prompt: the caller presses 2
                    pressed = True
                    await ws.send(json.dumps({"type": "digit", "stream": "RS1", "digit": "2"}))
        await caller
    assert ws.close_code == 1000

    assert session is not None and session.config.transport == "relay" and session.caller == "+15557654321"
    assert session.dtmf_digits == ["2"]
    assert relay_provider.PROVIDER.actions == [("RC1", "transfer", "+15555550142")]
    assert frames and all(len(f) == 160 for f in frames)
    assert marks and marks[0].endswith(":100")
    metrics = runtime.metrics
    assert metrics.errors.labels("relay_invalid_json")._value.get() >= 1
    db = tmp_path / "voxgate.db"
    deadline = asyncio.get_running_loop().time() + 10
    while (stored := _stored_call(db, "RC1")) is None or stored[1] != "completed":
        assert asyncio.get_running_loop().time() < deadline, stored
        await asyncio.sleep(0.1)
    assert stored == ("relay", "completed", "inbound", "+15557654321")
    assert metrics.active_sessions.labels("relay")._value.get() == 0
