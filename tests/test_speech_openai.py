"""OpenAI's audio API on voxgate (gateway/speech/openai_audio.py), driven by the official ``openai`` SDK.

Speech is decoded back with PyAV and transcribed with Whisper (WER on its text); transcriptions of the shared
recordings are checked in every response format against their references, with srt/vtt/verbose_json times
parsed; VAD segments are checked against speech placed at known times. The encoder and decoder are also
checked on their own: every format decodes back to the same duration and energy.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soxr

from engines.base import Transcript, TranscriptSegment, Word
from gateway.speech import subtitles
from gateway.speech.decode import AudioTooLong, UndecodableAudio, decode_audio
from gateway.speech.encode import FORMATS, AudioEncoder, encode_all, media_type, output_rate
from tests.speech import wer

SENTENCE = "The weather today is sunny with a light breeze coming from the west."
# Several sentences, so that synthesis takes a while and streaming can show.
STORY = " ".join(
    [
        "The weather today is sunny with a light breeze coming from the west.",
        "In the afternoon the clouds will gather over the hills.",
        "By the evening a little rain may fall in the valley.",
        "Tomorrow morning will be cold and clear.",
        "The weekend should bring warm air from the south.",
        "Farmers will be glad to see the rain after a dry month.",
    ]
)


# -- the encoder and decoder on their own ---------------------------------------------------------------------


def _tone(seconds: float, rate: int) -> np.ndarray:
    """A voiced-sounding test signal: a few harmonics of a gliding pitch at about -12 dBFS RMS."""
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150 + 50 * t / seconds) / rate
    x = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    x = 0.25 * x / np.sqrt(np.mean(x**2))
    return np.round(x * 32767).astype(np.int16)


def _dbfs(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(10 * np.log10(np.mean(x**2) + 1e-12))


def _decoded(data: bytes, fmt: str, rate: int) -> np.ndarray:
    """Audio bytes in ``fmt`` back to float samples at ``rate`` (pcm is raw s16le at 24 kHz)."""
    if fmt == "pcm":
        pcm = np.frombuffer(data, "<i2").astype(np.float32) / 32768
        return soxr.resample(pcm, 24000, rate) if rate != 24000 else pcm
    return decode_audio(data, rate)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_back_with_its_duration_and_energy(fmt: str) -> None:
    pcm = _tone(2.0, 22050)
    encoder = AudioEncoder(fmt, 22050, 24000)
    pieces = [encoder.encode(chunk) for chunk in np.array_split(pcm, 16)]
    early = sum(len(p) for p in pieces)
    pieces.append(encoder.finish())
    data = b"".join(pieces)
    assert early > 0, "nothing came out before the end: not a stream"
    out = _decoded(data, fmt, 16000) if fmt != "pcm" else _decoded(data, fmt, 24000)
    seconds = len(out) / (16000 if fmt != "pcm" else 24000)
    assert abs(seconds - 2.0) < 0.1, seconds  # mp3 and aac pad a frame or two at most
    assert abs(_dbfs(out) - _dbfs(pcm.astype(np.float32) / 32768)) < 1.5
    assert encoder.rate == output_rate(fmt, 24000) == 24000


def test_wav_stream_header_says_unknown_length_and_a_file_says_its_own() -> None:
    pcm = _tone(0.5, 16000)
    encoder = AudioEncoder("wav", 16000)
    streamed = encoder.encode(pcm) + encoder.finish()
    assert (
        streamed[:4] == b"RIFF"
        and streamed[4:8] == b"\xff\xff\xff\xff"
        and streamed[40:44] == b"\xff\xff\xff\xff"
    )
    assert streamed[44:] == pcm.tobytes()
    assert len(decode_audio(streamed, 16000)) == len(pcm)
    whole = encode_all(pcm, "wav", 16000)
    with wave.open(io.BytesIO(whole)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (16000, 1, len(pcm))
    assert media_type("mp3") == "audio/mpeg" and media_type("pcm") == "audio/pcm"
    with pytest.raises(ValueError, match="supported"):
        media_type("ogg-vorbis")


def test_opus_takes_only_its_own_rates() -> None:
    assert output_rate("opus", 22050) == 24000 and output_rate("opus", 44100) == 48000
    assert output_rate("flac", 22050) == 22050 and output_rate("mp3", 22050) == 22050


def test_decoder_refuses_what_is_not_audio_or_too_long() -> None:
    with pytest.raises(UndecodableAudio, match="empty"):
        decode_audio(b"")
    with pytest.raises(UndecodableAudio):
        decode_audio(b"this is not audio at all, just some text" * 20)
    with pytest.raises(AudioTooLong):
        decode_audio(encode_all(_tone(3.0, 16000), "flac", 16000), max_seconds=2.0)
    truncated = encode_all(_tone(3.0, 16000), "mp3", 16000)[:100]
    with pytest.raises(UndecodableAudio):
        decode_audio(truncated)


def test_subtitle_formats_write_the_segment_times() -> None:
    segments = (
        TranscriptSegment(
            0.0, 1.5, "Hello there.", words=(Word(0.0, 0.6, " Hello"), Word(0.7, 1.4, " there."))
        ),
        TranscriptSegment(3661.25, 3662.0, "Late."),
    )
    transcript = Transcript("Hello there. Late.", "en", 3663.0, segments=segments)
    srt, content_type = subtitles.render(transcript, "srt")
    assert content_type.startswith("application/x-subrip")
    assert (
        srt == "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:02,000\nLate.\n"
    )
    vtt, _ = subtitles.render(transcript, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")
    verbose = json.loads(subtitles.render(transcript, "verbose_json", granularities=frozenset({"word"}))[0])
    assert [w["word"] for w in verbose["words"]] == ["Hello", "there."] and "segments" not in verbose
    untimed = Transcript("Some words.", "en", 2.0)  # an engine that gives no times: one whole-file cue
    assert subtitles.render(untimed, "srt")[0] == "1\n00:00:00,000 --> 00:00:02,000\nSome words.\n"


# -- the API through the SDK ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def _hear(runtime: Any, audio16k: np.ndarray) -> str:
    """What the server's own Whisper hears in ``audio16k`` (on the STT worker's thread, as engines run)."""
    return runtime.stt_worker.call(runtime.stt.transcribe, audio16k).text


def _speech(runtime: Any, text: str) -> np.ndarray:
    """``text`` spoken by the server's TTS engine, as float at 16 kHz."""
    chunks = runtime.tts_worker.call(lambda: list(runtime.tts.synthesize(text)))
    pcm = np.concatenate(chunks).astype(np.float32) / 32768
    return soxr.resample(pcm, runtime.tts.sample_rate, 16000).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_speech_in_every_format_says_its_text(client: openai.OpenAI, runtime: Any, fmt: str) -> None:
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt)
    assert response.response.headers["content-type"].startswith(media_type(fmt))
    assert response.response.headers["x-voice-fallback"] == "true"  # alloy: the default voice
    audio = _decoded(response.content, fmt, 16000)
    assert 2.5 < len(audio) / 16000 < 8.0
    heard = _hear(runtime, audio)
    assert wer(SENTENCE, heard) <= 0.2, heard


