"""The remote STT and TTS engines for real: a second voxgate process is the model node.

One ``voxgate serve`` (the node: Whisper and Piper, no LLM) serves ``/v1/audio/transcriptions`` and
``/v1/audio/speech``; the engines are checked against it directly, through a flaky HTTP proxy that fails
requests as told (retries, timeouts, 4xx), and as a gateway's engines: a second ``voxgate serve`` whose STT
and TTS are the node runs a voice session over /v1/voice, and goes on when the node goes down and comes back.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from engines.base import TranscribeOptions
from engines.stt_remote import RemoteEngineError, RemoteSTT
from engines.tts_remote import RemoteTTS
from gateway.client import VoiceClient
from pipeline.audio import load_audio, pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.conftest import free_port
from tests.speech import clip_pcm, energy_dbfs, wer, words
from tests.voxgate_process import VoxgateProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Two sentences, so the node streams them as two pieces; plain words Whisper tiny reads back reliably.
SPOKEN = "The weather is sunny and warm today. We will walk to the park after lunch."
QUESTION = "What is the capital of France?"


NODE_ENV = {
    # A model node needs Whisper and Piper only: its LLM is a server that is not there (the warm-up says
    # so and goes on), and pauses are judged from words alone.
    "VOXGATE_LLM_ENGINE": "openai",
    "VOXGATE_LLM_BASE_URL": "http://127.0.0.1:9/v1",
    "VOXGATE_TURN_ENGINE": "none",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoxgateProcess]:
    server = VoxgateProcess(tmp_path_factory.mktemp("node"), NODE_ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node_api(node: VoxgateProcess) -> str:
    return f"{node.http}/v1"


@pytest.fixture(scope="module")
def gateway(
    node: VoxgateProcess, node_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VoxgateProcess]:
    env = {
        "VOXGATE_STT_ENGINE": "openai",
        "VOXGATE_STT_BASE_URL": node_api,
        "VOXGATE_STT_RETRIES": "1",
        "VOXGATE_STT_TIMEOUT_S": "60",  # a loaded 2-core machine; the failures below are refusals, not waits
        "VOXGATE_TTS_ENGINE": "openai",
        "VOXGATE_TTS_BASE_URL": node_api,
        "VOXGATE_TTS_RETRIES": "1",
        "VOXGATE_TTS_TIMEOUT_S": "60",
        "VOXGATE_LLM_MAX_TOKENS": "24",  # a sentence: the answer is heard back, its length does not matter
    }
    server = VoxgateProcess(tmp_path_factory.mktemp("gateway"), env).start()
    yield server
    server.stop()


# -- a flaky proxy: a real HTTP server that fails requests as planned, then forwards to the node --------------


class FlakyProxy:
    """Answers each request per ``plan`` ("503", "429", "400", "hang", "cut"), then forwards
    the rest to ``target``. "cut" forwards ``cut_bytes`` of the answer and drops the connection mid-body."""

    def __init__(self, target: str, hang_s: float = 3.0) -> None:
        self.target = target
        self.plan: list[str] = []
        self.seen: list[str] = []  # "<METHOD> <path> -> <action>", in order
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request a connection; a streamed body ends when it closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            def do_POST(self) -> None:
                proxy.handle(self)

        self.hang_s = hang_s
        self.cut_bytes = 20_000
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("content-length") or 0))
        action = self.plan.pop(0) if self.plan else "forward"
        self.seen.append(f"{req.command} {req.path} -> {action}")
        if action == "hang":
            time.sleep(self.hang_s)
            return
        if action == "cut":  # the first piece of the real answer, then the connection drops mid-body
            with httpx.stream(
                req.command, self.target + req.path, content=body, headers=self._headers(req), timeout=60
            ) as up:
                req.send_response(up.status_code)
                req.send_header("content-type", up.headers.get("content-type", "application/octet-stream"))
                req.send_header("content-length", str(10**8))
                req.end_headers()
                sent = 0
                for data in up.iter_raw():
                    req.wfile.write(data)
                    req.wfile.flush()
                    sent += len(data)
                    if sent >= self.cut_bytes:
                        break
            return
        if action != "forward":
            payload = json.dumps({"detail": f"planned {action}"}).encode()
            req.send_response(int(action))
            req.send_header("content-type", "application/json")
            if action == "429":
                req.send_header("retry-after", "0.5")
            req.end_headers()
            req.wfile.write(payload)
            return
        with httpx.stream(
            req.command, self.target + req.path, content=body, headers=self._headers(req), timeout=60
        ) as upstream:
            req.send_response(upstream.status_code)
            req.send_header("content-type", upstream.headers.get("content-type", "application/octet-stream"))
            req.end_headers()
            for data in upstream.iter_raw():
                req.wfile.write(data)
                req.wfile.flush()

    @staticmethod
    def _headers(req: http.server.BaseHTTPRequestHandler) -> dict[str, str]:
        return {k: v for k, v in req.headers.items() if k.lower() in ("content-type", "authorization")}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(node: VoxgateProcess) -> Iterator[FlakyProxy]:
    flaky = FlakyProxy(node.http)
    yield flaky
    flaky.close()


# -- the engines against the node ----------------------------------------------------------------------------


def test_remote_stt_transcribes_real_speech_on_the_node(node_api: str, shared_audio: Path) -> None:
    stt = RemoteSTT(node_api)
    try:
        for name in ("jfk.flac", "fleurs-en-000.ogg"):
            clip = shared_audio / name
            audio = load_audio(str(clip))
            transcript = stt.transcribe(audio)
            reference = clip.with_suffix(".txt").read_text().strip()
            assert wer(reference, transcript.text) <= 0.25, (name, transcript.text)
            assert transcript.language == "en"
            assert abs(transcript.duration_s - len(audio) / 16000) < 0.01
            # verbose_json's segments, with the node's times, read as the text does.
            segments = transcript.segments
            assert segments and " ".join(s.text for s in segments) == transcript.text
            assert all(0 <= s.start < s.end <= transcript.duration_s + 0.5 for s in segments), segments
            assert all(a.end <= b.start + 0.01 for a, b in zip(segments, segments[1:], strict=False))
        # A prompt and a temperature reach the server (the node's Whisper takes both).
        clip = shared_audio / "jfk.flac"
        options = TranscribeOptions(prompt="President Kennedy's inaugural address.", temperature=0.0)
        prompted = stt.transcribe(load_audio(str(clip)), "en", options)
        assert wer(clip.with_suffix(".txt").read_text(), prompted.text) <= 0.25, prompted.text
        assert stt.capabilities.transcribe_options and not stt.capabilities.translates
    finally:
        stt.close()


def test_remote_stt_sends_no_silence(proxy: FlakyProxy) -> None:
    stt = RemoteSTT(proxy.url)
    transcript = stt.transcribe(np.zeros(16000, np.float32))
    assert transcript.text == "" and transcript.no_speech_prob == 1.0
    assert proxy.seen == []  # digital silence never leaves this machine


def test_remote_tts_streams_speech_that_reads_back(node_api: str) -> None:
    tts = RemoteTTS(node_api, chunk_ms=200)
    stt = RemoteSTT(node_api)
    try:
        start = time.monotonic()
        arrivals: list[float] = []
        chunks: list[np.ndarray] = []
        for chunk in tts.synthesize(SPOKEN):
            arrivals.append(time.monotonic() - start)
            chunks.append(chunk)
        pcm = b"".join(c.astype("<i2").tobytes() for c in chunks)
        assert all(c.dtype == np.int16 for c in chunks)
        # Handed on as it arrives, in pieces of a few hundred ms, never sample by sample.
        assert len(chunks) >= 2, [len(c) for c in chunks]
        # The first sentence arrived while the node was still making the second.
        assert arrivals[-1] - arrivals[0] > 0.02, arrivals
        assert all(len(c) >= tts.sample_rate * 0.2 for c in chunks[:-1]), [len(c) for c in chunks]
        seconds = len(pcm) / 2 / tts.sample_rate
        predicted = len(words(SPOKEN)) / 2.7  # Piper's joe voice speaks about 2.7 words a second
        assert 0.6 * predicted <= seconds <= 1.6 * predicted, (seconds, predicted)
        assert energy_dbfs(pcm) > -35
        heard = stt.transcribe(pcm16_to_float(resample(pcm, tts.sample_rate, 16000))).text
        assert wer(SPOKEN, heard) <= 0.2, heard
    finally:
        tts.close()
        stt.close()


def test_remote_tts_reads_wav_and_resamples_to_its_own_rate(node_api: str) -> None:
    """wav's header gives the node's rate (24 kHz); an engine set to 16 kHz hands on 16 kHz audio."""
    text = "Please call me back tomorrow morning."
    pcm24 = b"".join(c.tobytes() for c in RemoteTTS(node_api).synthesize(text))
    tts = RemoteTTS(node_api, response_format="wav", sample_rate=16000)
    stt = RemoteSTT(node_api)
    try:
        pcm16 = b"".join(c.tobytes() for c in tts.synthesize(text))
        # The same speech, about as long at either rate (Piper's durations vary a few per cent a run); a
        # rate taken wrongly would stretch it by half.
        seconds16, seconds24 = len(pcm16) / 2 / 16000, len(pcm24) / 2 / 24000
        assert abs(seconds16 - seconds24) < 0.15 * seconds24, (seconds16, seconds24)
        heard = stt.transcribe(pcm16_to_float(pcm16)).text
        assert wer(text, heard) <= 0.2, heard
    finally:
        tts.close()
        stt.close()


def test_remote_tts_lists_the_node_voices_with_the_configured_one_first(
    node: VoxgateProcess, node_api: str
) -> None:
    node_voices = httpx.get(f"{node.http}/v1/voices", timeout=10).json()["voices"]
    tts = RemoteTTS(node_api, voice="en_US-joe-medium")
    try:
        voices = tts.voices()
        assert voices[0].id == "en_US-joe-medium"
        assert {v.id for v in voices} == {v["id"] for v in node_voices}
        assert all(v.engine == "remote" and v.sample_rate == tts.sample_rate for v in voices)
        assert "en" in tts.capabilities.languages
    finally:
        tts.close()


# -- retries, timeouts and refusals --------------------------------------------------------------------------
def _posts(proxy: FlakyProxy) -> list[str]:
    """What the proxy did with each POST (speech and transcriptions; voice lists are GETs)."""
    return [line.split(" -> ")[1] for line in proxy.seen if line.startswith("POST")]


def test_5xx_and_429_are_retried_with_backoff_and_then_succeed(proxy: FlakyProxy, shared_audio: Path) -> None:
    audio = load_audio(str(shared_audio / "jfk.flac"))
    stt = RemoteSTT(proxy.url, retries=2)
    proxy.plan = ["503", "429"]
    start = time.monotonic()
    transcript = stt.transcribe(audio)
    elapsed = time.monotonic() - start
    assert wer((shared_audio / "jfk.txt").read_text(), transcript.text) <= 0.25, transcript.text
    assert _posts(proxy) == ["503", "429", "forward"]
    assert elapsed >= 0.25 + 0.5  # the first backoff, then the server's Retry-After

    tts = RemoteTTS(proxy.url, retries=1)
    proxy.plan = ["502"]
    audio_out = b"".join(c.tobytes() for c in tts.synthesize("Hello there."))
    assert len(audio_out) / 2 / tts.sample_rate > 0.3
    assert energy_dbfs(audio_out) > -35
    assert _posts(proxy)[-2:] == ["502", "forward"]


def test_a_4xx_is_never_retried_and_is_an_engine_error(proxy: FlakyProxy) -> None:
    speech = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    stt = RemoteSTT(proxy.url, retries=3)
    proxy.plan = ["401"]
    with pytest.raises(RemoteEngineError) as caught:
        stt.transcribe(speech)
    assert caught.value.status_code == 401 and "planned 401" in str(caught.value)
    assert _posts(proxy) == ["401"]

    tts = RemoteTTS(proxy.url, retries=3, fallback="none")
    proxy.plan = ["400"]
    with pytest.raises(RemoteEngineError) as caught:
        list(tts.synthesize("Hello there."))
    assert caught.value.status_code == 400
    assert _posts(proxy) == ["401", "400"]


def test_too_many_failures_timeouts_and_a_dead_port_are_engine_errors(proxy: FlakyProxy) -> None:
    speech = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.3
    proxy.plan = ["500", "500"]
    with pytest.raises(RemoteEngineError) as caught:
        RemoteSTT(proxy.url, retries=1).transcribe(speech)
    assert caught.value.status_code == 500 and _posts(proxy) == ["500", "500"]

    # A server that never answers: one try (a read timeout is not retried), bounded by the timeout.
    tts = RemoteTTS(proxy.url, timeout_s=1.0, retries=2, fallback="none")
    proxy.plan = ["hang"]
    start = time.monotonic()
    with pytest.raises(RemoteEngineError, match="timed out"):
        list(tts.synthesize("Hello there."))
    assert time.monotonic() - start < 2.5 and _posts(proxy) == ["500", "500", "hang"]

    dead = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(RemoteEngineError, match="unreachable"):
        RemoteSTT(dead, retries=2).transcribe(speech)
    assert 0.25 + 0.5 <= time.monotonic() - start < 5  # tried three times, with backoff between
    tts = RemoteTTS(dead, fallback="none")  # building it needs no server: it offers the configured voice
    assert [v.id for v in tts.voices()] == ["en_US-joe-medium"]
    with pytest.raises(RemoteEngineError, match="unreachable"):
        list(tts.synthesize("Hello there."))


def test_a_dead_tts_server_is_spoken_for_by_the_local_fallback(node_api: str) -> None:
    """By default the caller still hears the answer when the TTS server is gone: espeak-ng, here."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    tts = RemoteTTS(dead, retries=0)
    stt = RemoteSTT(node_api)
    try:
        chunks = list(tts.synthesize(SPOKEN))
        pcm = b"".join(c.astype("<i2").tobytes() for c in chunks)
        assert all(c.dtype == np.int16 for c in chunks) and energy_dbfs(pcm) > -35
        seconds = len(pcm) / 2 / tts.sample_rate
        assert 0.4 * len(words(SPOKEN)) / 2.7 <= seconds <= 2.5 * len(words(SPOKEN)) / 2.7, seconds
        heard = stt.transcribe(pcm16_to_float(resample(pcm, tts.sample_rate, 16000))).text
        assert wer(SPOKEN, heard) <= 0.35, heard  # espeak-ng's formant voice costs Whisper some words
    finally:
        tts.close()
        stt.close()


