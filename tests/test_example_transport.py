"""A new transport is one file plus its test: tests/example_transport.py, registered with one line (its
``routes`` in ``all_routes()``), carries a real typed turn end to end with fake engines."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests import example_transport
from tests.conftest import LiveServer, free_port


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway import app as app_module
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

    original = app_module.all_routes
    # The one registration line, as it would read in gateway/app.py's all_routes().
    app_module.all_routes = lambda: [*original(), *example_transport.routes]  # type: ignore[assignment]
    try:
        settings = Settings(data_dir=Path(tmp_path_factory.mktemp("example")), load_example_flows=False)
        runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(), tts=FakeTTS())
        live = LiveServer(app_module.create_app(settings, runtime), free_port(), settings)
    finally:
        app_module.all_routes = original  # type: ignore[assignment]
    live.start()
    yield live
    live.stop()


async def _until(ws: websockets.ClientConnection, type_: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        seen.append(message)
        if message["type"] == type_:
            return message


async def test_a_typed_turn_runs_through_the_example_transport(example_server: LiveServer) -> None:
    url = f"ws://127.0.0.1:{example_server.port}/test/json-voice"
    seen: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        created = await _until(ws, "session.created", seen)
        session = example_server.state.sessions.live[created["session_id"]]
        assert session.config.transport == "json-voice"
        await ws.send(json.dumps({"text": "Say the alphabet"}))
        final = await _until(ws, "transcript.final", seen)
        assert final["text"] == "Say the alphabet" and final["source"] == "text"
        started = await _until(ws, "response.started", seen)
        assert started["turn_id"] == final["turn_id"]
        done = await _until(ws, "response.audio.done", seen)
        assert done["response_id"] == started["response_id"] and done["audio_ms"] > 0
        audio = [base64.b64decode(m["audio"]) for m in seen if m["type"] == "audio"]
        assert audio and all(len(frame) == 640 for frame in audio)  # 20 ms of PCM16 at 16 kHz each
        texts = [m["text"] for m in seen if m["type"] == "response.text.done"]
        assert texts and texts[0]
        await ws.send(json.dumps({"type": "close"}))
        closed = await _until(ws, "session.closed", seen)
        assert closed["reason"] == "client_closed"
    gauge = example_server.state.runtime.metrics.active_sessions.labels("json-voice")
    for _ in range(100):
        if not example_server.state.sessions.live and gauge._value.get() == 0:
            break
        await asyncio.sleep(0.05)
    assert not example_server.state.sessions.live and gauge._value.get() == 0
