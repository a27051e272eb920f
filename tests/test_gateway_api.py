"""The service's HTTP surface and every kind of bad WebSocket input, against the real server."""

from __future__ import annotations

import asyncio
import gc
import json

import httpx
import pytest
import websockets

from gateway.client import VoiceClient

pytestmark = pytest.mark.slow


def _get(server, path: str, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(f"{server.http}{path}", timeout=10, **kw)


def test_health_endpoints(server) -> None:
    assert _get(server, "/health/live").json() == {"status": "ok"}
    assert _get(server, "/health/ready").json() == {"status": "ready"}
    health = _get(server, "/health").json()
    assert health["status"] == "healthy" and health["model_loaded"] is True and health["device"] == "cpu"
    assert health["engines"] == {
        "vad": "SileroVAD",
        "stt": "WhisperSTT",
        "llm": "LlamaCppLLM",
        "tts": "PiperTTS",
    }


def test_long_lived_heap_is_frozen_once_ready(server) -> None:
    # The engines and modules loaded at start-up are left out of garbage collection: a full collection
    # over them would pause every call's audio for ~100 ms.
    assert _get(server, "/health/ready").json() == {"status": "ready"}
    assert gc.get_freeze_count() > 50_000


def test_index_serves_page_or_json(server) -> None:
    info = _get(server, "/", headers={"Accept": "application/json"}).json()
    assert info["name"] == "voxgate" and info["endpoints"]["voice"] == "/v1/voice"
    page = _get(server, "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_unknown_session_is_a_json_404(server) -> None:
    response = _get(server, "/v1/sessions/sess_nope")
    assert response.status_code == 404 and response.json() == {"detail": "no such session"}


def test_voices_lists_the_shipped_voice(server) -> None:
    voices = _get(server, "/v1/voices").json()["voices"]
    joe = next(v for v in voices if v["id"] == "en_US-joe-medium")
    assert joe["sample_rate"] == 22050 and joe["engine"] == "piper"


async def test_metrics_after_a_turn(server) -> None:
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        await client.send_event({"type": "input_text", "text": "Say hello."})
        await client.wait_for("response.audio.done", timeout=60)
        text = (await asyncio.to_thread(_get, server, "/metrics")).text
    assert 'voxgate_stage_latency_seconds_count{stage="llm_ttft"}' in text
    assert 'voxgate_stage_latency_seconds_count{stage="tts_ttfb"}' in text
    assert 'voxgate_stage_latency_seconds_count{stage="voice_to_voice"}' in text
    assert "voxgate_active_sessions" in text and "voxgate_event_loop_lag_seconds" in text
    assert 'voxgate_queue_depth{queue="input_backlog_seconds"}' in text
    assert "voxgate_dropped_input_seconds_total" in text


async def _errors_after(client: VoiceClient, payload: bytes | str) -> dict:
    before = len(client.received.of("error"))
    await client.send_raw(payload)
    return await client.wait_for("error", timeout=5, count=before + 1)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"no_type": true}', "invalid_event"),
        ('{"type": "input_teleport"}', "unknown_event"),
        ('{"type": "input_dtmf"}', "invalid_event"),
        ('{"type": "input_dtmf", "digit": "55"}', "invalid_event"),
        ('{"type": "input_text", "text": ""}', "invalid_event"),
        ('{"type": "output_audio.played", "response_id": "r", "ms": -5}', "invalid_event"),
        ('{"type": "session.update", "session": {"voice": "nobody"}}', "unknown_voice"),
        ('{"type": "session.update", "session": {"output_sample_rate": 12345}}', "unsupported_audio_format"),
        ('{"type": "session.update", "session": {"vad": {"end_of_turn_ms": 5}}}', "invalid_event"),
        ('{"type": "session.update", "session": {"colour": "blue"}}', "invalid_event"),
        (b"\x00\x01\x02", "invalid_audio"),
    ],
)
async def test_bad_input_gets_a_coded_error_and_the_session_goes_on(server, payload, code) -> None:
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        error = await _errors_after(client, payload)
        assert error["code"] == code and error["message"]
        await client.send_event({"type": "input_dtmf", "digit": "7"})
        assert (await client.wait_for("dtmf.received", timeout=5))["digit"] == "7"


