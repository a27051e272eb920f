"""Turn settings into loaded, warmed-up engines (the service's Runtime)."""

from __future__ import annotations

import logging
import time

import numpy as np

from engines.base import GenerationOptions
from engines.registry import EngineChoice, build
from gateway.settings import Settings
from pipeline.runtime import Runtime

log = logging.getLogger("voxgate.engines")


def engine_choices(settings: Settings) -> dict[str, EngineChoice]:
    """What to load for each role, from settings alone (no imports of heavy libraries here)."""
    cache = str(settings.cache_dir)
    if settings.llm_engine == "openai":
        llm_opts: dict[str, object] = {
            "base_url": settings.llm_base_url,
            "model": settings.llm_model,
            "api_key": settings.llm_api_key,
        }
    else:
        llm_opts = {"model_path": settings.llm_model_path, "n_threads": settings.llm_threads}
    tts_opts: dict[str, object] = {}
    if settings.tts_engine == "piper":
        tts_opts = {"default_voice": settings.tts_voice, "intra_op_threads": settings.tts_threads}
        if settings.voices_dir:
            tts_opts["voices_dir"] = str(settings.voices_dir)
    return {
        "vad": EngineChoice("vad", settings.vad_engine, {}),
        "stt": EngineChoice(
            "stt",
            settings.stt_engine,
            {
                "model": settings.stt_model,
                "device": settings.stt_device,
                "compute_type": settings.stt_compute_type,
                "cpu_threads": settings.stt_threads,
                "min_window_s": settings.stt_min_window_s or None,
                "cache_dir": cache,
            },
        ),
        "llm": EngineChoice("llm", settings.llm_engine, llm_opts),
        "tts": EngineChoice("tts", settings.tts_engine, tts_opts),
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
    runtime.tts_worker.call(lambda: list(runtime.tts.synthesize("Hello.")))
    messages = [{"role": "system", "content": instructions}, {"role": "user", "content": "Hi"}]
    try:
        runtime.llm_worker.call(
            lambda: list(runtime.llm.stream_chat(messages, GenerationOptions(max_tokens=2)))
        )
    except Exception as exc:  # a remote LLM may come up later; sessions report its errors then
        log.warning("LLM warm-up failed: %s", exc)
