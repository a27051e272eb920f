"""What ``voxgate models`` reports: which engines are configured and where their weights live."""

from __future__ import annotations

from typing import Any

from engines.base import BuildContext
from engines.registry import ROLES, EngineChoice, build
from gateway.settings import Settings


def _weights(role: str, settings: Settings, context: BuildContext) -> dict[str, Any]:
    info: dict[str, Any] = {"engine": settings.engine_name(role)}
    try:
        info.update(settings.engine_options(role).weights(context))
    except Exception as exc:  # report, don't crash: this command exists to diagnose missing weights
        info["error"] = str(exc)
    return info


def describe_models(settings: Settings, choices: dict[str, EngineChoice]) -> dict[str, Any]:
    """Each role's engine with what its options say about its weights, and the TTS engine's voices."""
    context = BuildContext(cache_dir=str(settings.cache_dir), voices_dir=str(settings.voices_dir))
    engines = {role: _weights(role, settings, context) for role in ROLES}
    try:
        tts = build(choices["tts"])
        voices = [
            {
                "id": v.id,
                "engine": v.engine,
                "sample_rate": v.sample_rate,
                "path": v.path,
                "licence": v.licence,
            }
            for v in tts.voices()
        ]
    except Exception as exc:
        voices = []
        engines["tts"]["error"] = str(exc)
    return {"engines": engines, "voices": voices}