@pytest.mark.slow
def test_speech_speed_orders_durations(client: openai.OpenAI, runtime: Any) -> None:
    voice = runtime.tts.voices()[0].id
    seconds = {}
    for speed in (0.5, 1.0, 2.0):
        data = client.audio.speech.create(
            model="tts-1", voice=voice, input=SENTENCE, response_format="pcm", speed=speed
        ).content
        seconds[speed] = len(data) / 2 / 24000
    # Piper scales its length scale; its pauses and random durations keep the ratio under 2 (measured 1.6-1.75).
    assert seconds[0.5] > 1.3 * seconds[1.0] and seconds[1.0] > 1.3 * seconds[2.0], seconds
    slow = _decoded(
        client.audio.speech.create(
            model="tts-1", voice=voice, input=SENTENCE, response_format="wav", speed=0.5
        ).content,
        "wav",
        16000,
    )
    assert wer(SENTENCE, _hear(runtime, slow)) <= 0.25


@pytest.mark.slow
def test_speech_streams_before_the_whole_file_is_made(client: openai.OpenAI, runtime: Any) -> None:
    started = time.perf_counter()
    arrivals: list[tuple[float, int]] = []
    pieces: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=STORY, response_format="mp3"
    ) as response:
        for piece in response.iter_bytes(1024):
            arrivals.append((time.perf_counter() - started, len(piece)))
            pieces.append(piece)
    total = sum(n for _, n in arrivals)
    first_at, last_at = arrivals[0][0], arrivals[-1][0]
    # Six sentences are synthesized one after another: the first bytes leave after the first one.
    assert first_at < 0.6 * last_at, (first_at, last_at)
    received_by_half = sum(n for t, n in arrivals if t <= (first_at + last_at) / 2)
    assert received_by_half < 0.9 * total
    heard = _hear(runtime, decode_audio(b"".join(pieces), 16000))
    assert wer(STORY, heard) <= 0.25, heard


