"""The Piper streaming server's API (/tts/stream, /tts, /stream/{lang}/{text}) on the real Piper voice: what
comes back is listened to (Whisper reads it back), measured (durations, offsets) and timed (streaming)."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import wave

import av
import httpx
import numpy as np
import pytest

from pipeline.audio import pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.speech import energy_dbfs, wer

pytestmark = pytest.mark.slow

SPEED_TEXT = "The small boat drifted slowly across the quiet harbour. The fishermen sat on the wall and mended their nets."
STORY = (
    "The museum opens at nine in the morning. "
    "Visitors can see paintings from many different countries. "
    "The garden behind the building is full of tall trees. "
    "A small cafe sells coffee and fresh bread near the entrance. "
    "Children like the room with the old trains most of all. "
    "Everyone has to leave when the bell rings in the evening."
)
SENTENCE = "The weather is warm and sunny today."


async def _transcribe(runtime, pcm: bytes, rate: int) -> str:  # type: ignore[no-untyped-def]
    audio16k = resample(pcm, rate, 16000) if rate != 16000 else pcm
    worker = runtime.stt_worker
    return (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(audio16k))).text


def _streaming_wav(body: bytes) -> tuple[int, bytes]:
    """(rate, samples) of a WAV whose header says "unknown length", as a stream's does."""
    riff, riff_size, wave_tag = struct.unpack("<4sI4s", body[:12])
    fmt_tag, _, audio_format, channels, rate, _, _, bits = struct.unpack("<4sIHHIIHH", body[12:36])
    data_tag, data_size = struct.unpack("<4sI", body[36:44])
    assert (riff, wave_tag, fmt_tag, data_tag) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (audio_format, channels, bits) == (1, 1, 16)
    assert riff_size == data_size == 0xFFFFFFFF  # a stream's length is not known when its header leaves
    return rate, body[44:]


def _wav(data: bytes) -> tuple[int, bytes]:
    with wave.open(io.BytesIO(data), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), w.readframes(w.getnframes())


async def test_stream_sends_first_sentence_before_the_last_is_synthesized(server, runtime) -> None:  # type: ignore[no-untyped-def]
    pieces: list[tuple[float, int]] = []  # (arrival time, bytes so far)
    body = bytearray()
    async with httpx.AsyncClient(timeout=60) as client:
        start = time.perf_counter()
        async with client.stream("GET", f"{server.http}/tts/stream", params={"text": STORY}) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"] == "audio/wav"
            async for piece in response.aiter_raw():
                body += piece
                pieces.append((time.perf_counter() - start, len(body)))
        end = time.perf_counter() - start
    rate, pcm = _streaming_wav(bytes(body))
    assert rate == int(response.headers["x-sample-rate"]) == runtime.tts.sample_rate
    first_audio = next(t for t, size in pieces if size > 44)
    # Six sentences: the first one's samples arrive well before the last is synthesized and sent.
    assert first_audio < 0.6 * end, (first_audio, end, pieces)
    assert len({size for _, size in pieces}) >= 3, pieces  # audio came in several pieces, not one at the end
    seconds = len(pcm) / 2 / rate
    assert 12 <= seconds <= 30, seconds  # 60 words at Piper's ~2.7 words a second
    assert energy_dbfs(pcm) > -35
    heard = await _transcribe(runtime, pcm, rate)
    assert wer(normalize_for_speech(STORY), normalize_for_speech(heard)) <= 0.2, heard


async def test_durations_follow_the_speed_names(server) -> None:
    durations: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        for speed in ("very_slow", "slow", "normal", "fast", "very_fast"):
            response = await client.get(
                f"{server.http}/tts/stream", params={"text": SPEED_TEXT, "speed": speed}
            )
            assert response.status_code == 200, response.text
            rate, pcm = _streaming_wav(response.content)
            durations[speed] = len(pcm) / 2 / rate
    ordered = list(durations.values())
    # Length scales 1.5, 1.2, 1, 0.8, 0.6. Measured here (six runs each): 8.2, 6.7, 6.0, 5.2 and 4.05 s, each
    # within 0.1 s (Piper's duration noise); neighbours differ by 11-28 %, as pauses stretch less than phonemes.
    for slower, faster in zip(ordered, ordered[1:], strict=False):
        assert slower > 1.04 * faster, durations
    assert 1.7 < durations["very_slow"] / durations["very_fast"] < 2.6, durations


