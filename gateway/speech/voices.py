"""``GET /v1/voices``: every voice the TTS engine speaks, and what each engine behind them can do.

With the ``voices`` engine (engines/tts_voices.py) that is every installed Piper voice, espeak-ng's languages and
the voices directory's map.json; any other engine lists its own voices. docs/voices.md documents the fields.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engines.base import Capabilities, TTSEngine
from engines.tts_voices import VoicesTTS
from engines.voice_map import base_language
from gateway.auth import scoped
from gateway.state import app_state
from pipeline.language import voice_for_language


def engine_capabilities(capabilities: Capabilities) -> dict[str, Any]:
    """What a TTS engine can do, as ``GET /v1/voices`` and the speech endpoints report it.

    Every TTS engine takes a speed (``TTSEngine.synthesize``) and can speak a dialogue turn by turn, one voice
    per speaker; cloning and voice design only where an engine declares them (``Capabilities.extra``).
    """
    extra = capabilities.extra
    return {
        "streaming": capabilities.streaming,
        "languages": list(capabilities.languages),
        "speed": bool(extra.get("speed", True)),
        "cloning": bool(extra.get("cloning", False)),
        "design": bool(extra.get("design", False)),
        "dialogue": bool(extra.get("dialogue", True)),
        "device": capabilities.device,
        "remote": capabilities.needs.remote,
    }


def _voice_rows(tts: TTSEngine) -> list[dict[str, Any]]:
    if isinstance(tts, VoicesTTS):
        return [
            {
                "id": v.id,
                "name": v.name,
                "engine": v.engine,
                "language": v.language,
                "sample_rate": v.sample_rate,
                "licence": v.licence,
                "default_for": list(v.default_for),
                "source": v.source,
            }
            for v in tts.catalogue()
        ]
    voices = tts.voices()
    languages = sorted({base_language(v.language) for v in voices})
    chosen = {language: voice_for_language(tts, language) for language in languages}
    return [
        {
            "id": v.id,
            "name": v.id,
            "engine": v.engine,
            "language": base_language(v.language),
            "sample_rate": v.sample_rate,
            "licence": v.licence,
            "default_for": [language for language, vid in chosen.items() if vid == v.id],
        }
        for v in voices
    ]


def describe_voices(tts: TTSEngine, default_voice: str | None) -> dict[str, Any]:
    """The body of ``GET /v1/voices`` (without the language routing part, which needs the service)."""
    if isinstance(tts, VoicesTTS):
        engines = {name: engine_capabilities(c) for name, c in tts.engine_capabilities().items()}
        problems = list(tts.problems)
        default_voice = tts.default_voice
    else:
        voices = tts.voices()
        name = str(
            tts.capabilities.extra.get("engine") or (voices[0].engine if voices else type(tts).__name__)
        )
        engines = {name: engine_capabilities(tts.capabilities)}
        problems = []
        default_voice = default_voice or getattr(tts, "default_voice", None)
    return {
        "default_voice": default_voice,
        "sample_rate": tts.sample_rate,
        "voices": _voice_rows(tts),
        "engines": engines,
        "problems": problems,
    }


async def list_voices(request: Request) -> Response:
    """``GET /v1/voices[?language=de]``: the voices (of one language), the engines, and language routing."""
    state = app_state(request)
    rt = state.runtime
    if rt is None:
        raise HTTPException(503, "models are still loading")
    settings = state.settings
    body = describe_voices(rt.tts, settings.default_voice)
    language = request.query_params.get("language")
    if language:
        wanted = base_language(language)
        body["voices"] = [v for v in body["voices"] if v["language"] == wanted]
    detects = rt.stt.capabilities.detects_language
    body["language_routing"] = {
        "enabled": settings.speech.language_routing and detects,
        "setting": settings.speech.language_routing,
        "stt_detects_language": detects,
    }
    return JSONResponse(body)


routes: list[BaseRoute] = [scoped(Route("/v1/voices", list_voices), "batch")]
