"""What ``voxgate models`` reports: which engines are configured and where their weights live."""

from __future__ import annotations

from typing import Any

from engines.registry import EngineChoice, build
from gateway.settings import Settings


def _weights(role: str, choice: EngineChoice, settings: Settings) -> dict[str, Any]:
    info: dict[str, Any] = {"engine": choice.name}
    try:
        if role == "stt":
            from engines.models import resolve_whisper_model

            info["model"] = choice.options["model"]
            info["path"] = resolve_whisper_model(str(choice.options["model"]), str(settings.cache_dir))
        elif role == "llm" and choice.name == "llama":
            from engines.models import smollm2_gguf_path

            info["path"] = choice.options.get("model_path") or smollm2_gguf_path()
            info["model"] = "SmolLM2-135M-Instruct Q4_1" if not choice.options.get("model_path") else ""
        elif role == "llm":
            info["model"] = f"{choice.options['model']} at {choice.options['base_url']}"
        elif role == "vad":
            from engines.vad_silero import silero_model_path

            info["model"] = "Silero VAD v6"
            info["path"] = str(silero_model_path())
    except Exception as exc:  # report, don't crash: this command exists to diagnose missing weights
        info["error"] = str(exc)
    return info


def describe_models(settings: Settings, choices: dict[str, EngineChoice]) -> dict[str, Any]:
    engines = {role: _weights(role, choice, settings) for role, choice in choices.items()}
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
        engines["tts"]["model"] = settings.tts_voice if choices["tts"].name == "piper" else "espeak-ng"
    except Exception as exc:
        voices = []
        engines["tts"]["error"] = str(exc)
    return {"engines": engines, "voices": voices}
