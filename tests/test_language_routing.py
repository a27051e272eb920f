"""Language routing end to end: a caller who speaks German (French, Spanish) is answered with a voice for it.

A server of its own runs the multilingual Whisper (``stt_model=base``) and the ``voices`` TTS engine; real
FLEURS speech goes in over ``/v1/voice``. What is checked is what a caller hears: the voice the session
reports, and the language Whisper base hears in the answer's audio. Never the answer's words: the tiny LLM's
German is poor, and its wording is not what routing promises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.client import VoiceClient
from pipeline.audio import pcm16_to_float
from tests.conftest import LiveServer, serving
from tests.speech import clip_pcm, energy_dbfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("voxgate-routing"), stt_model="base", tts_engine="voices"
    )
    with serving(settings) as live:
        yield live


async def _heard_language(server: LiveServer, pcm16k: bytes) -> tuple[str, str]:
    runtime = server.state.runtime
    transcript = await asyncio.to_thread(
        runtime.stt_worker.call, runtime.stt.transcribe, pcm16_to_float(pcm16k)
    )
    return transcript.language, transcript.text


async def _turn(client: VoiceClient, clip: Path, updates_before: int) -> tuple[dict, bytes]:
    """Say ``clip``; the routing event and the answer's audio."""
    pcm = clip_pcm(str(clip), level_dbfs=-26)
    finals = len(client.received.of("transcript.final"))
    done = len(client.received.of("response.audio.done"))
    # Faster than real time: routing is what is tested, not pacing (turn ends count audio time).
    await client.stream(pcm, realtime=False)
    await client.silence(1.8, realtime=False)  # the turn end needs the silence
    # Bounds for a loaded 2-core machine; a quiet one answers within seconds.
    await client.wait_for("transcript.final", timeout=60, count=finals + 1)
    routed = await client.wait_for("session.updated", timeout=10, count=updates_before + 1)
    started = await client.wait_for("response.started", timeout=60, count=done + 1)
    await client.wait_for("response.audio.done", timeout=120, count=done + 1)
    t0 = next(t for t, e in client.received.events if e is started)
    return routed, client.received.audio_bytes(after=t0)


# French is spoken with espeak-ng's male3 variant, pitch 15, 200 words a minute (engines/tts_espeak.py): at
# espeak-ng's defaults Whisper base heard this clip's answer as Thai on every run.
@pytest.mark.parametrize(
    ("clip", "language"),
    [("fleurs-de-000.ogg", "de"), ("fleurs-es-000.ogg", "es"), ("fleurs-fr-000.ogg", "fr")],
)
async def test_a_caller_is_answered_in_their_language(
    routing_server: LiveServer, shared_audio: Path, clip: str, language: str
) -> None:
    voices = httpx.get(f"{routing_server.http}/v1/voices?language={language}", timeout=10).json()
    expected = next(v["id"] for v in voices["voices"] if language in v["default_for"])
    async with VoiceClient(routing_server.url) as client:
        await client.wait_for("session.created")
        # Read speech pauses mid-sentence; a longer turn end keeps the clip one turn.
        await client.send_event({"type": "session.update", "session": {"vad": {"end_of_turn_ms": 1300}}})
        await client.wait_for("session.updated")
        routed, answer = await _turn(client, shared_audio / clip, updates_before=1)
        said = client.received.of("response.text.done")[-1]["text"]
    assert routed["session"] == {"language": language, "voice": expected, "reason": "language_routing"}
    assert len(answer) / 2 / 16000 > 0.8 and energy_dbfs(answer) > -40
    heard, text = await _heard_language(routing_server, answer)
    assert heard == language, f"the answer {said!r} sounded {heard}: {text!r}"


def test_voices_endpoint_lists_every_engine(routing_server: LiveServer) -> None:
    body = httpx.get(f"{routing_server.http}/v1/voices", timeout=10).json()
    by_id = {v["id"]: v for v in body["voices"]}
    assert body["voices"][0]["id"] == body["default_voice"] == "en_US-joe-medium"
    assert by_id["de"]["engine"] == "espeak-ng" and "de" in by_id["de"]["default_for"]
    assert by_id["en_US-joe-medium"]["default_for"] == ["en"]
    assert set(body["engines"]) == {"piper", "espeak-ng"}
    for caps in body["engines"].values():
        assert caps["speed"] and caps["streaming"] and caps["dialogue"]
        assert not caps["cloning"] and not caps["design"]
    assert body["language_routing"] == {"enabled": True, "setting": True, "stt_detects_language": True}
    assert body["problems"] == []


async def test_the_router_switches_voice_and_instructions_and_back(routing_server: LiveServer) -> None:
    from pipeline.conversation import Conversation
    from pipeline.language import LanguageRouter
    from pipeline.session_config import SessionConfig

    runtime = routing_server.state.runtime
    events: list[dict] = []

    async def emit(event) -> None:  # type: ignore[no-untyped-def]
        events.append(event.to_wire())

    config = SessionConfig(instructions="Be brief.", voice="en_US-joe-medium", language_routing=True)
    conversation = Conversation(config)
    router = LanguageRouter(runtime.stt, runtime.tts, config, conversation, emit)
    assert not await router.follow("de", "Ja.")  # too short to go on
    assert not await router.follow("en", "What is the weather like today?")  # already English
    assert await router.follow("de", "Wie ist das Wetter heute?")
    assert config.voice == "de" and conversation.history[0]["content"] == "Be brief. Answer in German."
    conversation.set_instructions("Be very brief.")  # a client's new instructions keep the language
    assert conversation.context()[0]["content"] == "Be very brief. Answer in German."
    assert await router.follow("es", "Qué tiempo hace hoy en Madrid?")
    assert config.voice == "es" and conversation.history[0]["content"].endswith("Answer in Spanish.")
    assert await router.follow("en", "Thank you, that is all for today.")
    assert config.voice == "en_US-joe-medium" and conversation.history[0]["content"] == "Be very brief."
    assert [e["session"]["voice"] for e in events] == ["de", "es", "en_US-joe-medium"]
    # A voice the client chose stays; the LLM is still told the language.
    config.voice = "en-us"
    assert await router.follow("fr", "Quel temps fait-il aujourd'hui?")
    assert config.voice == "en-us" and conversation.history[0]["content"].endswith("Answer in French.")
    # Routing off, or a fixed STT language: nothing changes.
    config.language_routing = False
    assert not await router.follow("de", "Wie ist das Wetter heute?")
    config.language_routing, config.language = True, "fr"
    assert not await router.follow("de", "Wie ist das Wetter heute?")


async def test_a_realtime_client_hears_of_the_routed_voice(
    routing_server: LiveServer, shared_audio: Path
) -> None:
    from tests.test_realtime_client import REALTIME_RATE, realtime, silence, stream

    pcm = clip_pcm(str(shared_audio / "fleurs-de-000.ogg"), rate=REALTIME_RATE, level_dbfs=-26)
    async with realtime(routing_server) as client:
        await client.wait_for("session.created")
        await stream(client, pcm + silence(1.8), realtime=False)
        updated = await client.wait_for("session.updated", timeout=60)
    # Its view of the session changed under it: the Realtime API's own event says so, in its own shape.
    assert updated.session.audio.output.voice == "de"
