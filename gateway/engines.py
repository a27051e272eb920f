"""Turn settings into loaded, warmed-up engines (the service's Runtime)."""

from __future__ import annotations

import logging
import time

import numpy as np

from engines.base import BuildContext, GenerationOptions
from engines.registry import ROLES, EngineChoice, build
from gateway.settings import Settings
from pipeline.runtime import Runtime, needs_of

log = logging.getLogger("voxgate.engines")


def engine_choices(settings: Settings) -> dict[str, EngineChoice]:
    """What to load for each role, from settings alone (no imports of heavy libraries here)."""
    context = BuildContext(cache_dir=str(settings.cache_dir), voices_dir=str(settings.voices_dir))
    return {
        role: EngineChoice(
            role, settings.engine_name(role), settings.engine_options(role).engine_kwargs(context)
        )
        for role in ROLES
    }


def build_runtime(settings: Settings, warm: bool = True) -> Runtime:
    """Load every engine once (blocking: call it from a thread) and warm them so the first call is fast."""
    choices = engine_choices(settings)
    start = time.perf_counter()
    engines = {role: build(choice) for role, choice in choices.items()}
    runtime = Runtime(
        vad=engines["vad"],
        stt=engines["stt"],
        llm=engines["llm"],
        tts=engines["tts"],
        turn=engines["turn"],
        queue_size=settings.engine_queue_size,
        # Workers are sized from what each engine declares (``Capabilities.needs``). The runtime builds a
        # second LLM for flow drafts, on the first draft, only if the engine says a second one is cheap:
        # drafts then never hold the callers' LLM for the seconds they take.
        background_llm_factory=lambda: build(choices["llm"]),
    )
    if warm:
        warm_up(runtime, settings.instructions)
    log.info("engines ready in %.1f s", time.perf_counter() - start)
    return runtime


def warm_up(runtime: Runtime, instructions: str) -> None:
    """One tiny call per engine, on the engine's own worker thread (see ``EngineWorker.call``): first calls
    pay for lazy allocation, and the LLM caches the system prompt."""
    runtime.stt_worker.call(runtime.stt.transcribe, np.zeros(16000, np.float32))
    try:
        runtime.tts_worker.call(lambda: list(runtime.tts.synthesize("Hello.")))
    except Exception as exc:
        if not needs_of(runtime.tts).remote:
            raise
        log.warning("TTS warm-up failed: %s", exc)  # a model node may come up later, as a remote LLM may
    if runtime.turn is not None and runtime.turn_worker is not None:
        runtime.turn_worker.call(runtime.turn.complete_prob, np.zeros(16000, np.float32))
    messages = [{"role": "system", "content": instructions}, {"role": "user", "content": "Hi"}]
    try:
        runtime.llm_worker.call(
            lambda: list(runtime.llm.stream_chat(messages, GenerationOptions(max_tokens=2)))
        )
    except Exception as exc:  # a remote LLM may come up later; sessions report its errors then
        log.warning("LLM warm-up failed: %s", exc)
