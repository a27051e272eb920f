"""Graceful drain: SIGTERM with a caller on the line (gateway/drain.py, issue 15)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from gateway.client import VoiceClient
from pipeline.audio import pcm16_to_float
from storage.store import Store
from tests.speech import energy_dbfs, piper_pcm, wer
from tests.voxgate_process import VoxgateProcess

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
GOODBYE = "The gateway is going down for maintenance. Please call back later. Goodbye."


async def _poll(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_sigterm_drains_a_live_voice_session(tmp_path: Path, runtime) -> None:  # type: ignore[no-untyped-def]
    env = {
        "VOXGATE_LLM_MAX_TOKENS": "16",
        "VOXGATE_DRAIN_TIMEOUT_S": "2",
        "VOXGATE_DRAIN_GOODBYE": GOODBYE,
        "VOXGATE_LOG_LEVEL": "info",
    }
    server = VoxgateProcess(tmp_path, env).start()
    try:
        async with VoiceClient(server.url) as client:
            session_id = (await client.wait_for("session.created"))["session_id"]
            await client.stream(piper_pcm(QUESTION))
            silence = asyncio.create_task(client.silence(1.5))
            heard = await client.wait_for("transcript.final", timeout=30)
            await client.wait_for("response.audio.done", timeout=60)
            await silence
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            sent_term = time.monotonic()

            # Readiness turns false at once, and a new caller is told to come back.
            async def ready_status() -> int:
                return (
                    await asyncio.to_thread(httpx.get, f"{server.http}/health/ready", timeout=5)
                ).status_code

            deadline = time.monotonic() + 5
            while await ready_status() != 503:
                assert time.monotonic() < deadline, "readiness did not turn false"
                await asyncio.sleep(0.05)
            async with VoiceClient(server.url) as late:
                refused = await late.wait_for("error", timeout=10)
                await _poll(lambda: late.close_code is not None)
            assert refused["code"] == "server_draining" and late.close_code == 1013

            # The live session goes on until the drain timeout, then hears the goodbye and is closed.
            closed = await client.wait_for("session.closed", timeout=30)
            assert closed["reason"] == "server_shutdown"
            assert time.monotonic() - sent_term >= 2.0
            [*_, farewell] = client.received.of("response.text.done")
            assert farewell["text"] == GOODBYE
            started = [t for t, e in client.received.events if e["type"] == "response.started"][-1]
            audio = client.received.audio_bytes(after=started)
            assert len(audio) / 2 / 16000 > 1.0 and energy_dbfs(audio) > -40
            stt = runtime.stt_worker
            text = (await asyncio.to_thread(stt.call, runtime.stt.transcribe, pcm16_to_float(audio))).text
            assert wer(GOODBYE, text) <= 0.25, text
            await _poll(lambda: client.close_code is not None)
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
    finally:
        server.kill()

    # Everything was flushed before the exit: the caller's turn, the goodbye, and why the session ended.
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'voxgate.db'}")
    try:
        stored = await store.get_session(session_id)
    finally:
        await store.close()
    assert stored is not None
    assert stored["close_reason"] == "server_shutdown" and stored["closed_at"] is not None
    caller, goodbye = stored["turns"]
    assert caller["user_text"] == heard["text"] and caller["response_text"]
    assert caller["timings"]["voice_to_voice_ms"] > 0
    assert goodbye["source"] == "system" and goodbye["response_text"] == GOODBYE
