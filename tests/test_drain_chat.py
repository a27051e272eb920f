"""A drain with HTTP chat in flight (gateway/drain.py): the answer being streamed finishes, new chat requests
are refused with 503 ``server_draining``, and a drain that times out closes the conversation, its answer cut
if it is still being written after ``FAREWELL_WAIT_S``. Fake engines, a real uvicorn and the real ``DrainingServer``; the first SIGTERM is its handler's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import gateway.drain as drain_module
from gateway.app import create_app
from gateway.drain import DrainingServer
from gateway.settings import Settings
from pipeline.runtime import Runtime
from tests.conftest import LiveServer, free_port
from tests.test_session_core import FakeLLM, FakeSTT, FakeTTS, FakeVAD

# Thirty words a tenth of a second apart: an answer that is still being written when the drain begins.
ANSWER = " ".join(f"word{i}" for i in range(30))


def _serve(data_dir: Path, drain_timeout_s: float) -> tuple[LiveServer, DrainingServer]:
    settings = Settings(data_dir=data_dir, load_example_flows=False)
    runtime = Runtime(vad=FakeVAD(), stt=FakeSTT(), llm=FakeLLM(ANSWER, delay_s=0.1), tts=FakeTTS())
    live = LiveServer(create_app(settings, runtime), free_port(), settings)
    config = uvicorn.Config(live.app, host="127.0.0.1", port=live.port, log_level="warning", lifespan="on")
    server = DrainingServer(config, live.state, drain_timeout_s, "Goodbye.")
    live.server = server
    live.thread = threading.Thread(target=server.run, name="uvicorn-drain", daemon=True)
    live.start()
    return live, server


async def _poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    async for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[6:])


async def _until_first_delta(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = []
    async for event in events:
        seen.append(event)
        if event["type"] == "delta":
            return seen
    raise AssertionError(f"the stream ended before any delta: {seen}")


@contextlib.asynccontextmanager
async def _streaming_a_long_answer(
    live: LiveServer,
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncIterator[dict[str, Any]], list[dict[str, Any]]]]:
    """A client, the events of a streamed chat answer it asked for, and those seen up to its first delta."""
    async with httpx.AsyncClient(base_url=live.http, timeout=60) as client:
        body = {"message": "Tell me something long.", "stream": True}
        async with client.stream("POST", "/v1/chat", json=body) as stream:
            events = _events(stream.aiter_lines())
            yield client, events, await _until_first_delta(events)


async def test_a_streamed_chat_answer_finishes_through_the_drain(tmp_path: Path) -> None:
    live, server = _serve(tmp_path, drain_timeout_s=60)
    try:
        async with _streaming_a_long_answer(live) as (client, events, seen):
            server.handle_exit(signal.SIGTERM, None)  # the first SIGTERM: a drain, from its handler
            sent_term = time.monotonic()
            await _poll(lambda: live.state.draining)

            # New turns are refused, the conversation in flight can still be read, readiness is false.
            for path in ("/v1/chat", "/v1/voice-chat"):
                refused = await client.post(path, json={"message": "Hello?"})
                assert refused.status_code == 503, refused.text
                assert refused.json() == {
                    "detail": "the gateway is shutting down; send it again",
                    "code": "server_draining",
                }
            conversation_id = seen[0]["conversation_id"]
            assert (await client.get(f"/v1/chat/{conversation_id}")).status_code == 200
            assert (await client.get("/health/ready")).status_code == 503
            assert not server.should_exit, "the drain must wait for the answer being streamed"

            seen += [event async for event in events]
        done = seen[-1]
        assert done["type"] == "done" and done["reply"] == ANSWER
        assert done["ended"] is False  # it finished by itself, inside the drain
        assert "".join(e["delta"] for e in seen if e["type"] == "delta") == ANSWER
        # With nothing else in flight the drain ended with the answer, long before its timeout.
        await asyncio.to_thread(live.thread.join, 15)
        assert not live.thread.is_alive() and time.monotonic() - sent_term < 20
    finally:
        live.stop()


async def test_a_drain_timeout_closes_the_conversation_its_answer_too_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A drain's timeout waits FAREWELL_WAIT_S for the answer being written (10 s; here 0.5 s, while the answer
    # takes 3 s), then closes the conversation: the stream ends at once, and says why.
    monkeypatch.setattr(drain_module, "FAREWELL_WAIT_S", 0.5)
    live, server = _serve(tmp_path, drain_timeout_s=0.3)
    try:
        async with _streaming_a_long_answer(live) as (client, events, seen):
            conversation = live.app.state.chat_conversations.get(seen[0]["conversation_id"])
            server.handle_exit(signal.SIGTERM, None)
            sent_term = time.monotonic()
            seen += [event async for event in events]
            took = time.monotonic() - sent_term
        done = seen[-1]
        assert done["type"] == "done" and done["ended"] is True and done["close_reason"] == "server_shutdown"
        said = "".join(e["delta"] for e in seen if e["type"] == "delta")
        assert ANSWER.startswith(said) and said != ANSWER and took < 2.5
        assert conversation.session.close_reason == "server_shutdown"
        await asyncio.to_thread(live.thread.join, 15)
        assert not live.thread.is_alive()
    finally:
        live.stop()
