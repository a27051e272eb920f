"""Which engines exist, the options each one takes, and how to load the one settings select.

A new engine is one module plus one ``register(EngineSpec(...))`` line below (docs/engines.md). What an engine
needs at run time (threads, the CPU gate, a background instance) it declares itself, in
``Capabilities.needs``; nothing here or in the gateway looks at engine names.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from engines import options as o
from engines.base import EngineOptions
from engines.stt_remote import RemoteSTTOptions
from engines.tts_remote import RemoteTTSOptions
from engines.tts_voices import VoicesOptions

log = logging.getLogger("voxgate.engines")

ROLES = ("vad", "stt", "llm", "tts", "turn")


@dataclass(frozen=True)
class EngineSpec:
    """One registry line: an engine's role, its name in settings, its class and its options model.

    ``load`` is ``"module:attribute"`` and is imported only when the engine is built, so a server that runs a
    remote LLM never imports llama.cpp; the options model must therefore live in a module that is cheap to
    import (``engines/options.py`` for the shipped engines, whose modules import their libraries at the top).
    """

    role: str
    name: str
    load: str
    options: type[EngineOptions] = EngineOptions

    def flat_name(self, option: str) -> str:
        return self.options.flat_names.get(option, f"{self.role}_{option}")

    def create(self, **kwargs: Any) -> Any:
        module, _, attribute = self.load.partition(":")
        return getattr(importlib.import_module(module), attribute)(**kwargs)


@dataclass(frozen=True)
class EngineChoice:
    """Everything needed to build one engine: its role, its name and its constructor's arguments."""

    kind: str
    name: str
    options: dict[str, Any]


REGISTRY: dict[str, dict[str, EngineSpec]] = {role: {} for role in ROLES}


def register(spec: EngineSpec) -> EngineSpec:
    """Make an engine selectable by settings (``<role>_engine = <name>``)."""
    if spec.role not in REGISTRY:
        raise ValueError(f"unknown engine role {spec.role!r} (known: {', '.join(ROLES)})")
    REGISTRY[spec.role][spec.name] = spec
    return spec


def lookup(role: str, name: str) -> EngineSpec:
    """The registered engine, or a ValueError that lists the known ones."""
    try:
        return REGISTRY[role][name]
    except KeyError:
        known = ", ".join(REGISTRY.get(role, {})) or "none"
        raise ValueError(f"unknown {role} engine {name!r} (known: {known})") from None


def flat_option_names() -> dict[str, tuple[str, str]]:
    """Flat setting name -> (role, option), over every registered engine's options."""
    names: dict[str, tuple[str, str]] = {}
    for role, specs in REGISTRY.items():
        for spec in specs.values():
            for option in spec.options.model_fields:
                names.setdefault(spec.flat_name(option), (role, option))
    return names


def resolve_options(role: str, name: str, raw: Mapping[str, Any]) -> EngineOptions:
    """Validate the options given for a role against its selected engine's model.

    Options of the role's other engines are ignored (``llm_model_path`` while ``llm_engine=openai``), as
    they always were; a name no engine of the role takes is an error, so typos are caught.
    """
    spec = lookup(role, name)
    known = {option for other in REGISTRY[role].values() for option in other.options.model_fields}
    unknown = sorted(set(raw) - known)
    if unknown:
        takes = ", ".join(spec.options.model_fields) or "no options"
        raise ValueError(f"unknown {role} option {', '.join(unknown)} ({name} takes: {takes})")
    try:
        return spec.options.model_validate({k: v for k, v in raw.items() if k in spec.options.model_fields})
    except ValidationError as exc:
        # Reported under the flat names users write, with only the offending values (never the others:
        # an API key may sit beside a mistyped number).
        details: list[InitErrorDetails] = [
            {
                "type": PydanticCustomError(error["type"], error["msg"]),
                "loc": (spec.flat_name(str(error["loc"][0])), *error["loc"][1:]) if error["loc"] else (),
                "input": error.get("input"),
            }
            for error in exc.errors()
        ]
        raise ValidationError.from_exception_data(f"{role} engine {name}", details) from None


def build(choice: EngineChoice) -> Any:
    """Import and construct the chosen engine (blocking: weights load here)."""
    spec = lookup(choice.kind, choice.name)
    log.info("loading %s engine %s", choice.kind, choice.name)
    return spec.create(**choice.options)


# The shipped engines, one line each.
register(EngineSpec("vad", "silero", "engines.vad_silero:SileroVAD", o.SileroOptions))
register(EngineSpec("stt", "whisper", "engines.stt_whisper:WhisperSTT", o.WhisperOptions))
register(EngineSpec("stt", "openai", "engines.stt_remote:RemoteSTT", RemoteSTTOptions))
register(EngineSpec("llm", "llama", "engines.llm_llama:LlamaCppLLM", o.LlamaOptions))
register(EngineSpec("llm", "openai", "engines.llm_openai:OpenAICompatibleLLM", o.OpenAIOptions))
register(EngineSpec("tts", "piper", "engines.tts_piper:PiperTTS", o.PiperOptions))
register(EngineSpec("tts", "espeak", "engines.tts_espeak:EspeakTTS", o.EspeakOptions))
register(EngineSpec("tts", "openai", "engines.tts_remote:RemoteTTS", RemoteTTSOptions))
register(EngineSpec("tts", "voices", "engines.tts_voices:VoicesTTS", VoicesOptions))
register(EngineSpec("turn", "smart_turn", "engines.turn_smart:SmartTurn", o.SmartTurnOptions))
register(EngineSpec("turn", "none", "engines.turn_smart:no_turn_model", o.NoTurnOptions))