async def test_session_answers_after_a_barrage_of_bad_input(server) -> None:
    async with VoiceClient(server.url) as client:
        await client.wait_for("session.created")
        for bad in ["{", '{"type": 3}', b"\x01", '{"type": "input_text"}', "null"]:
            await client.send_raw(bad)
        await client.send_event({"type": "input_text", "text": "Say hello."})
        done = await client.wait_for("response.text.done", timeout=30)
    assert done["text"]
    assert len(client.received.of("error")) == 5


@pytest.mark.parametrize("query", ["sample_rate=12345", "encoding=flac", "sample_rate=abc"])
async def test_unsupported_audio_format_is_refused_with_a_reason(server, query) -> None:
    async with websockets.connect(f"{server.url}?{query}") as ws:
        event = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert event["type"] == "error" and event["code"] == "unsupported_audio_format"
    assert closed.value.rcvd.code == 1003 and closed.value.rcvd.reason


async def test_message_over_1_mib_closes_with_1009(server) -> None:
    async with websockets.connect(server.url, max_size=None) as ws:
        json.loads(await ws.recv())
        await ws.send(b"\x00" * (1024 * 1024 + 2))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
    assert closed.value.rcvd.code == 1009


async def test_max_sessions_refuses_with_1013(server) -> None:
    state = server.state
    async with VoiceClient(server.url) as first:
        await first.wait_for("session.created")
        # Earlier tests' sessions may still be ending: the limit is set once only this one holds a place.
        deadline = asyncio.get_running_loop().time() + 10
        while len(state.sessions.live) + state.sessions.reserved > 1:
            assert asyncio.get_running_loop().time() < deadline, list(state.sessions.live)
            await asyncio.sleep(0.02)
        saved, state.sessions.max_sessions = state.sessions.max_sessions, 1
        try:
            async with websockets.connect(server.url) as ws:
                event = json.loads(await ws.recv())
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
        finally:
            state.sessions.max_sessions = saved
        await first.send_event({"type": "input_dtmf", "digit": "1"})
        await first.wait_for("dtmf.received")
    assert event["code"] == "server_busy" and closed.value.rcvd.code == 1013


async def test_idle_session_times_out(server) -> None:
    settings = server.state.settings
    saved, settings.idle_timeout_s = settings.idle_timeout_s, 1.0
    try:
        async with VoiceClient(server.url) as client:
            await client.wait_for("session.created")
            closed = await client.wait_for("session.closed", timeout=10)
    finally:
        settings.idle_timeout_s = saved
    assert closed["reason"] == "idle_timeout"


async def test_a_failing_session_does_not_touch_another(server) -> None:
    async with VoiceClient(server.url) as broken, VoiceClient(server.url) as healthy:
        broken_id = (await broken.wait_for("session.created"))["session_id"]
        await healthy.wait_for("session.created")
        session = server.state.sessions.live[broken_id]

        def explode(*args) -> None:  # type: ignore[no-untyped-def]
            raise RuntimeError("simulated fault in one session's audio path")

        session.pacer.enqueue = explode  # a fault inside this session's response pipeline only
        await broken.send_event({"type": "input_text", "text": "Say hello."})
        await healthy.send_event({"type": "input_text", "text": "Say hello."})
        error = await broken.wait_for("error", timeout=30)
        done = await healthy.wait_for("response.audio.done", timeout=60)
        await broken.send_event({"type": "input_dtmf", "digit": "9"})
        await broken.wait_for("dtmf.received", timeout=5)
    assert error["code"] == "response_failed" and done["audio_ms"] > 0
    assert _get(server, "/health").json()["status"] == "healthy"


async def test_api_key_when_configured(server) -> None:
    auth = server.state.auth
    auth.api_key = "s3cret"
    try:
        assert _get(server, "/v1/voices").status_code == 401
        assert _get(server, "/v1/voices", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        async with websockets.connect(server.url) as ws:
            event = json.loads(await ws.recv())
        assert event["code"] == "unauthorized"
        async with websockets.connect(f"{server.url}?api_key=s3cret") as ws:
            event = json.loads(await ws.recv())
        assert event["code"] == "unauthorized"  # never in the URL: URLs are logged
        token = httpx.post(
            f"{server.http}/v1/sessions/token", headers={"Authorization": "Bearer s3cret"}, timeout=10
        ).json()["token"]
        async with VoiceClient(f"{server.url}?token={token}") as client:
            await client.wait_for("session.created")
    finally:
        auth.api_key = None