def test_speech_cut_after_its_first_audio_is_an_error_and_is_not_tried_again(proxy: FlakyProxy) -> None:
    tts = RemoteTTS(proxy.url, retries=3, chunk_ms=100)
    proxy.plan = ["cut"]
    heard: list[np.ndarray] = []
    with pytest.raises(RemoteEngineError, match="connection failed"):
        for chunk in tts.synthesize(SPOKEN):
            heard.append(chunk)
    # The caller already heard the start: sending the clause again would repeat it.
    assert sum(len(c) for c in heard) >= tts.sample_rate * 0.1
    assert _posts(proxy) == ["cut"]


# -- a gateway whose STT and TTS are the node ------------------------------------------------------------------


async def _spoken_turn(client: VoiceClient, pcm: bytes) -> None:
    await client.stream(pcm, realtime=False)
    await client.silence(2.0, realtime=False)


async def test_a_voice_session_runs_through_the_model_node(
    gateway: VoxgateProcess, node_api: str, shared_audio: Path
) -> None:
    health = httpx.get(f"{gateway.http}/health", timeout=10).json()
    assert health["engines"]["stt"] == "RemoteSTT" and health["engines"]["tts"] == "RemoteTTS"
    assert health["device"] == "remote"
    # The gateway offers the node's voices, and a session may pick one of them.
    node_voices = {v["id"] for v in httpx.get(f"{node_api}/voices", timeout=10).json()["voices"]}
    gateway_voices = httpx.get(f"{gateway.http}/v1/voices", timeout=10).json()["voices"]
    assert {v["id"] for v in gateway_voices} == node_voices
    # The gateway's own transcription endpoint works through the node, with the node's segment times.
    jfk = shared_audio / "jfk.flac"
    response = httpx.post(
        f"{gateway.http}/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "verbose_json"},
        files={"file": (jfk.name, jfk.read_bytes(), "audio/flac")},
        timeout=90,
    )
    assert response.status_code == 200, response.text
    verbose = response.json()
    assert wer(jfk.with_suffix(".txt").read_text(), verbose["text"]) <= 0.25, verbose["text"]
    assert verbose["segments"] and 0 < verbose["segments"][-1]["end"] <= verbose["duration"] + 0.5
    async with VoiceClient(gateway.url) as client:
        await client.wait_for("session.created")
        # Kennedy pauses for effect; a longer turn end keeps his sentence one turn.
        update = {"vad": {"end_of_turn_ms": 1300}, "voice": "en_US-joe-medium"}
        await client.send_event({"type": "session.update", "session": update})
        await client.wait_for("session.updated")
        await _spoken_turn(client, clip_pcm(str(shared_audio / "jfk.flac"), level_dbfs=-26))
        final = await client.wait_for("transcript.final", timeout=90)
        # Generous: on a loaded 2-core machine the embedded LLM alone has taken a minute for this answer.
        done = await client.wait_for("response.text.done", timeout=150)
        audio_done = await client.wait_for("response.audio.done", timeout=150)
        await asyncio.sleep(0.3)
    assert not client.received.of("error"), client.received.of("error")
    assert wer((shared_audio / "jfk.txt").read_text(), final["text"]) <= 0.25, final["text"]
    text = done["text"]
    assert len(words(text)) >= 3, text
    audio = client.received.audio_bytes()
    seconds = len(audio) / 2 / 16000
    predicted = len(words(normalize_for_speech(text))) / 2.7
    assert 0.5 * predicted <= seconds <= 2.0 * predicted, (seconds, predicted, text)
    assert abs(audio_done["audio_ms"] / 1000 - seconds) < 0.5
    assert energy_dbfs(audio) > -40
    # The answer's audio, read back by the node's Whisper, says the answer's text.
    stt = RemoteSTT(node_api)
    heard = await asyncio.to_thread(stt.transcribe, pcm16_to_float(audio))
    stt.close()
    assert wer(normalize_for_speech(text), normalize_for_speech(heard.text)) <= 0.3, (text, heard.text)


