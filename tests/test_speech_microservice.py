"""The model-microservice TTS API (gateway/speech/microservice.py): speech read back by Whisper, dialogues split
back into their speakers, output paths confined, fallback voices reported, and engines unloaded (memory freed)
and loaded again in a server of their own."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

from gateway.client import VoiceClient
from gateway.speech.outputs import sweep
from pipeline.audio import float_to_pcm16, load_audio, pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.conftest import free_port
from tests.speech import energy_dbfs, wer, words

pytestmark = pytest.mark.slow

SENTENCE = "The weather was warm and sunny all day."  # read back right in 20 of 20 Piper runs, slow or not
FIRST_LINE = "The library opens at ten in the morning."
SECOND_LINE = "My brother plays the piano every evening."  # espeak-ng en-us: read back right too
PIPER_VOICE, ESPEAK_VOICE = "en_US-joe-medium", "en-us"


@pytest.fixture
async def http(server) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.http, timeout=60) as client:
        yield client


def _wav(data: bytes) -> tuple[bytes, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.readframes(w.getnframes()), w.getframerate()


_LISTENER: list[Any] = []


def _listener() -> Any:
    """Whisper base, loaded once: tiny.en misheard espeak-ng's "plays the piano every evening" as "plays
    nothing I have breathing" in a CI run (its temperature fallback samples), which is the listener's error,
    not the voice's."""
    if not _LISTENER:
        from engines.stt_whisper import WhisperSTT

        _LISTENER.append(WhisperSTT("base", cpu_threads=2))
    return _LISTENER[0]


async def _heard(runtime, pcm: bytes, rate: int) -> str:  # type: ignore[no-untyped-def]
    """What Whisper base hears in ``pcm`` (``runtime`` is the server's, whose engines are under test)."""
    audio = pcm16_to_float(resample(pcm, rate, 16000))
    return (await asyncio.to_thread(_listener().transcribe, audio)).text


