"""Engines declare their options and needs; the runtime and the settings follow the declarations.

No model is loaded here: the engines are small stand-ins that declare what the real ones declare.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import Field, ValidationError

from engines.base import (
    BuildContext,
    Capabilities,
    EngineOptions,
    GenerationOptions,
    Needs,
    Transcript,
    Voice,
)
from engines.registry import REGISTRY, EngineChoice, EngineSpec, build, flat_option_names
from gateway.engines import build_runtime, engine_choices
from gateway.modelinfo import describe_models
from gateway.settings import Settings, session_config
from gateway.settings_help import describe_settings
from pipeline.runtime import Runtime


class StandinVAD:
    sample_rate = 16000
    sample_rates = (16000,)
    capabilities = Capabilities(batched=True)

    def new_state(self, sample_rate: int = 16000) -> Any:
        return None

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        return np.zeros(len(chunks), np.float32)


class StandinSTT:
    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(needs=needs or Needs())

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return Transcript("hello")


class StandinLLM:
    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(streaming=True, needs=needs or Needs())

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        yield "Hi."


class StandinTTS:
    sample_rate = 16000

    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(streaming=True, needs=needs or Needs())

    def voices(self) -> list[Voice]:
        return [Voice("tone", "standin", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        yield np.zeros(160, np.int16)


# What the shipped engines declare (engines/llm_llama.py, engines/llm_openai.py).
LLAMA_NEEDS = Needs(concurrency=1, cpu_heavy=True, cheap_second_instance=True)
OPENAI_NEEDS = Needs(remote=True, concurrency=8, cpu_heavy=False)


def _threads(worker: Any) -> int:
    return worker._executor._max_workers  # type: ignore[no-any-return]


def _runtime(llm: Any, stt: Any = None, tts: Any = None, **kwargs: Any) -> Runtime:
    return Runtime(vad=StandinVAD(), stt=stt or StandinSTT(), llm=llm, tts=tts or StandinTTS(), **kwargs)


async def test_an_in_process_llm_gets_one_thread_the_cpu_gate_and_its_own_background_lane() -> None:
    built: list[StandinLLM] = []

    def second() -> StandinLLM:
        built.append(StandinLLM(LLAMA_NEEDS))
        return built[-1]

    rt = _runtime(StandinLLM(LLAMA_NEEDS), background_llm_factory=second)
    try:
        assert _threads(rt.llm_worker) == 1
        # Speech work holds the gate the caller's LLM yields to; the LLM holds its own for the background lane.
        assert rt.stt_worker._holds is not None and rt.stt_worker._holds is rt.tts_worker._holds
        assert rt.llm_worker._yields_to == (rt.stt_worker._holds,)
        assert rt.llm_worker._holds is not None
        worker, engine = await rt.background_llm()
        assert worker is not rt.llm_worker and engine is built[0] and engine is not rt.llm
        assert worker.name == "llm-background" and set(worker._yields_to) == set(rt._gates)
        assert len(rt._gates) == 2 and rt.workers()[-1] is worker
    finally:
        await rt.close()


async def test_a_remote_llm_gets_its_declared_concurrency_no_gate_and_shares_its_worker() -> None:
    rt = _runtime(StandinLLM(OPENAI_NEEDS), background_llm_factory=lambda: StandinLLM(OPENAI_NEEDS))
    try:
        assert _threads(rt.llm_worker) == 8
        assert rt.llm_worker._holds is None and rt.llm_worker._yields_to == ()
        assert rt.stt_worker._holds is None and rt.tts_worker._holds is None
        assert rt._gates == ()
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_an_engine_that_declares_nothing_is_in_process_cpu_heavy_and_single_threaded() -> None:
    class Bare:
        capabilities = Capabilities()

        def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
            yield ""

    rt = _runtime(Bare())
    try:
        assert [_threads(w) for w in rt.workers()] == [1, 1, 1]
        assert rt.stt_worker._holds is not None and rt.llm_worker._yields_to == (rt.stt_worker._holds,)
        # No factory: background work shares the callers' LLM worker.
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_speech_engines_are_sized_from_their_own_needs() -> None:
    remote_stt = StandinSTT(Needs(remote=True, concurrency=4, cpu_heavy=False))
    rt = _runtime(StandinLLM(LLAMA_NEEDS), stt=remote_stt, tts=StandinTTS(Needs(concurrency=2)))
    try:
        assert _threads(rt.stt_worker) == 4 and rt.stt_worker._holds is None  # takes nothing from this CPU
        assert _threads(rt.tts_worker) == 2 and rt.tts_worker._holds is not None
        # No cheap second instance without a factory to make it.
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_without_a_cheap_second_instance_background_work_shares_the_worker() -> None:
    made: list[StandinLLM] = []
    rt = _runtime(StandinLLM(Needs()), background_llm_factory=lambda: made.append(StandinLLM()) or made[-1])
    try:
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
        assert made == []
    finally:
        await rt.close()


# --- the registry and the settings ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("VOXGATE_"):
            monkeypatch.delenv(key)
    return monkeypatch


# Every flat engine setting documented in docs/configuration.md before engines had options models, with a value
# to set it to, the role and option it reaches, and that option's value once validated.
FLAT_SETTINGS = [
    ("VOXGATE_STT_MODEL", "base", "stt", "model", "base"),
    ("VOXGATE_STT_DEVICE", "cuda", "stt", "device", "cuda"),
    ("VOXGATE_STT_COMPUTE_TYPE", "float16", "stt", "compute_type", "float16"),
    ("VOXGATE_STT_THREADS", "3", "stt", "threads", 3),
    ("VOXGATE_STT_SHORT_WINDOW_S", "15", "stt", "short_window_s", 15.0),
    ("VOXGATE_LLM_MODEL_PATH", "/m.gguf", "llm", "model_path", "/m.gguf"),
    ("VOXGATE_LLM_THREADS", "4", "llm", "threads", 4),
    ("VOXGATE_TTS_VOICE", "en_GB-alan-medium", "tts", "voice", "en_GB-alan-medium"),
    ("VOXGATE_TTS_THREADS", "1", "tts", "threads", 1),
    ("VOXGATE_VOICES_DIR", "/voices", "tts", "voices_dir", Path("/voices")),
    ("VOXGATE_TURN_THREADS", "2", "turn", "threads", 2),
    ("VOXGATE_TURN_THRESHOLD", "0.3", "turn", "threshold", 0.3),
]
OPENAI_FLAT_SETTINGS = [
    ("VOXGATE_LLM_BASE_URL", "http://gpu:8001/v1", "llm", "base_url", "http://gpu:8001/v1"),
    ("VOXGATE_LLM_MODEL", "qwen", "llm", "model", "qwen"),
    ("VOXGATE_LLM_API_KEY", "sk-test", "llm", "api_key", "sk-test"),
    ("VOXGATE_LLM_NATIVE_TOOLS", "true", "llm", "native_tools", True),
]
# The remote STT and TTS engines (stt_engine = tts_engine = openai), docs/deploy.md.
REMOTE_FLAT_SETTINGS = [
    ("VOXGATE_STT_BASE_URL", "http://node:8000/v1", "stt", "base_url", "http://node:8000/v1"),
    ("VOXGATE_STT_API_KEY", "sk-test", "stt", "api_key", "sk-test"),
    ("VOXGATE_STT_CONCURRENCY", "8", "stt", "concurrency", 8),
    ("VOXGATE_STT_TIMEOUT_S", "5", "stt", "timeout_s", 5.0),
    ("VOXGATE_STT_RETRIES", "1", "stt", "retries", 1),
    ("VOXGATE_STT_RESPONSE_FORMAT", "json", "stt", "response_format", "json"),
    ("VOXGATE_STT_LANGUAGES", "en,de", "stt", "languages", "en,de"),
    ("VOXGATE_TTS_BASE_URL", "http://node:8000/v1", "tts", "base_url", "http://node:8000/v1"),
    ("VOXGATE_TTS_API_KEY", "sk-test", "tts", "api_key", "sk-test"),
    ("VOXGATE_TTS_MODEL", "tts-1-hd", "tts", "model", "tts-1-hd"),
    ("VOXGATE_TTS_CONCURRENCY", "8", "tts", "concurrency", 8),
    ("VOXGATE_TTS_TIMEOUT_S", "5", "tts", "timeout_s", 5.0),
    ("VOXGATE_TTS_RETRIES", "1", "tts", "retries", 1),
    ("VOXGATE_TTS_SAMPLE_RATE", "22050", "tts", "sample_rate", 22050),
    ("VOXGATE_TTS_RESPONSE_FORMAT", "wav", "tts", "response_format", "wav"),
    ("VOXGATE_TTS_CHUNK_MS", "100", "tts", "chunk_ms", 100),
    ("VOXGATE_TTS_FALLBACK", "none", "tts", "fallback", "none"),
]


@pytest.mark.parametrize(
    ("env", "raw", "role", "option", "value"), FLAT_SETTINGS + OPENAI_FLAT_SETTINGS + REMOTE_FLAT_SETTINGS
)
def test_flat_engine_env_vars_keep_working(
    clean_env: pytest.MonkeyPatch, env: str, raw: str, role: str, option: str, value: Any
) -> None:
    clean_env.setenv(env, raw)
    if (env, raw, role, option, value) in OPENAI_FLAT_SETTINGS:
        clean_env.setenv("VOXGATE_LLM_ENGINE", "openai")
    if (env, raw, role, option, value) in REMOTE_FLAT_SETTINGS:
        clean_env.setenv(f"VOXGATE_{role.upper()}_ENGINE", "openai")
    settings = Settings()
    assert getattr(settings.engine_options(role), option) == value
    # The same option, spelled nested, and as a constructor argument under its flat name.
    clean_env.delenv(env)
    clean_env.setenv(f"VOXGATE_{role.upper()}_OPTIONS__{option.upper()}", raw)
    assert getattr(Settings().engine_options(role), option) == value
    flat = env.removeprefix("VOXGATE_").lower()
    assert getattr(Settings(**{flat: raw}).engine_options(role), option) == value


def test_engine_option_flat_names_are_the_documented_ones_and_clash_with_no_setting() -> None:
    documented = {
        env.removeprefix("VOXGATE_").lower()
        for env, *_ in FLAT_SETTINGS + OPENAI_FLAT_SETTINGS + REMOTE_FLAT_SETTINGS
    }
    assert set(flat_option_names()) == documented
    assert not documented & set(Settings.model_fields)


def test_the_default_engines_get_the_same_arguments_as_before(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    choices = engine_choices(settings)
    assert {role: c.name for role, c in choices.items()} == {
        "vad": "silero",
        "stt": "whisper",
        "llm": "llama",
        "tts": "piper",
        "turn": "smart_turn",
    }
    assert choices["vad"].options == {}
    assert choices["stt"].options == {
        "model": "tiny.en",
        "device": "cpu",
        "compute_type": "int8",
        "cpu_threads": 2,
        "cache_dir": str(tmp_path / "cache"),
        "short_window_s": 0.0,  # Whisper's own 30 s window, as before
    }
    assert choices["llm"].options == {"model_path": None, "n_threads": 2}
    assert choices["tts"].options == {
        "default_voice": "en_US-joe-medium",
        "intra_op_threads": 2,
        "voices_dir": None,
    }
    assert choices["turn"].options == {"threads": 1, "threshold": 0.1, "cache_dir": str(tmp_path / "cache")}
    assert session_config(settings).voice == "en_US-joe-medium"


def test_other_engines_get_their_own_options(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(
        llm_engine="openai",
        llm_base_url="http://gpu/v1",
        llm_model_path="/ignored.gguf",  # llama's: ignored while openai is selected, as it always was
        tts_engine="espeak",
        tts_voice="ignored",
    )
    choices = engine_choices(settings)
    assert choices["llm"].options == {
        "base_url": "http://gpu/v1",
        "model": "default",
        "api_key": None,
        "native_tools": False,
    }
    assert choices["tts"].options == {}
    assert session_config(settings).voice is None  # espeak starts with its own voice


def test_precedence_holds_for_engine_options(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "voxgate.toml"
    config.write_text(
        'stt_model = "from-toml"\nstt_threads = 3\n[tts_options]\nthreads = 1\nvoice = "toml"\n'
    )
    clean_env.setenv("VOXGATE_CONFIG", str(config))
    assert Settings().engine_options("stt").model == "from-toml"  # type: ignore[attr-defined]
    clean_env.setenv("VOXGATE_STT_MODEL", "from-env")
    clean_env.setenv("VOXGATE_TTS_VOICE", "env")
    settings = Settings()
    stt, tts = settings.engine_options("stt"), settings.engine_options("tts")
    assert (stt.model, stt.threads) == ("from-env", 3)  # type: ignore[attr-defined]
    assert (tts.voice, tts.threads) == ("env", 1)  # type: ignore[attr-defined]
    assert Settings(stt_model="from-init").engine_options("stt").model == "from-init"  # type: ignore[attr-defined]


def test_an_unknown_engine_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ValidationError, match=r"unknown tts engine 'nope' \(known: piper, espeak, openai, voices\)"
    ):
        Settings(tts_engine="nope")
    clean_env.setenv("VOXGATE_STT_ENGINE", "nope")
    with pytest.raises(
        ValidationError, match=r"stt_engine.*\n.*unknown stt engine 'nope' \(known: whisper, openai\)"
    ):
        Settings()
    with pytest.raises(ValueError, match="unknown llm engine 'x'"):
        build(EngineChoice("llm", "x", {}))


def test_a_bad_option_names_the_setting_and_quotes_no_other_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VOXGATE_LLM_ENGINE", "openai")
    clean_env.setenv("VOXGATE_LLM_API_KEY", "sk-secret")
    clean_env.setenv("VOXGATE_STT_THREADS", "abc")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "stt_threads" in str(caught.value) and "'abc'" in str(caught.value)
    assert "sk-secret" not in str(caught.value)
    clean_env.delenv("VOXGATE_STT_THREADS")
    with pytest.raises(ValueError, match=r"unknown stt option modle \(whisper takes: model, device"):
        Settings(stt_options={"modle": "base"})
    with pytest.raises(ValidationError, match="tts_threads"):
        Settings(tts_threads=0)  # ge=1, as before


# --- a new engine: one class, its options model, one registry line ---------------------------------------------


class ToneOptions(EngineOptions):
    """The worked example's options: ``VOXGATE_TTS_PITCH_HZ`` (or ``tts_options.pitch_hz``)."""

    pitch_hz: float = Field(220.0, gt=0, description="the tone's pitch")

    def weights(self, context: BuildContext) -> dict[str, str]:
        return {"model": f"a {self.pitch_hz:g} Hz tone"}


