"""Usage per key (issue 15): the sums after a scripted voice session match what was sent and received.

The session runs on an app with auth on that shares the suite's loaded engines (the ``runtime`` fixture), so
the usage rows it stores belong to a key of this test alone: real speech in (Piper), the real pipeline, and
``GET /v1/usage`` read back as the key sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.client import VoiceClient
from tests.conftest import LiveServer, serving
from tests.speech import piper_pcm

ADMIN = "usage-admin-token"
BYTES_PER_S = 16000 * 2  # the session's wire format both ways: 16 kHz PCM16


@pytest.fixture(scope="module")
def keyed(runtime: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("usage"),
        admin_token=ADMIN,
        auth="on",
        load_example_flows=False,
        answer_max_sentences=1,  # a short answer: less agent audio to wait for
    )
    with serving(settings, runtime) as live:
        yield live


def _key(live: LiveServer, scopes: list[str]) -> dict[str, Any]:
    made = httpx.post(
        f"{live.http}/v1/keys",
        json={"name": "usage", "scopes": scopes},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert made.status_code == 201, made.text
    return dict(made.json())


def _usage(live: LiveServer, secret: str, **params: str) -> httpx.Response:
    return httpx.get(f"{live.http}/v1/usage", params=params, headers={"authorization": f"Bearer {secret}"})


async def test_usage_after_a_voice_session_matches_what_was_sent_and_received(keyed: LiveServer) -> None:
    key = _key(keyed, ["realtime"])
    auth = {"authorization": f"Bearer {key['key']}"}
    token = httpx.post(f"{keyed.http}/v1/sessions/token", headers=auth).json()["token"]
    speech = piper_pcm("What is the capital of France?")
    silence_s = 1.0
    async with VoiceClient(f"{keyed.url}?token={token}") as client:
        await client.wait_for("session.created")
        await client.stream(speech)
        await client.silence(silence_s)
        await client.wait_for("transcript.final", timeout=30)
        answer = (await client.wait_for("response.text.done", timeout=60))["text"]
        await client.wait_for("response.audio.done", timeout=60)
        received = len(client.received.audio_bytes())
        await client.send_event({"type": "session.close"})
        await client.wait_for("session.closed", timeout=10)
    sent_s = (len(speech) + int(16000 * silence_s) * 2) / BYTES_PER_S
    received_s = received / BYTES_PER_S

    deadline = time.monotonic() + 15  # the row is written when the session's end is published and flushed
    while True:
        answer_json = _usage(keyed, key["key"]).json()
        if answer_json["totals"]["sessions"] >= 1:
            break
        assert time.monotonic() < deadline, answer_json
        time.sleep(0.1)
    totals = answer_json["totals"]
    today = datetime.now(UTC).date().isoformat()
    assert answer_json["key"] == key["id"] and answer_json["to"] == today
    assert [d["day"] for d in answer_json["data"] if d["sessions"]] == [today]
    assert totals["sessions"] == 1 and totals["jobs"] == 0
    assert abs(totals["audio_in_s"] - sent_s) <= 0.05, (totals, sent_s)
    assert received_s > 0.5 and abs(totals["audio_out_s"] - received_s) <= 0.05, (totals, received_s)
    assert 0.5 < totals["stt_s"] <= sent_s + 0.05, totals  # the utterance, transcribed at least once
    assert totals["llm_tokens"] >= len(answer.split()) > 0, (totals, answer)
    assert totals["tts_chars"] >= 0.8 * len(answer.strip()), (totals, answer)


async def test_a_key_reads_only_its_own_usage(keyed: LiveServer) -> None:
    mine, other = _key(keyed, ["batch"]), _key(keyed, ["batch"])
    refused = _usage(keyed, other["key"], key=mine["id"])
    assert refused.status_code == 403 and "own usage" in refused.json()["detail"]
    own = _usage(keyed, other["key"], **{"from": "2026-01-01", "to": "2026-01-03"})
    assert own.status_code == 200
    assert own.json()["key"] == other["id"]
    assert [d["day"] for d in own.json()["data"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert all(value == 0 for value in own.json()["totals"].values())
    admin = _usage(keyed, ADMIN, key=mine["id"])
    assert admin.status_code == 200 and admin.json()["key"] == mine["id"]

    for params in (
        {"from": "2026-13-01"},
        {"from": "2026-02-02", "to": "2026-02-01"},
        {"from": "2020-01-01"},
    ):
        bad = _usage(keyed, ADMIN, **params)
        assert bad.status_code == 422 and isinstance(bad.json()["detail"], str), (params, bad.text)
    page = httpx.get(f"{keyed.http}/usage")
    assert page.status_code == 200 and "/static/usage.js" in page.text


def test_speech_endpoints_count_characters_and_seconds(keyed: LiveServer) -> None:
    import io
    import wave

    key = _key(keyed, ["batch"])
    auth = {"authorization": f"Bearer {key['key']}"}
    text = "Hello there, how are you?"
    spoken = httpx.post(
        f"{keyed.http}/v1/audio/speech",
        json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"},
        headers=auth,
        timeout=60,
    )
    assert spoken.status_code == 200, spoken.text
    pcm = piper_pcm("Good morning.")
    wav = io.BytesIO()
    with wave.open(wav, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm)
    heard = httpx.post(
        f"{keyed.http}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav.getvalue(), "audio/wav")},
        data={"model": "whisper-1"},
        headers=auth,
        timeout=60,
    )
    assert heard.status_code == 200, heard.text
    deadline = time.monotonic() + 10
    while (totals := _usage(keyed, key["key"]).json()["totals"])["stt_s"] == 0 or not totals["tts_chars"]:
        assert time.monotonic() < deadline, totals
        time.sleep(0.1)
    assert totals["tts_chars"] == len(text)
    assert abs(totals["stt_s"] - len(pcm) / BYTES_PER_S) <= 0.05, totals
    assert totals["sessions"] == 0