def _reference(shared_audio: Path, name: str) -> str:
    return (shared_audio / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


def _times(cues: str, decimal: str) -> list[tuple[float, float]]:
    pattern = rf"(\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d)"
    out = []
    for m in re.finditer(pattern, cues):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in m.groups())
        out.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000))
    return out


def _check_times(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans, "no timed cues"
    for (start, end), nxt in zip(spans, spans[1:] + [(duration, duration)], strict=True):
        assert 0 <= start <= end <= duration + 0.5, spans
        assert end <= nxt[0] + 0.05, spans  # in order, not overlapping


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jfk.flac", "fleurs-en-004.ogg", "fleurs-en-006.ogg"])
def test_transcriptions_json_and_text(client: openai.OpenAI, shared_audio: Path, name: str) -> None:
    ref = _reference(shared_audio, name)
    with open(shared_audio / name, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(ref, result.text) <= 0.2, result.text
    if name == "jfk.flac":
        with open(shared_audio / name, "rb") as f:
            text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
        assert text == result.text + "\n"


@pytest.mark.slow
def test_speech_as_server_sent_events(client: openai.OpenAI, server: Any) -> None:
    voice = {"id": "en_US-joe-medium"}  # a voice object, as OpenAI's custom voices are given
    body = {"model": "tts-1", "voice": voice, "input": SENTENCE, "response_format": "pcm"}
    response = httpx.post(server.http + "/v1/audio/speech", json={**body, "stream_format": "sse"}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert "x-voice-fallback" not in response.headers and response.headers["x-voice"] == "en_US-joe-medium"
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "speech.audio.done"}
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1] if e["type"] == "speech.audio.delta")
    audio = np.frombuffer(pcm, "<i2")
    assert 2.5 < len(audio) / 24000 < 8.0 and _dbfs(audio.astype(np.float32) / 32768) > -35


@pytest.mark.slow
def test_transcription_takes_a_prompt(client: openai.OpenAI, shared_audio: Path) -> None:
    with open(shared_audio / "jfk.flac", "rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, prompt="President Kennedy's inaugural address, 1961.", language="en"
        )
    assert wer(_reference(shared_audio, "jfk.flac"), result.text) <= 0.1, result.text


OSR = "OSR_us_000_0034_8k.wav"  # ten read sentences over 36 s: several of Whisper's 30 s windows
OSR_SECONDS = 36.0


def _cue_texts(cues: str) -> list[str]:
    """The text lines of srt or vtt cues."""
    skip = ("", "WEBVTT")
    return [
        line for line in cues.splitlines() if line not in skip and "-->" not in line and not line.isdigit()
    ]


@pytest.fixture(scope="module")
def osr_srt(client: openai.OpenAI, shared_audio: Path) -> str:
    """The recording's srt (a plain decode, as json's): shared by the srt and stream tests."""
    with open(shared_audio / OSR, "rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")