async def test_tts_returns_base64_wav_with_its_timing(server, runtime) -> None:  # type: ignore[no-untyped-def]
    text = (
        "The library is closed on Sundays. You can return books at the front desk. The lights go off at six."
    )
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(f"{server.http}/tts", json={"text": text, "language": "en"})
    assert response.status_code == 200, response.text
    body = response.json()
    rate, pcm = _wav(base64.b64decode(body["audio"]))
    assert body["format"] == "wav" and body["media_type"] == "audio/wav"
    assert rate == body["sample_rate"] == runtime.tts.sample_rate
    assert abs(len(pcm) / 2 / rate - body["duration_s"]) < 0.002
    assert body["language"] == "en" and body["voice"] == "en_US-joe-medium"
    assert 0 < body["time_to_first_audio_s"] <= body["synthesis_s"]
    assert body["real_time_factor"] == pytest.approx(body["synthesis_s"] / body["duration_s"], abs=0.002)
    sentences = body["sentences"]
    assert [s["text"] for s in sentences] == [
        "The library is closed on Sundays.",
        "You can return books at the front desk.",
        "The lights go off at six.",
    ]
    # Back to back: each sentence starts where the one before it ends, and together they are the audio.
    for before, after in zip(sentences, sentences[1:], strict=False):
        assert after["start_s"] == pytest.approx(before["start_s"] + before["duration_s"], abs=0.002)
    assert sentences[0]["start_s"] == 0
    assert sentences[-1]["start_s"] + sentences[-1]["duration_s"] == pytest.approx(
        body["duration_s"], abs=0.002
    )
    # Each offset marks its own sentence: the second sentence's span reads back as that sentence.
    second = sentences[1]
    begin, length = round(second["start_s"] * rate) * 2, round(second["duration_s"] * rate) * 2
    heard = await _transcribe(runtime, pcm[begin : begin + length], rate)
    assert wer(second["text"], heard) <= 0.25, heard
    heard_all = await _transcribe(runtime, pcm, rate)
    assert wer(normalize_for_speech(text), normalize_for_speech(heard_all)) <= 0.2, heard_all


async def test_stream_by_language_speaks_english(server, runtime) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(f"{server.http}/stream/en/{SENTENCE}")
        refused = await client.get(f"{server.http}/stream/xx/{SENTENCE}")
    assert response.status_code == 200, response.text
    assert response.headers["x-voice"] == "en_US-joe-medium"
    rate, pcm = _streaming_wav(response.content)
    heard = await _transcribe(runtime, pcm, rate)
    assert wer(SENTENCE, heard) <= 0.2, heard
    assert refused.status_code == 400
    problem = refused.json()
    assert problem["error"] == problem["detail"] and "xx" in problem["detail"] and "en" in problem["detail"]


async def test_stream_in_another_format(server, runtime) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(f"{server.http}/tts/stream", params={"text": SENTENCE, "format": "mp3"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.audio[0]
        assert container.format.name == "mp3"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        parts = [
            f.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for f in resampler.resample(frame)
        ]
    pcm = np.concatenate(parts).astype("<i2").tobytes()
    assert 1.5 < len(pcm) / 2 / 16000 < 5
    heard = await _transcribe(runtime, pcm, 16000)
    assert wer(SENTENCE, heard) <= 0.2, heard


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "text is empty"),
        ({"text": "   "}, "text is empty"),
        ({"text": SENTENCE, "speed": "warp"}, "very_slow"),
        ({"text": SENTENCE, "voice": "nobody"}, "en_US-joe-medium"),
        ({"text": SENTENCE, "format": "tape"}, "mp3"),
        ({"text": "?!"}, "nothing to speak"),
    ],
)
def test_stream_refuses_bad_input_with_error_and_detail(server, params, needle) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.http}/tts/stream", params=params, timeout=30)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == body["detail"] and needle in body["detail"], body


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({}, 422),
        ({"text": ""}, 422),
        ({"text": SENTENCE, "speed": "warp"}, 422),
        ({"text": SENTENCE, "colour": "red"}, 422),
        ({"text": SENTENCE, "language": "xx"}, 400),
        ({"text": SENTENCE, "format": "tape"}, 400),
    ],
)
def test_tts_refuses_bad_bodies(server, payload, status) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(f"{server.http}/tts", json=payload, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_tts_refuses_a_body_that_is_not_json(server) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(
        f"{server.http}/tts", content=b"{text", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "JSON" in response.json()["detail"]