class ToneTTS:
    """A TTS engine that answers every sentence with a tone, computed by a server elsewhere."""

    sample_rate = 16000

    def __init__(self, pitch_hz: float = 220.0) -> None:
        self.pitch_hz = pitch_hz
        # What it needs from the runtime: three requests at once, none of this machine's CPU.
        self.capabilities = Capabilities(
            streaming=True, device="remote", needs=Needs(remote=True, concurrency=3, cpu_heavy=False)
        )

    def voices(self) -> list[Voice]:
        return [Voice("tone", "tone", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        t = np.arange(self.sample_rate // 10) / self.sample_rate
        yield (np.sin(2 * np.pi * self.pitch_hz * t) * 8000).astype(np.int16)


@pytest.fixture
def tone_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # The registry line, as it would read in engines/registry.py:
    monkeypatch.setitem(
        REGISTRY["tts"], "tone", EngineSpec("tts", "tone", f"{__name__}:ToneTTS", ToneOptions)
    )
    # Stand-ins for the other roles, so that building the runtime loads no model.
    for role, cls in (("vad", "StandinVAD"), ("stt", "StandinSTT"), ("llm", "StandinLLM")):
        monkeypatch.setitem(REGISTRY[role], "standin", EngineSpec(role, "standin", f"{__name__}:{cls}"))


async def test_a_new_engine_is_selected_configured_and_sized_from_its_declarations(
    clean_env: pytest.MonkeyPatch, tone_registered: None, tmp_path: Path
) -> None:
    for role in ("vad", "stt", "llm"):
        clean_env.setenv(f"VOXGATE_{role.upper()}_ENGINE", "standin")
    clean_env.setenv("VOXGATE_TTS_ENGINE", "tone")
    clean_env.setenv("VOXGATE_TTS_PITCH_HZ", "440")  # its option, under a flat name nobody had to write down
    settings = Settings(data_dir=tmp_path)
    assert engine_choices(settings)["tts"] == EngineChoice("tts", "tone", {"pitch_hz": 440.0})
    assert ("VOXGATE_TTS_PITCH_HZ", "220.0", "(tone) the tone's pitch") in describe_settings()
    assert describe_models(settings, engine_choices(settings))["engines"]["tts"] == {
        "engine": "tone",
        "model": "a 440 Hz tone",
    }
    rt = await asyncio.to_thread(build_runtime, settings)  # warm-up included
    try:
        assert isinstance(rt.tts, ToneTTS) and rt.tts.pitch_hz == 440.0
        assert _threads(rt.tts_worker) == 3 and rt.tts_worker._holds is None
        # The stand-in LLM declares nothing: in-process and CPU-heavy, so the gate exists and STT holds it.
        assert rt.stt_worker._holds is not None and rt.llm_worker._yields_to == (rt.stt_worker._holds,)
        chunks = [c async for c in rt.tts_worker.stream(lambda: rt.tts.synthesize("Hi."))]
        assert len(chunks) == 1 and chunks[0].dtype == np.int16
    finally:
        await rt.close()
    with pytest.raises(ValidationError, match="tts_pitch_hz"):
        Settings(tts_engine="tone", tts_pitch_hz=-1)
