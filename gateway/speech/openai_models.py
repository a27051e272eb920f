"""Names in OpenAI's audio API: what ``GET /v1/models`` lists, which ``model`` values the audio routes take,
and which voice a ``voice`` names.

OpenAI's own model names (``whisper-1``, ``tts-1``, ``gpt-4o-mini-tts``, ...) are accepted as the loaded
engine of their kind, so that clients written for OpenAI work unchanged; so are OpenAI's built-in voice names
(``alloy``, ``echo``, ...), which speak with the default voice (the answer says so in ``x-voice-fallback``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException

from gateway.settings import Settings
from pipeline.runtime import Runtime

OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_STT_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-transcribe")
_STARTED = int(time.time())  # "created" of every entry: when this server loaded them


def _engine_id(runtime: Runtime, settings: Settings, role: str) -> str:
    engine = getattr(runtime, role)
    extra: dict[str, Any] = getattr(getattr(engine, "capabilities", None), "extra", {}) or {}
    name = settings.engine_name(role)
    model = extra.get("model") or (Path(extra["model_path"]).stem if extra.get("model_path") else "")
    return f"{name}-{model}" if model else name


def stt_model_id(runtime: Runtime, settings: Settings) -> str:
    """The STT engine's id in ``/v1/models``: engine and model, e.g. ``whisper-tiny.en``."""
    return _engine_id(runtime, settings, "stt")


def tts_model_id(runtime: Runtime, settings: Settings) -> str:
    """The TTS engine's id in ``/v1/models``, e.g. ``piper``."""
    return settings.engine_name("tts")


def stt_model_ok(runtime: Runtime, settings: Settings, model: str) -> bool:
    """Whether ``model`` names the loaded STT engine (its id or one of OpenAI's transcription models)."""
    if "diarize" in model:
        return False  # nothing here tells speakers apart
    return (
        model == stt_model_id(runtime, settings)
        or model in OPENAI_STT_MODELS
        or model.startswith(("gpt-4o-transcribe-", "gpt-4o-mini-transcribe-"))
    )


def tts_model_ok(runtime: Runtime, settings: Settings, model: str) -> bool:
    """Whether ``model`` names the loaded TTS engine (its id, one of its voices, or OpenAI's TTS models)."""
    return (
        model == tts_model_id(runtime, settings)
        or model in OPENAI_TTS_MODELS
        or model.startswith("gpt-4o-mini-tts-")
        or any(v.id == model for v in runtime.tts.voices())
    )


@dataclass(frozen=True)
class ResolvedVoice:
    """The voice a request's ``voice`` speaks with: ``engine_voice`` goes to the engine (None: its default)."""

    id: str
    engine_voice: str | None
    fallback: bool = False


def default_voice_id(runtime: Runtime, settings: Settings) -> str:
    """The voice sessions start with: the setting, else the engine's own default, else its first voice."""
    extra = runtime.tts.capabilities.extra if hasattr(runtime.tts, "capabilities") else {}
    voices = runtime.tts.voices()
    return str(
        settings.default_voice
        or extra.get("default_voice")
        or getattr(runtime.tts, "default_voice", None)
        or (voices[0].id if voices else "default")
    )


def resolve_voice(runtime: Runtime, settings: Settings, name: str) -> ResolvedVoice:
    """The engine's voice called ``name``; OpenAI's built-in names are the default voice; else 400."""
    voices = runtime.tts.voices()
    if any(v.id == name for v in voices):
        return ResolvedVoice(name, name)
    if name.lower() in OPENAI_VOICES:
        default = default_voice_id(runtime, settings)
        return ResolvedVoice(default, settings.default_voice, fallback=True)
    known = ", ".join(v.id for v in voices[:30]) + (", ..." if len(voices) > 30 else "")
    raise HTTPException(
        400,
        f"unknown voice {name!r}: the TTS engine speaks {known} (OpenAI's voice names, such as alloy, speak "
        "with the default voice)",
    )


def _entry(model_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": _STARTED,
        "owned_by": "voxgate",
        "kind": kind,
        **extra,
    }


def model_list(runtime: Runtime, settings: Settings) -> list[dict[str, Any]]:
    """``/v1/models``'s entries: each loaded engine, each voice, and OpenAI's names that reach them."""
    stt_id, tts_id = stt_model_id(runtime, settings), tts_model_id(runtime, settings)
    caps = runtime.stt.capabilities
    voices = runtime.tts.voices()
    entries = [
        _entry(
            stt_id,
            "stt",
            endpoints=["/v1/audio/transcriptions", *(["/v1/audio/translations"] if caps.translates else [])],
            languages=list(caps.languages),
            translates=caps.translates,
            word_timestamps=caps.word_timestamps,
        ),
        _entry(
            tts_id,
            "tts",
            endpoints=["/v1/audio/speech"],
            default_voice=default_voice_id(runtime, settings),
            voices=[{"id": v.id, "language": v.language, "sample_rate": v.sample_rate} for v in voices],
        ),
        _entry(_engine_id(runtime, settings, "vad"), "vad", endpoints=["/v1/audio/vad"]),
        _entry(_engine_id(runtime, settings, "llm"), "llm", endpoints=[]),
    ]
    entries += [
        _entry(
            v.id, "voice", engine=v.engine, language=v.language, sample_rate=v.sample_rate, alias_of=tts_id
        )
        for v in voices
        if v.id != tts_id
    ]
    entries += [_entry(name, "stt", alias_of=stt_id) for name in OPENAI_STT_MODELS]
    entries += [_entry(name, "tts", alias_of=tts_id) for name in OPENAI_TTS_MODELS]
    return entries