async def _says(runtime, pcm: bytes, rate: int, text: str, bound: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    """``pcm`` is speech of plausible length that Whisper reads back as ``text``."""
    assert energy_dbfs(pcm) > -40
    seconds = len(pcm) / 2 / rate
    predicted = len(words(normalize_for_speech(text))) / 2.7  # ~2.7 words a second
    assert 0.4 * predicted <= seconds <= 2.5 * predicted + 0.5, (seconds, predicted, text)
    heard = await _heard(runtime, pcm, rate)
    assert wer(normalize_for_speech(text), normalize_for_speech(heard)) <= bound, (text, heard)


async def _speak(http: httpx.AsyncClient, voice: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"/v1/text-to-speech/{voice}", json=body)


# -- text to speech --------------------------------------------------------------------------------------------


async def test_speech_is_written_downloadable_and_reads_back(http, runtime, settings) -> None:  # type: ignore[no-untyped-def]
    response = await _speak(http, PIPER_VOICE, {"text": SENTENCE})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["voice_id"] == PIPER_VOICE and body["voice_fallback"] is False
    assert body["ignored_parameters"] == [] and body["format"] == "wav"
    path = Path(body["output_filepath"])
    assert path.parent == settings.outputs_dir.resolve() and path.suffix == ".wav"
    assert str(path) in body["message"]
    data = path.read_bytes()
    pcm, rate = _wav(data)
    assert rate == runtime.tts.sample_rate == body["sample_rate"]
    assert abs(len(pcm) / 2 / rate - body["duration_s"]) < 0.01
    await _says(runtime, pcm, rate, SENTENCE)
    download = await http.get(body["download_url"])
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-type"] == "audio/wav"


async def test_unknown_and_missing_voices_fall_back_and_say_so(http, runtime) -> None:  # type: ignore[no-untyped-def]
    for voice, why in (
        ("nobody-speaks-here", "Unknown voice"),
        (quote("gone/voice.onnx", safe=""), "No voice file"),
    ):
        response = await _speak(http, voice, {"text": SENTENCE})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["voice_fallback"] is True and body["voice_id"] == PIPER_VOICE, body
        assert why in body["message"] and f"default voice {PIPER_VOICE}" in body["message"], body["message"]
    pcm, rate = _wav(Path(body["output_filepath"]).read_bytes())
    await _says(runtime, pcm, rate, SENTENCE)


async def test_voice_paths_outside_the_voices_dir_are_refused(http, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "voice.onnx").write_bytes(b"not a voice")
    settings.voices_dir.mkdir(parents=True, exist_ok=True)
    link = settings.voices_dir / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        for voice in ("../../etc/passwd", "/etc/passwd", str(outside / "voice.onnx"), "escape/voice.onnx"):
            response = await _speak(http, quote(voice, safe=""), {"text": SENTENCE})
            assert response.status_code == 400, (voice, response.text)
            assert "outside the voices directory" in response.json()["detail"]
    finally:
        link.unlink()


async def test_unused_parameters_are_reported_and_speed_is_honoured(http, runtime) -> None:  # type: ignore[no-untyped-def]
    given = {"seed": 7, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 200, "style": "calm"}
    durations = {}
    for speed in (0.6, 1.0, 1.6):
        response = await _speak(
            http, PIPER_VOICE, {"text": SENTENCE, "parameters": {**given, "speed": speed}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["ignored_parameters"] == sorted(given), body
        assert "does not use max_new_tokens, seed, style, temperature, top_k, top_p" in body["message"]
        durations[speed] = body["duration_s"]
        if speed == 0.6:  # slow speech still says the sentence
            await _says(runtime, *_wav(Path(body["output_filepath"]).read_bytes()), SENTENCE)
    assert durations[0.6] > durations[1.0] > durations[1.6], durations
    assert 1.8 < durations[0.6] / durations[1.6] < 3.6, durations  # 2.67 if every sound scaled


async def test_bad_bodies_are_422(http) -> None:  # type: ignore[no-untyped-def]
    for body in (
        {},
        {"text": "   "},
        {"text": "Hello.", "parameters": {"speed": 9}},
        {"text": "Hello.", "parameters": {"top_p": 2}},
        {"text": "Hello.", "surprise": True},
        {"text": "Hello.", "response_format": "midi"},
        {"text": "x" * 5001},
    ):
        response = await _speak(http, PIPER_VOICE, body)
        assert response.status_code == 422, (body, response.text)
        assert isinstance(response.json()["detail"], list)


async def test_other_formats_decode_to_the_same_speech(http, runtime) -> None:  # type: ignore[no-untyped-def]
    for fmt in ("mp3", "flac"):
        response = await _speak(http, PIPER_VOICE, {"text": SENTENCE, "response_format": fmt})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["format"] == fmt and body["output_filepath"].endswith(f".{fmt}")
        decoded = await asyncio.to_thread(load_audio, body["output_filepath"], 16000)
        assert abs(len(decoded) / 16000 - body["duration_s"]) < 0.1, (fmt, len(decoded) / 16000, body)
        await _says(runtime, float_to_pcm16(decoded), 16000, SENTENCE)
    response = await _speak(http, PIPER_VOICE, {"text": SENTENCE, "output_filepath": "named.flac"})
    assert response.json()["format"] == "flac"
    mismatch = await _speak(http, PIPER_VOICE, {"text": "Hi.", "output_filepath": "a.mp3", "format": "wav"})
    assert mismatch.status_code == 400 and "response_format" in mismatch.json()["detail"]


# -- output paths ----------------------------------------------------------------------------------------------


async def test_output_paths_stay_inside_the_outputs_dir(http, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = settings.outputs_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "target.wav"
    target.write_bytes(b"keep me")
    (root / "out-link").symlink_to(elsewhere, target_is_directory=True)
    (root / "file-link.wav").symlink_to(target)
    refused = [
        str(tmp_path / "absolute.wav"),
        "../escape.wav",
        "deeper/../../escape.wav",
        "out-link/inside-the-link.wav",
        "out-link/new/dir.wav",
        "file-link.wav",
        "",
    ]
    try:
        for requested in refused:
            response = await _speak(http, PIPER_VOICE, {"text": "Hello.", "output_filepath": requested})
            assert response.status_code == 400, (requested, response.text)
            assert "output_filepath" in response.json()["detail"]
        assert list(elsewhere.iterdir()) == [] and target.read_bytes() == b"keep me"
        assert not (tmp_path / "absolute.wav").exists() and not (root.parent / "escape.wav").exists()
        for requested, where in (
            ("mine/clip.wav", root / "mine" / "clip.wav"),
            (str(root / "abs.wav"), root / "abs.wav"),
        ):
            response = await _speak(http, PIPER_VOICE, {"text": "Hello.", "output_filepath": requested})
            assert response.status_code == 200, response.text
            assert Path(response.json()["output_filepath"]) == where and where.stat().st_size > 1000
        assert (await http.get(f"/v1/outputs/{quote('../../etc/passwd', safe='')}")).status_code in (400, 404)
        assert (await http.get("/v1/outputs/out-link")).status_code == 404
        assert (await http.get("/v1/outputs/never-written.wav")).status_code == 404
    finally:
        (root / "out-link").unlink()
        (root / "file-link.wav").unlink()


def test_retention_sweep_deletes_old_files_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    outputs, outside = tmp_path / "outputs", tmp_path / "outside.wav"
    (outputs / "sub").mkdir(parents=True)
    outside.write_bytes(b"x")
    old, new, nested = outputs / "old.wav", outputs / "new.wav", outputs / "sub" / "old.mp3"
    for path in (old, new, nested):
        path.write_bytes(b"x")
    link = outputs / "old-link.wav"
    link.symlink_to(outside)
    week_ago = time.time() - 7 * 86400
    for path in (old, nested, outside):
        os.utime(path, (week_ago, week_ago))
    os.utime(link, (week_ago, week_ago), follow_symlinks=False)
    assert sweep(outputs, max_age_s=3600) == 3
    assert new.exists() and outside.exists() and not old.exists() and not nested.exists()
    assert not os.path.lexists(link)


# -- dialogue --------------------------------------------------------------------------------------------------


def _two_voices(runtime) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    ids = [v.id for v in runtime.tts.voices()]
    if PIPER_VOICE in ids and ESPEAK_VOICE in ids:
        return PIPER_VOICE, ESPEAK_VOICE
    return ids[0], ids[1] if len(ids) > 1 else ids[0]  # one voice only: the order is still checked by words


def _silent_runs(pcm: bytes, rate: int, frame_ms: int = 20) -> list[tuple[float, float]]:
    """Stretches (start_s, end_s) of at least 250 ms below -55 dBFS."""
    x = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    n = rate * frame_ms // 1000
    frames = x[: len(x) // n * n].reshape(-1, n)
    quiet = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12) < -55
    runs, start = [], None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * frame_ms >= 250:
                runs.append((start * frame_ms / 1000, i * frame_ms / 1000))
            start = None
    return runs


async def _dialogue_reads_back(http: httpx.AsyncClient, runtime, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    """A two-line dialogue in ``first`` then ``second``: both speakers, in order, each saying its line."""
    inputs = [{"text": FIRST_LINE, "voice_id": first}, {"text": SECOND_LINE, "voice_id": second}]
    response = await http.post("/v1/text-to-dialogue", json={"inputs": inputs, "pause_ms": 500})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["voice_fallback"] is False
    segments = body["segments"]
    assert [s["voice_id"] for s in segments] == [first, second]
    pcm, rate = _wav((await http.get(body["download_url"])).content)
    assert abs(len(pcm) / 2 / rate - segments[1]["end_s"]) < 0.01
    assert abs(segments[1]["start_s"] - segments[0]["end_s"] - 0.5) < 0.01
    # The pause the answer reports is where the file is silent: the speakers are split by it, not by trust.
    gaps = [
        r
        for r in _silent_runs(pcm, rate)
        if r[0] - 0.05 <= segments[0]["end_s"] and segments[1]["start_s"] <= r[1] + 0.05
    ]
    assert gaps, (_silent_runs(pcm, rate), segments)
    cut = int((gaps[0][0] + gaps[0][1]) / 2 * rate) * 2
    await _says(runtime, pcm[:cut], rate, FIRST_LINE, bound=0.3)
    await _says(runtime, pcm[cut:], rate, SECOND_LINE, bound=0.3)


async def test_dialogue_holds_both_speakers_in_order(http, runtime) -> None:  # type: ignore[no-untyped-def]
    # The shared server's engine may have one voice; the two-engine dialogue runs in a server of its own below.
    await _dialogue_reads_back(http, runtime, *_two_voices(runtime))


async def test_dialogue_refusals(http) -> None:  # type: ignore[no-untyped-def]
    one = await http.post("/v1/text-to-dialogue", json={"inputs": [{"text": "Hi.", "voice_id": PIPER_VOICE}]})
    assert one.status_code == 400 and "at least 2 inputs" in one.json()["detail"]
    assert (await http.post("/v1/text-to-dialogue", json={"inputs": []})).status_code == 400
    for bad in ({"inputs": "hello"}, {"inputs": [{"voice_id": PIPER_VOICE}, {"text": "Hi."}]}, {}):
        response = await http.post("/v1/text-to-dialogue", json=bad)
        assert response.status_code == 422, (bad, response.text)


async def test_dialogue_reports_each_fallback(http, runtime) -> None:  # type: ignore[no-untyped-def]
    inputs = [{"text": FIRST_LINE, "voice_id": PIPER_VOICE}, {"text": SECOND_LINE, "voice_id": "nobody"}]
    body = (await http.post("/v1/text-to-dialogue", json={"inputs": inputs})).json()
    assert body["voice_fallback"] is True and [s["voice_fallback"] for s in body["segments"]] == [False, True]
    assert "Input 1: unknown voice 'nobody'" in body["message"]


# -- clone and design ------------------------------------------------------------------------------------------


async def test_clone_and_design_name_the_missing_capability(http, shared_audio) -> None:  # type: ignore[no-untyped-def]
    reference = (shared_audio / "fleurs-en-004.ogg").read_bytes()
    files = {"ref_audio": ("ref.ogg", reference, "audio/ogg")}
    form = {"text": SENTENCE, "ref_text": (shared_audio / "fleurs-en-004.txt").read_text()}
    clone = await http.post("/api/v1/tts/clone", data=form, files=files)
    assert clone.status_code == 400, clone.text
    assert "cannot clone" in clone.json()["detail"] and "'cloning' capability" in clone.json()["detail"]
    design = await http.post("/api/v1/tts/design", json={"text": SENTENCE, "instruct": "a calm old sailor"})
    assert design.status_code == 400 and "'design' capability" in design.json()["detail"], design.text
    # The body is checked first: a bad one is 422 whatever the engine can do.
    # A form without the file is still multipart (an upload route takes no url-encoded form: 415).
    multipart_fields = {name: (None, value) for name, value in form.items()}
    no_audio = await http.post("/api/v1/tts/clone", files=multipart_fields)
    assert (await http.post("/api/v1/tts/clone", data=form)).status_code == 415
    not_audio = await http.post(
        "/api/v1/tts/clone", data=form, files={"ref_audio": ("x.ogg", b"not audio", "audio/ogg")}
    )
    no_text = await http.post("/api/v1/tts/clone", data={}, files=files)
    for response, field in ((no_audio, "ref_audio"), (not_audio, "ref_audio"), (no_text, "text")):
        assert response.status_code == 422, response.text
        assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]
    assert (await http.post("/api/v1/tts/design", json={"text": SENTENCE})).status_code == 422
    assert (
        await http.post("/api/v1/tts/design", content=b"{nope", headers={"content-type": "application/json"})
    ).status_code == 422


# -- health, index, load and unload on the shared server (refusals only) ---------------------------------------


async def test_health_and_index(http) -> None:  # type: ignore[no-untyped-def]
    health = (await http.get("/health")).json()
    assert health["status"] == "healthy" and health["model_loaded"] is True and health["device"] == "cpu"
    deps = health["dependencies_available"]
    assert (
        deps["faster_whisper"] is True
        and deps["av"] is True
        and all(isinstance(v, bool) for v in deps.values())
    )
    assert set(health["engine_state"]) == {"stt", "llm", "tts", "turn"}
    assert {health["engine_state"][r] for r in ("stt", "llm", "tts")} == {"loaded"}
    index = await http.get("/", headers={"accept": "application/json"})
    assert index.json()["message"] and index.json()["model"] and index.json()["name"] == "voxgate"
    page = await http.get("/", headers={"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")


async def test_load_and_unload_refusals(http, runtime, settings) -> None:  # type: ignore[no-untyped-def]
    vad = await http.post("/v1/unload-model", json={"engine": "vad"})
    assert vad.status_code == 400 and "vad" in vad.json()["detail"]
    unknown = await http.post("/v1/unload-model", json={"engine": "gpt-9"})
    assert unknown.status_code == 422 and "unknown engine" in unknown.json()["detail"]
    for bad in ({}, {"engine": "tts", "wait_s": -1}, {"engine": "tts", "extra": 1}):
        assert (await http.post("/v1/unload-model", json=bad)).status_code == 422, bad
    for name in ("tts", settings.engine_name("tts"), type(runtime.tts).__name__):  # a kind, a name, a class
        loaded = await http.post("/v1/load-model", json={"engine": name})
        assert loaded.status_code == 200, (name, loaded.text)
        assert loaded.json()["engine"] == "tts" and loaded.json()["message"].endswith("already loaded")


# -- unloading for real, in servers of their own ---------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture
def own_server(request) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:  # type: ignore[no-untyped-def]
    """``voxgate serve`` in a process of its own, with ``request.param``'s settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryFile("w+") as log:
        env.update({"VOXGATE_DATA_DIR": data, "VOXGATE_PORT": str(port), "VOXGATE_DRAIN_TIMEOUT_S": "0"})
        env.update(request.param)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 150  # 25-47 s seen on a 2-core machine busy with other tests
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                log.seek(0)
                pytest.fail(f"the server did not get ready:\n{log.read()[-3000:]}")
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(
    "own_server",
    # The voices engine (Piper and espeak-ng voices behind one engine) for a dialogue in two engines' voices.
    [{"VOXGATE_TTS_ENGINE": "voices", "VOXGATE_TURN_ENGINE": "none"}],
    indirect=True,
)
async def test_unload_frees_memory_waits_for_sessions_and_reloads(own_server, runtime) -> None:  # type: ignore[no-untyped-def]
    base, proc = own_server
    freed: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        async with VoiceClient(base.replace("http", "ws") + "/v1/voice") as client:
            await client.wait_for("session.created")
            refused = await http.post("/v1/unload-model", json={"engine": "tts"})
            assert refused.status_code == 409 and "1 live session" in refused.json()["detail"], refused.text
            waiting = asyncio.create_task(http.post("/v1/unload-model", json={"engine": "tts", "wait_s": 30}))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # it waits for the session to end rather than cutting it
            before = _rss_mb(proc.pid)
        unloaded = await asyncio.wait_for(waiting, 30)
        assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded", unloaded.text
        freed["tts"] = before - _rss_mb(proc.pid)
        for engine in ("stt", "llm"):
            before = _rss_mb(proc.pid)
            response = await http.post("/v1/unload-model", json={"engine": engine})
            assert response.status_code == 200 and response.json()["status"] == "unloaded", response.text
            freed[engine] = before - _rss_mb(proc.pid)
        print("freed MB:", {k: round(v, 1) for k, v in freed.items()})
        assert freed["tts"] > 40 and freed["stt"] > 25 and freed["llm"] > 60, freed
        health = (await http.get("/health")).json()
        assert health["status"] == "degraded" and health["model_loaded"] is False
        assert health["engine_state"] == {
            "stt": "unloaded",
            "llm": "unloaded",
            "tts": "unloaded",
            "turn": "none",
        }
        assert health["engines"]["tts"] == "VoicesTTS"  # still named while unloaded
        voices = {v["id"] for v in (await http.get("/v1/voices")).json()["voices"]}  # listed without loading
        assert {PIPER_VOICE, ESPEAK_VOICE} <= voices, sorted(voices)[:20]
        assert (await http.get("/health")).json()["engine_state"]["tts"] == "unloaded"
        again = await http.post("/v1/unload-model", json={"engine": "tts"})
        assert again.json()["message"].endswith("already unloaded")

        # load_on_demand (the default): a request that needs the engine loads it.
        spoken = await http.post(f"/v1/text-to-speech/{PIPER_VOICE}", json={"text": SENTENCE})
        assert spoken.status_code == 200, spoken.text
        assert (await http.get("/health")).json()["engine_state"]["tts"] == "loaded"
        await _says(runtime, *_wav((await http.get(spoken.json()["download_url"])).content), SENTENCE)
        before = _rss_mb(proc.pid)
        for engine in ("stt", "llm"):
            loaded = await http.post("/v1/load-model", json={"engine": engine})
            assert loaded.status_code == 200 and loaded.json()["status"] == "loaded", loaded.text
            print(f"{engine} loaded in {loaded.json()['seconds']} s")
        assert _rss_mb(proc.pid) - before > 0.5 * (freed["stt"] + freed["llm"])
        assert (await http.get("/health")).json()["status"] == "healthy"
        await _dialogue_reads_back(http, runtime, PIPER_VOICE, ESPEAK_VOICE)


async def test_without_load_on_demand_an_unloaded_engine_is_409(runtime, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An app of its own in this process (load_on_demand off) with a Piper engine of its own, beside the shared
    server's other engines: unloading it never touches what other tests use."""
    from engines.tts_piper import PiperTTS
    from gateway.app import create_app
    from gateway.settings import Settings
    from pipeline.runtime import Runtime

    settings = Settings(data_dir=tmp_path, tts_engine="piper", speech={"load_on_demand": False})
    tts = await asyncio.to_thread(PiperTTS)
    own = Runtime(vad=runtime.vad, stt=runtime.stt, llm=runtime.llm, tts=tts, turn=None)
    del tts
    transport = httpx.ASGITransport(app=create_app(settings, own))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as http:
            assert (await http.post("/v1/unload-model", json={"engine": "tts"})).status_code == 200
            refused = await http.post(f"/v1/text-to-speech/{PIPER_VOICE}", json={"text": SENTENCE})
            assert refused.status_code == 409, refused.text
            assert (
                "load_on_demand is off" in refused.json()["detail"]
                and "/v1/load-model" in refused.json()["detail"]
            )
            assert (await http.post("/v1/load-model", json={"engine": "tts"})).status_code == 200
            spoken = await http.post(f"/v1/text-to-speech/{PIPER_VOICE}", json={"text": SENTENCE})
            assert spoken.status_code == 200, spoken.text
            await _says(runtime, *_wav((await http.get(spoken.json()["download_url"])).content), SENTENCE)
    finally:
        await own.close()