@pytest.mark.slow
def test_transcriptions_srt_vtt_and_verbose_json_carry_times(
    client: openai.OpenAI, shared_audio: Path, osr_srt: str
) -> None:
    path = shared_audio / OSR
    ref = json.loads(path.with_suffix(".json").read_text())[0]["transcription"]
    with open(path, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["segment", "word"],
        )
    assert wer(ref, verbose.text) <= 0.15, verbose.text
    assert verbose.language == "english" and abs(verbose.duration - OSR_SECONDS) < 1.0
    segments = [(s.start, s.end) for s in verbose.segments]
    _check_times(segments, OSR_SECONDS)
    assert len(segments) >= 5 and segments[-1][1] > 25  # the times reach the end of the recording
    assert " ".join(s.text for s in verbose.segments) == verbose.text
    words = [(w.start, w.end) for w in verbose.words]
    _check_times(words, OSR_SECONDS)
    assert wer(ref, " ".join(w.word for w in verbose.words)) <= 0.15
    spans = _times(osr_srt, ",")
    _check_times(spans, OSR_SECONDS)
    assert len(spans) >= 5 and spans[-1][1] > 25
    assert osr_srt.startswith("1\n") and wer(ref, " ".join(_cue_texts(osr_srt))) <= 0.15
    jfk = shared_audio / "jfk.flac"
    with open(jfk, "rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    _check_times(_times(vtt, "."), 11.0)
    assert wer(_reference(shared_audio, jfk.name), " ".join(_cue_texts(vtt))) <= 0.1


@pytest.mark.slow
def test_transcription_stream_deltas_make_the_final_text(
    client: openai.OpenAI, shared_audio: Path, osr_srt: str
) -> None:
    with open(shared_audio / OSR, "rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert len(deltas) >= 5  # one per decoded segment, sent as the seek loop goes
    assert "".join(deltas) == done[0].text
    # The same segments as a plain request's: its srt cues are these deltas.
    assert [d.strip() for d in deltas] == _cue_texts(osr_srt)


@pytest.mark.slow
def test_a_long_file_leaves_whisper_to_short_requests_between_its_windows(
    server: Any, runtime: Any, shared_audio: Path
) -> None:
    recording = decode_audio((shared_audio / OSR).read_bytes())
    long_file = encode_all(np.round(np.tile(recording, 2) * 32767).astype(np.int16), "flac", 16000)  # 72 s
    short_file = (shared_audio / "jfk.flac").read_bytes()
    url = server.http + "/v1/audio/transcriptions"

    def post(name: str, data: bytes) -> tuple[float, httpx.Response]:
        response = httpx.post(url, data={"model": "whisper-1"}, files={"file": (name, data)}, timeout=120)
        return time.perf_counter(), response

    with ThreadPoolExecutor(2) as pool:
        steps_before = runtime.stt_worker.started
        long = pool.submit(post, "long.flac", long_file)
        deadline = time.monotonic() + 60
        while runtime.stt_worker.started < steps_before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the long file's first window is decoded
        short = pool.submit(post, "jfk.flac", short_file)
        (short_done, short_response), (long_done, long_response) = short.result(), long.result()
    assert short_response.status_code == long_response.status_code == 200
    assert wer(_reference(shared_audio, "jfk.flac"), short_response.json()["text"]) <= 0.1
    assert short_done < long_done  # served between the long file's windows, not after all of them
    ref = json.loads((shared_audio / OSR).with_suffix(".json").read_text())[0]["transcription"]
    assert wer(f"{ref} {ref}", long_response.json()["text"]) <= 0.15


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
@pytest.mark.slow
def test_translation_needs_an_engine_that_translates(client: openai.OpenAI, shared_audio: Path) -> None:
    with open(shared_audio / "fleurs-de-000.ogg", "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.translations.create(model="whisper-1", file=f)
    assert "cannot translate" in caught.value.response.json()["detail"]


@pytest.fixture(scope="module")
def multilingual_server(runtime: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second app on the same loaded engines but a multilingual Whisper (base): translations work there."""
    from engines.stt_whisper import WhisperSTT
    from gateway.settings import Settings
    from pipeline.runtime import Runtime
    from tests.conftest import serving

    multilingual = Runtime(
        vad=runtime.vad, stt=WhisperSTT("base", cpu_threads=2), llm=runtime.llm, tts=runtime.tts
    )
    settings = Settings(data_dir=tmp_path_factory.mktemp("multilingual"))
    with serving(settings, multilingual) as live:
        yield live
    multilingual.stt_worker.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_multilingual_whisper_translates_german_to_english(
    multilingual_server: Any, shared_audio: Path
) -> None:
    client = openai.OpenAI(base_url=multilingual_server.http + "/v1", api_key="x", max_retries=0, timeout=120)
    stt = next(
        m for m in client.models.list() if m.model_extra["kind"] == "stt" and "translates" in m.model_extra
    )
    assert stt.id == "whisper-base" and stt.model_extra["translates"] and "de" in stt.model_extra["languages"]
    clip = shared_audio / "fleurs-de-000.ogg"
    with open(clip, "rb") as f:
        german = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert german.language == "german" and wer(_reference(shared_audio, clip.name), german.text) <= 0.4, (
        german.text
    )
    with open(clip, "rb") as f:
        english = client.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
    assert english.task == "translate" and english.language == "german" and english.segments
    words = set(re.findall(r"[a-z]+", english.text.lower()))
    assert {"hong", "kong"} <= words and len(words & {"the", "of", "you", "to", "and", "should"}) >= 2, (
        english.text
    )


@pytest.mark.slow
@pytest.mark.slow
def test_vad_finds_speech_placed_at_known_times(server: Any, runtime: Any) -> None:
    gap = np.zeros(16000 * 3 // 2, np.float32)
    first, second = _speech(runtime, "Good morning to you."), _speech(runtime, "The train leaves at noon.")
    audio = np.concatenate([gap, first, gap, gap, second, gap])
    truth = [
        (1.5, 1.5 + len(first) / 16000),
        (4.5 + len(first) / 16000, 4.5 + (len(first) + len(second)) / 16000),
    ]
    wav = encode_all(np.round(audio * 32767).astype(np.int16), "wav", 16000)
    response = httpx.post(
        server.http + "/v1/audio/vad", files={"file": ("speech.wav", wav, "audio/wav")}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert abs(body["duration"] - len(audio) / 16000) < 0.05
    found = [(s["start"], s["end"]) for s in body["segments"]]
    assert len(found) == 2, found
    for (start, end), (t_start, t_end) in zip(found, truth, strict=True):
        # Piper leaves ~0.1-0.3 s of quiet at each end of its audio: the speech lies inside the placed span.
        assert t_start - 0.1 <= start < t_start + 0.5 and t_end - 0.6 < end <= t_end + 0.1, (found, truth)


@pytest.mark.slow
def test_vad_finds_the_ten_sentences_of_a_recording(server: Any, shared_audio: Path) -> None:
    data = (shared_audio / "OSR_us_000_0034_8k.wav").read_bytes()
    response = httpx.post(
        server.http + "/v1/audio/vad",
        files={"file": ("call.wav", data, "audio/wav")},
        data={"min_silence_ms": "640", "speech_pad_ms": "30"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    segments = response.json()["segments"]
    assert len(segments) == 10, segments
    assert all(a["end"] < b["start"] for a, b in zip(segments, segments[1:], strict=False))
    assert 0.4 < sum(s["end"] - s["start"] for s in segments) / 36 < 0.95


def test_models_list_the_engines_and_voices(client: openai.OpenAI, runtime: Any) -> None:
    models = {m.id: m for m in client.models.list()}
    kinds = {m.model_extra["kind"] for m in models.values()}
    assert {"stt", "tts", "vad", "llm", "voice"} <= kinds
    assert all(m.object == "model" and m.owned_by == "voxgate" and m.created > 0 for m in models.values())
    assert {v.id for v in runtime.tts.voices()} <= set(models)
    assert models["whisper-1"].model_extra["alias_of"] == "whisper-tiny.en"
    tts = next(m for m in models.values() if m.model_extra["kind"] == "tts" and "voices" in m.model_extra)
    assert tts.model_extra["default_voice"] in {v["id"] for v in tts.model_extra["voices"]}


# -- bad input ------------------------------------------------------------------------------------------------


def _detail(exc: openai.APIStatusError) -> Any:
    return exc.response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "tts-1", "voice": "alloy", "input": "   "}, 422, "input"),
        (
            {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "ogg"},
            422,
            "response_format",
        ),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi.", "speed": 5}, 422, "speed"),
        ({"model": "tts-1", "voice": "alloy", "input": "Hi.", "pitch": 2}, 422, "pitch"),
        ({"model": "tts-1", "input": "Hi."}, 422, "voice"),
        ({"model": "tts-1", "voice": "nobody", "input": "Hi."}, 400, "unknown voice"),
        ({"model": "dall-e-3", "voice": "alloy", "input": "Hi."}, 400, "dall-e-3"),
        (
            {"model": "tts-1", "voice": "alloy", "input": "Hi.", "instructions": "Whisper it."},
            400,
            "instructions",
        ),
        ({"model": "tts-1", "voice": "alloy", "input": "..."}, 422, "speakable"),
    ],
)
def test_bad_speech_requests_say_what_is_wrong(
    server: Any, body: dict[str, Any], status: int, says: str
) -> None:
    response = httpx.post(server.http + "/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert says in json.dumps(response.json()["detail"])


def test_bad_transcription_requests_say_what_is_wrong(client: openai.OpenAI, server: Any) -> None:
    wav = encode_all(_tone(0.5, 16000), "wav", 16000)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"not audio " * 50))
    assert "could not read the audio" in _detail(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav), timestamp_granularities=["word"]
        )
    assert "verbose_json" in _detail(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), language="de")
    assert "'de'" in _detail(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav), stream=True, response_format="srt"
        )
    assert "stream" in _detail(caught.value)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="csv")  # type: ignore[arg-type]
    assert "response_format" in json.dumps(_detail(caught.value))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav), extra_body={"diarize": "yes"}
        )
    assert "diarize" in json.dumps(_detail(caught.value))
    url = server.http + "/v1/audio/transcriptions"
    missing = httpx.post(url, data={"model": "whisper-1"}, files={"other": ("x", b"y")}, timeout=30)
    assert missing.status_code == 422 and "file" in json.dumps(missing.json()["detail"])
    as_text = httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}, timeout=30)
    assert as_text.status_code == 415 and "multipart" in as_text.json()["detail"]
    bad_vad = httpx.post(
        server.http + "/v1/audio/vad", files={"file": ("a.wav", wav)}, data={"threshold": "2"}, timeout=30
    )
    assert bad_vad.status_code == 422 and "threshold" in json.dumps(bad_vad.json()["detail"])


def test_silence_transcribes_to_nothing_in_every_format(client: openai.OpenAI) -> None:
    silence = encode_all(np.zeros(16000 * 2, np.int16), "flac", 16000)
    assert client.audio.transcriptions.create(model="whisper-1", file=("s.flac", silence)).text == ""
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("s.flac", silence), response_format="verbose_json"
    )
    assert verbose.text == "" and verbose.segments == [] and abs(verbose.duration - 2.0) < 0.05
    assert (
        client.audio.transcriptions.create(model="whisper-1", file=("s.flac", silence), response_format="srt")
        == ""
    )


def test_uploads_past_the_limits_are_refused_with_413(server: Any) -> None:
    speech = server.state.settings.speech
    wav = encode_all(_tone(3.0, 16000), "wav", 16000)  # 96 kB, 3 s
    url = server.http + "/v1/audio/transcriptions"
    saved = speech.max_upload_bytes, speech.max_upload_seconds
    try:
        speech.max_upload_bytes = 50_000
        too_big = httpx.post(url, data={"model": "whisper-1"}, files={"file": ("a.wav", wav)}, timeout=30)
        assert too_big.status_code == 413 and "speech.max_upload_bytes" in too_big.json()["detail"]
        speech.max_upload_bytes, speech.max_upload_seconds = saved[0], 2.0
        too_long = httpx.post(url, data={"model": "whisper-1"}, files={"file": ("a.wav", wav)}, timeout=30)
        assert too_long.status_code == 413 and "longer than 2 s" in too_long.json()["detail"]
    finally:
        speech.max_upload_bytes, speech.max_upload_seconds = saved
