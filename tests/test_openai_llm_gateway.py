"""The gateway with an OpenAI-compatible LLM (how vLLM is used), over the real WebSocket.

The LLM server is llama-cpp-python's OpenAI-compatible server with SmolLM2-135M, started here as a subprocess on
a free local port (as in tests/test_engines_llm.py); the gateway runs in-process under uvicorn with
``llm_engine="openai"``. The last test stops the LLM server to check that a session survives losing it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.client import VoiceClient
from tests.conftest import LiveServer, serving
from tests.llama_server import LlamaServer
from tests.speech import piper_pcm, wer, words

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    server = LlamaServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.log.close()


@pytest.fixture(scope="module")
def gateway(llama_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings

    settings = Settings(
        llm_engine="openai",
        llm_base_url=f"{llama_server.url}/v1",
        llm_model="smollm2",
        data_dir=tmp_path_factory.mktemp("voxgate-openai"),
    )
    with serving(settings) as live:
        yield live


async def _health(gateway: LiveServer) -> dict:  # type: ignore[type-arg]
    async with httpx.AsyncClient(timeout=10) as http:
        return (await http.get(f"{gateway.http}/health")).json()  # type: ignore[no-any-return]


async def test_health_reports_openai_llm(gateway: LiveServer) -> None:
    health = await _health(gateway)
    assert health["model_loaded"] is True and health["status"] == "healthy", health
    assert health["engines"] == {
        "vad": "SileroVAD",
        "stt": "WhisperSTT",
        "llm": "OpenAICompatibleLLM",
        "tts": "PiperTTS",
    }
    assert gateway.state.runtime.llm.health()


async def test_typed_turn_is_answered_with_text_and_audio(gateway: LiveServer) -> None:
    async with VoiceClient(gateway.url) as client:
        await client.wait_for("session.created")
        await client.send_event({"type": "input_text", "text": QUESTION})
        final = await client.wait_for("transcript.final", timeout=10)
        done = await client.wait_for("response.text.done", timeout=60)
        audio_done = await client.wait_for("response.audio.done", timeout=60)
    print(f"typed answer: {done['text']!r} ({audio_done['audio_ms']} ms of audio)")
    assert final["text"] == QUESTION and final["source"] == "text"
    assert "paris" in done["text"].lower(), done["text"]
    deltas = [e["delta"] for e in client.received.of("response.text.delta")]
    assert len(deltas) >= 2 and "".join(deltas).strip() == done["text"].strip(), deltas
    assert audio_done["audio_ms"] > 500, audio_done
    received_s = len(client.received.audio_bytes()) / 2 / 16000
    assert abs(received_s - audio_done["audio_ms"] / 1000) < 0.5, (received_s, audio_done)
    assert not client.received.of("error"), client.received.of("error")


async def test_spoken_turn_is_transcribed_and_answered(gateway: LiveServer) -> None:
    speech = piper_pcm(QUESTION)
    async with VoiceClient(gateway.url) as client:
        await client.wait_for("session.created")
        await client.stream(speech)
        silence = asyncio.create_task(client.silence(1.5))
        final = await client.wait_for("transcript.final", timeout=30)
        done = await client.wait_for("response.text.done", timeout=60)
        audio_done = await client.wait_for("response.audio.done", timeout=60)
        await silence
    print(f"heard {final['text']!r}; answer {done['text']!r}")
    assert final["source"] == "voice"
    assert wer(QUESTION, final["text"]) <= 0.25, final["text"]
    assert len(words(done["text"])) >= 2, done["text"]
    assert audio_done["audio_ms"] > 500, audio_done
    assert not client.received.of("error"), client.received.of("error")


async def test_lost_llm_server_fails_the_response_not_the_session(
    gateway: LiveServer, llama_server: LlamaServer
) -> None:
    async with VoiceClient(gateway.url) as client:
        await client.wait_for("session.created")
        # A working turn first, so the client's pooled connection to the LLM server is live when it dies.
        await client.send_event({"type": "input_text", "text": QUESTION})
        await client.wait_for("response.audio.done", timeout=60)
        await asyncio.to_thread(llama_server.stop)
        assert not await asyncio.to_thread(gateway.state.runtime.llm.health)
        t0 = time.monotonic()
        await client.send_event({"type": "input_text", "text": "And the capital of Spain?"})
        error = await client.wait_for("error", timeout=15)
        failed_after = time.monotonic() - t0
        print(f"after {failed_after:.2f} s: {error}")
        assert error["code"] == "response_failed", error
        assert "unreachable" in error["message"] or "LLM server" in error["message"], error
        assert failed_after < 10, failed_after
        # The caller hears why instead of silence: the fallback line, spoken by the local TTS.
        fallback = await client.wait_for("response.text.done", count=2, timeout=30)
        assert fallback["text"] == gateway.state.settings.failed_reply
        done = await client.wait_for_response("response.audio.done", fallback["response_id"], timeout=30)
        assert done["audio_ms"] > 1000
        # The session is still there and still answers.
        await client.send_event({"type": "input_dtmf", "digit": "5"})
        dtmf = await client.wait_for("dtmf.received", timeout=5)
        assert dtmf["digit"] == "5"
        assert client.close_code is None
        assert not client.received.of("session.closed")
    health = await _health(gateway)
    assert health["model_loaded"] is True
    # The first answer and the fallback line; the failed answer wrote no text.
    assert [e["response_id"] for e in client.received.of("response.text.done")][1:] == [
        fallback["response_id"]
    ]
