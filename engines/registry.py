"""Build the configured engines. A new backend is one file plus one entry here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.base import LLMEngine, STTEngine, TTSEngine, VADEngine

log = logging.getLogger("voxgate.engines")


@dataclass(frozen=True)
class EngineChoice:
    """Everything needed to build one engine, independent of how settings are spelled."""

    kind: str
    name: str
    options: dict[str, Any]


def _vad_silero(**opts: Any) -> VADEngine:
    from engines.vad_silero import SileroVAD

    return SileroVAD(**opts)


def _stt_whisper(**opts: Any) -> STTEngine:
    from engines.stt_whisper import WhisperSTT

    return WhisperSTT(**opts)


def _llm_llama(model_path: str | None = None, **opts: Any) -> LLMEngine:
    from engines.llm_llama import LlamaCppLLM
    from engines.models import smollm2_gguf_path

    return LlamaCppLLM(model_path or smollm2_gguf_path(), **opts)


def _llm_openai(**opts: Any) -> LLMEngine:
    from engines.llm_openai import OpenAICompatibleLLM

    return OpenAICompatibleLLM(**opts)


def _tts_piper(**opts: Any) -> TTSEngine:
    from engines.tts_piper import PiperTTS

    return PiperTTS(**opts)


def _tts_espeak(**opts: Any) -> TTSEngine:
    from engines.tts_espeak import EspeakTTS

    return EspeakTTS(**opts)


# Imports stay inside the builders: a server configured for vLLM never loads llama.cpp, and so on.
BUILDERS: dict[str, dict[str, Callable[..., Any]]] = {
    "vad": {"silero": _vad_silero},
    "stt": {"whisper": _stt_whisper},
    "llm": {"llama": _llm_llama, "openai": _llm_openai},
    "tts": {"piper": _tts_piper, "espeak": _tts_espeak},
}


def build(choice: EngineChoice) -> Any:
    try:
        builder = BUILDERS[choice.kind][choice.name]
    except KeyError:
        known = ", ".join(BUILDERS.get(choice.kind, {})) or "none"
        raise ValueError(f"unknown {choice.kind} engine {choice.name!r} (known: {known})") from None
    log.info("loading %s engine %s", choice.kind, choice.name)
    return builder(**choice.options)