async def test_a_node_that_goes_down_is_an_engine_error_and_the_session_goes_on(
    gateway: VoxgateProcess, node: VoxgateProcess
) -> None:
    from tests.speech import piper_pcm

    question = piper_pcm(QUESTION)
    async with VoiceClient(gateway.url) as client:
        await client.wait_for("session.created")
        node.kill()
        try:
            # Speech with no STT: an error event with a stable code, then the caller hears why (the TTS
            # node is down too, so in the local fallback voice), and the session stays.
            await _spoken_turn(client, question)
            stt_error = await client.wait_for("error", timeout=90)
            assert stt_error["code"] == "stt_failed" and node.http in stt_error["message"], stt_error
            sorry = await client.wait_for("response.text.done", timeout=60)
            assert sorry["text"] == "Sorry, I didn't catch that. Could you say it again?"
            heard = await client.wait_for_response("response.audio.done", sorry["response_id"], timeout=60)
            assert heard["audio_ms"] > 1000
            # Text with no TTS node: the LLM answers and the local fallback voice speaks it.
            await client.send_event({"type": "input_text", "text": "Say hello."})
            answer = await client.wait_for("response.text.done", timeout=150, count=2)
            spoken = await client.wait_for_response("response.audio.done", answer["response_id"], timeout=150)
            assert spoken["audio_ms"] > 300
            assert [e["code"] for e in client.received.of("error")] == ["stt_failed"]
            assert gateway.alive
            assert httpx.get(f"{gateway.http}/health/ready", timeout=10).status_code == 200
        finally:
            node.start()  # the same port: the node comes back
        before = len(client.received.audio)
        finals = len(client.received.of("transcript.final"))  # the typed turn had one too
        answers = len(client.received.of("response.audio.done"))
        await _spoken_turn(client, question)
        final = await client.wait_for("transcript.final", timeout=90, count=finals + 1)
        done = await client.wait_for("response.audio.done", timeout=150, count=answers + 1)
    assert wer(QUESTION, final["text"]) <= 0.2, final["text"]
    answer_audio = b"".join(chunk for _, chunk in client.received.audio[before:])
    assert done["audio_ms"] > 500 and len(answer_audio) / 2 / 16 >= 0.8 * done["audio_ms"]
    assert energy_dbfs(answer_audio) > -40
    assert gateway.alive


def test_the_settings_select_and_configure_the_remote_engines(tmp_path: Path) -> None:
    from gateway.engines import engine_choices
    from gateway.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        stt_engine="openai",
        stt_base_url="http://gpu:8000",
        stt_model="large-v3",
        stt_concurrency=16,
        tts_engine="openai",
        tts_base_url="http://tts:8880/v1",
        tts_voice="af_bella",
        tts_sample_rate=22050,
    )
    choices = engine_choices(settings)
    assert choices["stt"].options["base_url"] == "http://gpu:8000"
    assert choices["stt"].options["model"] == "large-v3"
    assert choices["tts"].options["voice"] == "af_bella"
    assert choices["tts"].options["sample_rate"] == 22050
    assert settings.default_voice == "af_bella"  # sessions start with the remote voice
    stt = RemoteSTT(**choices["stt"].options)
    assert stt.base_url == "http://gpu:8000/v1"  # a bare host gets OpenAI's /v1
    needs = stt.capabilities.needs
    assert needs.remote and needs.concurrency == 16 and not needs.cpu_heavy  # the worker gets 16 threads
    stt.close()
